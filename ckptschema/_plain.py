"""Plain safetensors files (no manifest): a template's leaves matched to the keys other tools write."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import _tensors
from ._agreement import Subtree
from ._compare import raise_or_warn, scalar_kind_matches
from ._dtypes import BY_CODE, DTYPES
from ._errors import CkptSchemaError, Issue
from ._header import Header
from ._placement import place
from ._sources import Source
from ._tree import KeyPart, flatten, keypath, rebuild

__all__ = ["load_plain", "match_plain"]


def _plain_candidates(
    skeleton: dict[str, Any], separator: str
) -> Iterator[tuple[dict[str, Any], tuple[KeyPart, ...], list[str]]]:
    """Each template leaf with the keys other tools give it: ``a.b.0`` and pytree2safetensors' ``@a@b#0``.

    pytree2safetensors marks each part of a path: ``@`` a dict key, ``#`` a sequence index, ``.``
    an attribute, except that a path starting with an attribute drops its ``.``
    (``layers#0@w`` for an equinox Module's ``layers[0]["w"]``).
    """

    def walk(node: dict[str, Any], path: tuple[KeyPart, ...], p2s: str) -> Iterator[Any]:
        kind = node["kind"]
        if kind in ("tensor", "scalar"):
            yield node, path, [separator.join(map(str, path)), p2s[1:] if p2s.startswith(".") else p2s]
        elif kind == "wrapper":
            yield from walk(node["child"], path, p2s)
        elif kind in ("list", "tuple"):
            for i, c in enumerate(node["children"]):
                yield from walk(c, (*path, i), f"{p2s}#{i}")
        elif kind == "dict":
            for k, c in zip(node["keys"], node["children"]):
                yield from walk(c, (*path, k), f"{p2s}@{k}")
        elif kind == "namedtuple":
            for f, c in zip(node["fields"], node["children"]):
                yield from walk(c, (*path, f), f"{p2s}.{f}")
        elif kind == "node":
            for k, c in zip(node["keys"], node["children"]):
                yield from walk(c, (*path, k), f"{p2s}#{k}" if isinstance(k, int) else f"{p2s}.{k}")

    return walk(skeleton, (), "")


def match_plain(header: Header, template: Any, separator: str) -> tuple[dict[str, Any], list[Issue], dict[int, str]]:
    """Match a template's leaves to the keys of a file with no manifest; reads no tensor bytes.

    Returns the template's skeleton, every mismatch, and each matched leaf's key by node ``id``.
    """
    expected = flatten(template, separator, template=True).skeleton
    issues: list[Issue] = []
    matched: dict[int, str] = {}
    seen: set[str] = set()
    for node, path, candidates in _plain_candidates(expected, separator):
        key = next((k for k in candidates if k in header.entries), None)
        what = _describe_expected(node)
        if key is None:
            issues.append(Issue("missing", keypath(path), None, what))
            continue
        seen.add(key)
        entry = header.entries[key]
        dtype = BY_CODE.get(entry.code)
        found = f"{dtype.name if dtype else entry.code}"
        want_shape = tuple(node["shape"]) if node["kind"] == "tensor" else ()
        want_dtype = node["dtype"] if node["kind"] == "tensor" else None
        if entry.shape != want_shape:
            issues.append(Issue("shape", keypath(path), str(entry.shape), str(want_shape)))
        elif want_dtype is not None and found != want_dtype:
            issues.append(Issue("dtype", keypath(path), found, want_dtype))
        elif want_dtype is None and (dtype is None or not scalar_kind_matches(node["type"], dtype.numpy)):
            issues.append(Issue("dtype", keypath(path), found, node["type"]))
        else:
            matched[id(node)] = key
    for key in sorted(header.entries.keys() - seen):
        e = header.entries[key]
        dtype = BY_CODE.get(e.code)
        issues.append(
            Issue("unexpected", key, f"{dtype.name if dtype else e.code}[{','.join(map(str, e.shape))}]", None)
        )
    return expected, issues, matched


def load_plain(
    source: Source, header: Header, template: Any, strict: bool, subtree: Subtree, separator: str, mmap: bool
) -> Any:
    if template is None:
        if subtree is not None:
            raise CkptSchemaError(f"{source.name}: subtree= needs a manifest or a template; this file has neither")
        return {
            key: place(
                _tensors.read_tensor(source, e, BY_CODE.get(e.code, DTYPES["uint8"]), e.shape),
                BY_CODE.get(e.code, DTYPES["uint8"]).name,
            )
            for key, e in header.entries.items()
        }
    expected, issues, matched = match_plain(header, template, separator)
    raise_or_warn(issues, strict, source.name)
    mapped = functools.cache(source.map)

    def fill(t: dict[str, Any]) -> Any:
        key = matched[id(t)]
        entry = header.entries[key]
        dtype = BY_CODE[entry.code]
        if mmap and isinstance(t["_like"], np.ndarray):
            (array,) = _tensors.map_tensors(source, mapped(), [(entry, dtype, entry.shape)])
        else:
            array = _tensors.read_tensor(source, entry, dtype, entry.shape)
        if t["kind"] == "scalar":
            return type(t["_like"])(array[()].item())
        return place(array, dtype.name, t["_like"])

    return rebuild(expected, fill)


def _describe_expected(node: dict[str, Any]) -> str:
    if node["kind"] == "tensor":
        return f"{node['dtype']}[{','.join(map(str, node['shape']))}]"
    return f"{node['type']} scalar"


# ------------------------------------------------------------------------------ validation
