"""Limits that keep the reader safe on hostile files, and the one check of each.

Each is generous for real models (trees 200 levels deep, 100,000 leaves, headers of tens of
megabytes) and small enough that a hostile header cannot exhaust memory or the stack
before it is refused. The reader checks them on a file; `save` checks the very same
functions on what it is about to write, before the first byte, so it never writes a file
that the reader refuses. An error that hits a limit names it.
"""

from __future__ import annotations

#: Largest safetensors header (and sharded index) accepted, in bytes. The same cap as the
#: Rust reader of safetensors, so every file we accept can also be opened there. Each
#: tensor costs about 110 bytes plus its key (its header entry) and its path's last part (a
#: dict key of the manifest): 100,000 tensors fit when those two average under 880 bytes.
MAX_HEADER_BYTES = 100_000_000

#: Most tensors one header may list. Counted before the JSON is parsed, so a header of
#: millions of zero-size tensors is refused without building millions of objects.
MAX_TENSORS = 300_000

#: Most nodes (containers and leaves) in a manifest skeleton: a 100,000-leaf flax.nnx
#: model (a wrapper per leaf plus its dicts) needs about 230,000. Bounds the time and
#: memory of validating a manifest (roughly 1 KB and 5 us per node here).
MAX_NODES = 400_000

#: Most JSON values (numbers, strings, arrays, objects...) in the header or the manifest,
#: counted before parsing: a 100,000-tensor header holds about 1.5 million. Parsing builds
#: a Python object of up to ~64 bytes per value, so this bounds parse memory to ~256 MB
#: where the byte cap alone would allow ``[[],[],...]`` to expand to 2 GB.
MAX_JSON_VALUES = 4_000_000

#: Deepest node of a manifest skeleton: the root is depth 0 and every child, a wrapper's
#: child included, is one deeper. Pydantic's validators recurse once per level and stop at
#: 255 levels; this stays below that with a margin.
MAX_DEPTH = 250

#: Highest tensor rank accepted (XLA supports far fewer in practice).
MAX_RANK = 64

#: Most fields of one namedtuple or keys of one dict node.
MAX_FIELDS = 100_000

#: Most elements a tensor's shape may describe, its zero dimensions left out: bounds every
#: dimension, and the shape of a zero-size tensor such as ``[0, 2**62, 2**62]`` (no bytes,
#: but no array of that shape can be built). 2**48 elements are 256 TiB of bytes.
MAX_ELEMENTS = 2**48

#: Most decimal digits of one JSON integer (an ``int`` scalar, an int dict key...): CPython
#: converts integers this long whatever ``sys.set_int_max_str_digits`` is set to, and
#: parsing them stays fast. ``2**2000`` (603 digits) fits.
MAX_INT_DIGITS = 640

_INT_BOUND = 10**MAX_INT_DIGITS
_INT_TOO_LONG = f"an integer of more than MAX_INT_DIGITS={MAX_INT_DIGITS} digits"


class LimitError(ValueError):
    """A limit of this module is exceeded; the message names it."""


def check_header_bytes(length: int, what: str = "header") -> None:
    """Refuse a header (or index) longer than `MAX_HEADER_BYTES`.

    Example:
        >>> check_header_bytes(10**9)
        Traceback (most recent call last):
        ...
        ckptschema._limits.LimitError: header of 1000000000 bytes exceeds MAX_HEADER_BYTES=100000000
    """
    if length > MAX_HEADER_BYTES:
        raise LimitError(f"{what} of {length} bytes exceeds MAX_HEADER_BYTES={MAX_HEADER_BYTES}")


def check_tensors(count: int) -> None:
    """Refuse more than `MAX_TENSORS` tensors in one checkpoint."""
    if count > MAX_TENSORS:
        raise LimitError(f"{count} tensors exceed MAX_TENSORS={MAX_TENSORS}")


def check_json_values(text: str, what: str) -> None:
    """Refuse JSON text that may hold more than `MAX_JSON_VALUES` values, before parsing it.

    JSON text of n characters holds at most (n + 1) / 2 values; longer text is bounded by
    C-speed counts of ``{``, ``[`` and ``,`` (which can only over-count: those in strings
    count too, so the writer checks its own text with this same function).
    """
    if len(text) >= 2 * MAX_JSON_VALUES and sum(map(text.count, "{[,")) + 1 > MAX_JSON_VALUES:
        raise LimitError(f"{what} holds more than MAX_JSON_VALUES={MAX_JSON_VALUES} JSON values")


def check_depth(depth: int) -> None:
    """Refuse a skeleton node deeper than `MAX_DEPTH`."""
    if depth > MAX_DEPTH:
        raise LimitError(
            f"the tree is deeper than MAX_DEPTH={MAX_DEPTH} (the root is depth 0; each container and wrapper adds one)"
        )


def check_nodes(count: int) -> None:
    """Refuse a skeleton of more than `MAX_NODES` nodes."""
    if count > MAX_NODES:
        raise LimitError(f"the tree has more than MAX_NODES={MAX_NODES} nodes (containers and leaves)")


def check_int(value: int) -> None:
    """Refuse an integer of more than `MAX_INT_DIGITS` decimal digits (without converting it to text).

    Example:
        >>> check_int(-(10**640) + 1), check_int(10**640)
        Traceback (most recent call last):
        ...
        ckptschema._limits.LimitError: an integer of more than MAX_INT_DIGITS=640 digits
    """
    if not -_INT_BOUND < value < _INT_BOUND:
        raise LimitError(_INT_TOO_LONG)


def check_int_text(digits: str) -> None:
    """`check_int` for the text of a JSON integer (a ``-`` and digits, no leading zeros), before Python converts it."""
    if len(digits) - digits.startswith("-") > MAX_INT_DIGITS:
        raise LimitError(_INT_TOO_LONG)


#: Most object keys a manifest may hold that are not names of the format (a field of the
#: manifest or of a node, or a wrapper metadata key of `ckptschema._containers.WRAPPER_METADATA`).
#: Any one makes the manifest invalid: up to this many are left to the validators, which
#: say which and where; more are refused before parsing (counted at C speed in a large
#: manifest), so that a map of two million keys cannot take seconds to build.
MAX_UNKNOWN_KEYS = 64

#: Most entries in one wrapper's metadata. The format's wrappers hold at most four
#: (`ckptschema._containers.WRAPPER_METADATA`); counted before the entries are validated.
MAX_METADATA = 64
