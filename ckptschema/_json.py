"""Strict and compact JSON: the one form ckptschema writes and the one parser it reads with.

Knows nothing of the manifest's models (no Pydantic, only pydantic-core's Rust JSON parser
and writer): the byte layer parses headers and shard indexes with it, the manifest module
parses manifests with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic_core import PydanticSerializationError, from_json, to_json

from ._limits import MAX_INT_DIGITS, MAX_UNKNOWN_KEYS, check_int_text, check_json_values

__all__ = ["check_json_text", "check_keys", "compact_json", "strict_json", "strict_json_counted"]


def compact_json(data: Any) -> str:
    """The one compact JSON form ckptschema writes (and `strict_json` parses fastest).

    Example:
        >>> compact_json({"a": [1, "é"]})
        '{"a":[1,"é"]}'
    """
    try:
        return to_json(data).decode("utf-8")
    except PydanticSerializationError:  # nested beyond its depth limit, or holding a lone surrogate
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        text.encode("utf-8")  # UnicodeEncodeError for a lone surrogate
        return text


def check_json_text(text: str, what: str, names: Sequence[str]) -> None:
    """Refuse JSON text that `strict_json` would refuse for a limit, without parsing it when it need not.

    What `save` runs on the manifest it is about to write: the same value bound
    (`check_json_values`), key bound (`MAX_UNKNOWN_KEYS`) and integer bound
    (`MAX_INT_DIGITS`) as the reader, through the same functions; `names` are the key
    names of the format (most frequent first), as for `check_keys`.

    Raises:
        ValueError: naming the limit.
    """
    check_json_values(text, what)
    check_keys(text, names)
    if _may_hold_long_int(text.encode("utf-8", "surrogatepass")):
        _strict_slow(text, what, max_objects=len(text), constant=float)


#: A JSON string, escapes included: removing every one leaves the braces that open objects.
_STRING = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"')

#: Maps every ASCII digit to ``0``, so a run of digits is found with one substring search.
_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * (MAX_INT_DIGITS + 1)


def _may_hold_long_int(encoded: bytes) -> bool:
    """Whether JSON text has a run of more than `MAX_INT_DIGITS` digits (an integer, or digits in a string)."""
    return _LONG_RUN in encoded.translate(_DIGITS)


def strict_json(text: str, what: str, max_objects: int) -> Any:
    """Parse JSON, refusing duplicate keys, NaN/Infinity, lone surrogates, integers of more
    than `MAX_INT_DIGITS` digits, nesting beyond the interpreter's recursion guard, and
    documents with more than `max_objects` objects or `MAX_JSON_VALUES` values.

    The value count is bounded before parsing (`check_json_values`), so a small hostile
    document cannot expand into gigabytes of Python objects. Text in the compact form
    ckptschema writes (`compact_json`) with no run of digits longer than `MAX_INT_DIGITS`
    is parsed by pydantic-core's Rust parser and proven free of duplicates by writing it
    back byte for byte: a dropped duplicate could not reappear. Anything else (other
    spacing, long digit runs, nesting deeper than that parser's 200 levels) takes the
    standard library's parser with hooks that inspect every object and integer; its
    nesting is bounded by the interpreter's recursion guard, and every parsed document is
    then checked structurally (a header entry is three flat fields, a skeleton at most
    `MAX_DEPTH` levels).

    Raises:
        ValueError: with a message saying what was wrong.
    """
    return strict_json_counted(text, what, max_objects)[0]


def strict_json_counted(text: str, what: str, max_objects: int) -> tuple[Any, int | None]:
    """`strict_json`, and for text in compact form (nested at most 200 deep) its number of objects."""

    def constant(name: str) -> Any:
        raise ValueError(f"{what} holds {name}, which is not JSON")

    check_json_values(text, what)
    objects = text.count("{")  # an upper bound on the number of objects: braces in strings count too
    if objects > max_objects and _STRING.sub("", text).count("{") > max_objects:
        raise ValueError(f"{what} holds more than {max_objects} objects")
    if objects <= max_objects:
        encoded = text.encode("utf-8", "surrogatepass")
        if not _may_hold_long_int(encoded):
            try:
                data = from_json(encoded, allow_inf_nan=False)
            except ValueError:
                pass
            else:
                if to_json(data) == encoded:
                    return data, objects
    try:
        data = _strict_slow(text, what, max_objects, constant)
        compact_json(data)
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is not valid JSON ({e})") from None
    except UnicodeEncodeError:
        raise ValueError(f"{what} holds a lone surrogate") from None
    return data, None


def _strict_slow(text: str, what: str, max_objects: int, constant: Any) -> Any:
    count = 0

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal count
        count += 1
        if count > max_objects:
            raise ValueError(f"{what} holds more than {max_objects} objects")
        obj = dict(items)
        if len(obj) != len(items):
            seen: set[str] = set()
            dup = next(k for k, _ in items if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise ValueError(f"{what} repeats the key {dup!r}")
        return obj

    def integer(digits: str) -> int:
        try:
            check_int_text(digits)
        except ValueError as e:
            raise ValueError(f"{what} holds {e}") from None
        return int(digits)

    return json.loads(text, object_pairs_hook=pairs, parse_constant=constant, parse_int=integer)


#: Colons in a manifest below which no object can hold enough keys to cost much to build.
_FEW_KEYS = 100_000


def check_keys(text: str, names: Sequence[str]) -> None:
    """Refuse a manifest of more than `MAX_UNKNOWN_KEYS` object keys that are not names of the format.

    Escaped backslashes and quotes are first replaced by ``#`` (which no name holds): then
    every ``":`` ends an object key, and ``"kind":`` is the key ``kind`` itself. A colon
    after whitespace (which no JSON writer puts before a key's colon) counts as an unknown
    key. Text of fewer than `_FEW_KEYS` colons is left to the parser. Costs a few
    substring counts. `names` are the key names of the format, the most frequent first
    (the manifest module knows them; this one knows no models).
    """
    colons = text.count(":")
    if colons <= _FEW_KEYS:
        return
    if "\\" in text:
        text = text.replace("\\\\", "#").replace('\\"', "#")
    unknown = text.count('":')
    if colons - unknown > MAX_UNKNOWN_KEYS:  # colons in strings, or keys spaced from their colon
        unknown += sum(text.count(space + ":") for space in " \t\n\r")
    for name in names:
        if unknown <= MAX_UNKNOWN_KEYS:
            return
        unknown -= text.count(f'"{name}":')
    if unknown > MAX_UNKNOWN_KEYS:
        raise ValueError(
            f"manifest holds more than MAX_UNKNOWN_KEYS={MAX_UNKNOWN_KEYS} object keys that are not names "
            "of the format (a key spaced from its colon counts as one); a manifest holds only the format's fields"
        )
