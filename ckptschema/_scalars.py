"""Python scalars in a skeleton: the ``scalar`` node of a value, and a float spelled so every bit survives."""

from __future__ import annotations

import re
import struct
from typing import Any

__all__ = ["float_text", "float_value", "scalar_node", "scalar_value"]

#: The bits of the one NaN that Python's ``float("nan")`` gives, spelled plain ``nan``.
_CANONICAL_NAN = 0x7FF8000000000000
_NAN_BITS = re.compile(r"nan:0x[0-9a-f]{16}")


def float_text(x: float) -> str:
    """How a float scalar is spelled in a manifest: every bit survives.

    Its ``repr``, except for a NaN whose bits are not those of ``float("nan")``
    (``0x7ff8000000000000``): that is ``nan:0x`` and the 16 lowercase hex digits of its
    IEEE 754 binary64 bits, sign and payload included.

    Example:
        >>> float_text(0.1), float_text(float("nan")), float_text(-float("nan"))
        ('0.1', 'nan', 'nan:0xfff8000000000000')
    """
    if x != x:
        (bits,) = struct.unpack("<Q", struct.pack("<d", x))
        if bits != _CANONICAL_NAN:
            return f"nan:0x{bits:016x}"
    return repr(x)


def float_value(text: str) -> float:
    """The float a manifest spells as `text` (`float_text`); `ValueError` if it spells none.

    Example:
        >>> float_text(float_value("nan:0x7ff0000000000001"))
        'nan:0x7ff0000000000001'
    """
    if text.startswith("nan:"):
        if not _NAN_BITS.fullmatch(text):
            raise ValueError(f"{text!r} is not nan:0x and 16 lowercase hex digits")
        (value,) = struct.unpack("<d", struct.pack("<Q", int(text[6:], 16)))
        return value
    return float(text)


def scalar_node(x: bool | int | float | str) -> dict[str, Any]:
    """The ``scalar`` node of a Python scalar (its range and text are checked by the caller).

    Example:
        >>> scalar_node(0.5), scalar_node(True)
        ({'kind': 'scalar', 'type': 'float', 'value': '0.5'}, {'kind': 'scalar', 'type': 'bool', 'value': True})
    """
    return {"kind": "scalar", "type": type(x).__name__, "value": float_text(x) if isinstance(x, float) else x}


def scalar_value(node: dict[str, Any]) -> bool | int | float | str:
    """The Python value of a ``scalar`` node.

    Example:
        >>> scalar_value({"kind": "scalar", "type": "float", "value": "0.25"})
        0.25
    """
    return float_value(node["value"]) if node["type"] == "float" else node["value"]
