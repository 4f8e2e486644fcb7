"""What the file format fixes that every layer names: where the manifest sits and how tensor bytes are laid out.

The bottom of the byte layer: `_header`, `_tensors`, `_shards` and `_remote` write and check these, the
API builds manifests with them, and this module imports none of them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MANIFEST_KEY", "PLACEHOLDER_DIGEST", "as_bytes"]

#: The header metadata key (and shard index metadata key) that holds the manifest.
MANIFEST_KEY = "ckptschema"
#: What a header holds for each digest until the data is written and hashed.
PLACEHOLDER_DIGEST = "0" * 64


def as_bytes(array: np.ndarray) -> memoryview:
    """An array's bytes as stored: C order, no copy when it is already contiguous.

    Example:
        >>> bytes(as_bytes(np.array([1, 2], np.uint16)))
        b'\\x01\\x00\\x02\\x00'
    """
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
