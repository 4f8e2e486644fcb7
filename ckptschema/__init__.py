"""Save and load JAX pytrees as schema-validated safetensors checkpoints.

Example:
    >>> import jax, jax.numpy as jnp, ckptschema
    >>> params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}, "step": 7}
    >>> _ = ckptschema.save(tmp_path / "model.safetensors", params)
    >>> ckptschema.load(tmp_path / "model.safetensors", template=params)["step"]
    7
"""

from __future__ import annotations

import importlib
from typing import Any

from ._api import dumps as dumps
from ._api import load as load
from ._api import load_schema as load_schema
from ._api import loads as loads
from ._api import manifest_of as manifest_of
from ._api import read_manifest as read_manifest
from ._api import save as save
from ._api import validate as validate
from ._errors import CkptSchemaError as CkptSchemaError
from ._errors import FormatError as FormatError
from ._errors import IntegrityError as IntegrityError
from ._errors import Issue as Issue
from ._errors import ValidationError as ValidationError
from ._manifest import FORMAT_VERSION as FORMAT_VERSION
from ._manifest import Manifest as Manifest
from ._manifest import json_schema as json_schema
from ._review import Schema as Schema
from ._validate import Report as Report

__version__ = "0.1.0"


_FRAMEWORKS = ("flax", "haiku", "objax")

__all__ = [
    "FORMAT_VERSION",
    "CkptSchemaError",
    "FormatError",
    "IntegrityError",
    "Issue",
    "Manifest",
    "Report",
    "Schema",
    "ValidationError",
    "deserialize",
    "dumps",
    "json_schema",
    "load",
    "load_schema",
    "loads",
    "manifest_of",
    "read_manifest",
    "save",
    "serialize",
    "validate",
]


def serialize(tree: Any, filename: str | None = None, **save_kwargs: Any) -> bytes | Manifest:
    """safejax's spelling: write `tree` to `filename` (returns the `Manifest`), or return bytes.

    Example:
        >>> import numpy as np, ckptschema
        >>> ckptschema.deserialize(ckptschema.serialize({"w": np.ones(2, np.float32)}))["w"].tolist()
        [1.0, 1.0]
    """
    if filename is None:
        return dumps(tree, **save_kwargs)
    return save(filename, tree, **save_kwargs)


def deserialize(path_or_bytes: Any, template: Any = None, **load_kwargs: Any) -> Any:
    """safejax's spelling: load from a path or from bytes; same options as `load`."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return loads(path_or_bytes, template, **load_kwargs)
    return load(path_or_bytes, template, **load_kwargs)


def __getattr__(name: str) -> Any:
    """Import the framework modules (``ckptschema.flax`` ...) on first attribute access."""
    if name in _FRAMEWORKS:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
