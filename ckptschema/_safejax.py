"""safejax's spellings, ``serialize(params, filename=None)`` and ``deserialize(path_or_buf)``.

The one implementation of the pair: ``ckptschema.serialize``/``deserialize`` are these, and
the framework modules call them with their own tree, template and ``framework=``.
"""

from __future__ import annotations

import os
from typing import Any, overload

from ._load import load, loads
from ._manifest import Manifest
from ._save import dumps, save

__all__ = ["deserialize", "serialize"]


@overload
def serialize(params: Any, filename: None = None, **save_kwargs: Any) -> bytes: ...
@overload
def serialize(params: Any, filename: str | os.PathLike[str], **save_kwargs: Any) -> Manifest: ...
def serialize(params: Any, filename: str | os.PathLike[str] | None = None, **save_kwargs: Any) -> bytes | Manifest:
    """safejax's ``serialize``: `save` to `filename` (returning the `Manifest`), or `dumps` to bytes.

    Args:
        params: the pytree to write.
        filename: the file (or fsspec URL) to write; None returns the bytes instead.
        **save_kwargs: the options of `save` (``metadata``, ``separator``, ...).

    Example:
        >>> import numpy as np, ckptschema
        >>> data = ckptschema.serialize(params={"w": np.ones(2, np.float32)})
        >>> ckptschema.deserialize(path_or_buf=data)["w"].tolist()
        [1.0, 1.0]
    """
    if filename is None:
        return dumps(params, **save_kwargs)
    return save(filename, params, **save_kwargs)


def deserialize(
    path_or_buf: str | os.PathLike[str] | bytes | bytearray | memoryview, template: Any = None, **load_kwargs: Any
) -> Any:
    """safejax's ``deserialize``: `load` from a path or URL, or `loads` from bytes.

    Args:
        path_or_buf: the checkpoint (as for `load`), or its bytes.
        template: as for `load`.
        **load_kwargs: the options of `load` (``strict``, ``subtree``, ...).

    Example:
        >>> import numpy as np, ckptschema
        >>> _ = ckptschema.serialize({"w": np.zeros(2, np.float32)}, filename=tmp_path / "w.safetensors")
        >>> ckptschema.deserialize(tmp_path / "w.safetensors")["w"].shape
        (2,)
    """
    if isinstance(path_or_buf, (bytes, bytearray, memoryview)):
        return loads(path_or_buf, template, **load_kwargs)
    return load(path_or_buf, template, **load_kwargs)
