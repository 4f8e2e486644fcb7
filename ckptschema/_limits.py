"""Limits that keep the reader safe on hostile files.

Each is generous for real models (trees 200 levels deep, 100,000 leaves, headers of tens of
megabytes) and small enough that a hostile header cannot exhaust memory or the stack
before it is refused. An error that hits a limit names it.
"""

#: Largest safetensors header accepted, in bytes. The same cap as the Rust reader of
#: safetensors, so every file we accept can also be opened there.
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

#: Deepest tree a manifest may describe (the root is depth 0).
MAX_DEPTH = 256

#: Highest tensor rank accepted (XLA supports far fewer in practice).
MAX_RANK = 64

#: Most fields of one namedtuple or keys of one dict node.
MAX_FIELDS = 100_000

#: Most entries in one wrapper's metadata. The format's wrappers hold at most four
#: (`ckptschema._containers.WRAPPER_METADATA`); counted before the entries are validated.
MAX_METADATA = 64
