"""`validate` and `load_schema`: check a checkpoint against itself, a schema or a template, loading nothing."""

from __future__ import annotations

import os
from typing import IO, Any

from . import _digests, _tensors
from ._compare import Report, compare
from ._dtypes import DTYPES
from ._errors import FormatError, Issue
from ._flatten import flatten_template
from ._gcpause import gc_paused
from ._header import Header
from ._limits import MAX_HEADER_BYTES
from ._manifest import Manifest
from ._opening import PathLike, one_version, open_checkpoint, tracking
from ._plain import match_plain
from ._review import Schema
from ._review_parse import parse_schema
from ._skeleton import iter_nodes, path_text
from ._sources import Source

__all__ = ["load_schema", "validate"]


@gc_paused
@one_version
def validate(
    source: PathLike | bytes | bytearray | memoryview,
    against: Any = None,
    *,
    deep: bool = False,
    progress: bool = False,
) -> Report:
    """Check a checkpoint without loading it; mismatches are reported, never raised.

    Args:
        source: the checkpoint (as for `load`), or its bytes.
        against: what to check it against: None (the file alone), a `Schema`, a `Manifest`
            or the path of a schema document (``ckptschema schema`` output: also compares
            scalar values and checksums, unless it is structure-only), or a template pytree.
        deep: also re-hash every tensor and compare with the recorded checksums.
        progress: with ``deep``, show a progress bar over the bytes hashed (only when
            stderr is a terminal).

    Returns:
        A `Report`; ``report.ok`` is True when nothing is wrong.

    Raises:
        CheckpointNotFoundError: if there is no checkpoint at `source` (also a `FileNotFoundError`).
        FormatError: if the file (or schema) cannot be read at all.
        CheckpointChangedError: if saves replaced the checkpoint during each of `READ_ATTEMPTS`
            reads (a read that finds it replaced midway starts over on the new version).

    Example:
        >>> import numpy as np, ckptschema
        >>> data = ckptschema.dumps({"w": np.zeros(3, np.float32)})
        >>> ckptschema.validate(data, deep=True).ok
        True
    """
    with open_checkpoint(source) as (src, header, manifest):
        if manifest is None:
            if against is None or isinstance(against, (Manifest, Schema, str, os.PathLike)):
                return Report(
                    src.name,
                    [Issue("structure", "<root>", "no manifest", "a ckptschema manifest", "schema", (), None, None)],
                )
            return Report(src.name, match_plain(header, against, ".").issues)
        issues = issues_against(manifest, against)
        if deep:
            with tracking(src, header, "verifying", progress) as tracked:
                issues += checksum_issues(tracked, header, manifest)
        return Report(src.name, issues)


def issues_against(manifest: Manifest, against: Any) -> list[Issue]:
    """Every mismatch of a manifest with what `validate` was given: a schema (or its path) or a template."""
    root = manifest.skeleton
    if against is None:
        return []
    if isinstance(against, (str, os.PathLike)):
        against = load_schema(against)
    if isinstance(against, Manifest):
        against = Schema.of(against)
    if isinstance(against, Schema):
        return compare(root, against.skeleton, against="schema", values=not against.structure_only).issues
    expected = flatten_template(against, manifest.separator)
    return compare(root, expected.skeleton, likes=expected.likes).issues


def checksum_issues(source: Source, header: Header, manifest: Manifest) -> list[Issue]:
    """A ``checksum`` issue for each tensor whose bytes no longer have their recorded digest."""
    issues: list[Issue] = []
    if manifest.checksum is None:
        return issues
    for path, node in iter_nodes(manifest.skeleton):
        if node["kind"] == "tensor" and node.get("digest"):
            array = _tensors.read_tensor(source, header.entries[node["key"]], DTYPES[node["dtype"]], node["shape"])
            actual = _digests.digest(array, manifest.checksum)
            if actual != node["digest"]:
                issues.append(
                    Issue("checksum", path_text(path), actual, node["digest"], "manifest", path, actual, node["digest"])
                )
    return issues


def load_schema(source: PathLike | IO[bytes]) -> Schema:
    """Read a schema document, as ``ckptschema schema`` writes it.

    Args:
        source: a path (a regular file, or a pipe such as ``<(...)``, read to its end) or a
            binary stream such as ``sys.stdin.buffer``.

    Raises:
        FormatError: if it cannot be read, is larger than ``MAX_HEADER_BYTES``, or is not a
            valid schema document.

    Example:
        >>> import io, numpy as np, ckptschema
        >>> text = ckptschema.manifest_of({"w": np.zeros(3, np.float32)}).schema_document()
        >>> schema = ckptschema.load_schema(io.BytesIO(text.encode()))
        >>> schema.framework, schema.skeleton["keys"]
        ('jax', ['w'])
    """
    if isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        try:
            with open(where, "rb") as f:
                data = f.read(MAX_HEADER_BYTES + 1)
        except OSError as e:
            raise FormatError(f"{where}: cannot read schema ({e.strerror or e})") from e
    else:
        where = str(getattr(source, "name", "<stream>"))
        data = source.read(MAX_HEADER_BYTES + 1)
    if len(data) > MAX_HEADER_BYTES:
        raise FormatError(f"{where}: schema document larger than MAX_HEADER_BYTES={MAX_HEADER_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{where}: a schema document is UTF-8 JSON text ({e.reason} at byte {e.start})") from e
    return parse_schema(text, where)
