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

from . import _containers
from ._compare import Report as Report
from ._containers import Container as Container
from ._errors import CheckpointChangedError as CheckpointChangedError
from ._errors import CheckpointNotFoundError as CheckpointNotFoundError
from ._errors import CkptSchemaError as CkptSchemaError
from ._errors import FormatError as FormatError
from ._errors import IntegrityError as IntegrityError
from ._errors import Issue as Issue
from ._errors import ValidationError as ValidationError
from ._load import load as load
from ._load import loads as loads
from ._load import read_manifest as read_manifest
from ._manifest import FORMAT_VERSION as FORMAT_VERSION
from ._manifest import Manifest as Manifest
from ._manifest_file import json_schema as json_schema
from ._review import Schema as Schema
from ._safejax import deserialize as deserialize
from ._safejax import serialize as serialize
from ._save import dumps as dumps
from ._save import manifest_of as manifest_of
from ._save import save as save
from ._validate import load_schema as load_schema
from ._validate import validate as validate

#: The one place the version is written; the build reads it (``[tool.hatch.version]``).
__version__ = "0.1.0"


_FRAMEWORKS = ("flax", "haiku", "objax")

__all__ = [
    "FORMAT_VERSION",
    "CheckpointChangedError",
    "CheckpointNotFoundError",
    "CkptSchemaError",
    "Container",
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
    "register_container",
    "save",
    "serialize",
    "validate",
]


def register_container(*containers: Container) -> None:
    """Put container types on the allow-list, so that their trees save and load without a template.

    A ``dict`` container is a mapping (its children are its items); a ``wrapper`` holds one
    child and JSON-scalar metadata and adds no part to tensor keys. A manifest names a
    container by its ``name``; a file naming an unregistered one loads only with a template.

    Example:
        >>> import numpy as np, ckptschema
        >>> class Params(dict):
        ...     pass
        >>> ckptschema.register_container(
        ...     ckptschema.Container(
        ...         name="mylib.Params",
        ...         framework="mylib",
        ...         kind="dict",
        ...         match=lambda obj, cls=Params: type(obj) is cls,
        ...         build=lambda children, metadata=None, cls=Params: cls(children),
        ...     )
        ... )
        >>> type(ckptschema.loads(ckptschema.dumps(Params(w=np.ones(2))))).__name__
        'Params'
    """
    _containers.register(*containers)


def __getattr__(name: str) -> Any:
    """Import the framework modules (``ckptschema.flax`` ...) on first attribute access."""
    if name in _FRAMEWORKS:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
