"""Namedtuple classes for a template-less load: the original class when it is already imported.

A manifest records a namedtuple's class name, its field names and the module that defined
it. Loading without a template, `class_for` returns the class of that name in that module
when the module is already in `sys.modules` and the class passes every check below, else a
fresh ``collections.namedtuple`` of that name and fields. What it does, and never does:

- it reads ``sys.modules[module]`` only if that is a plain module object (not a lazy or
  proxy module whose attribute access could run code or import), and the class from the
  module's ``__dict__`` (no ``getattr``, so no module ``__getattr__`` hook runs);
- the class must be a plain class (its metaclass is ``type``, so reading its attributes runs
  no descriptor of a metaclass), a subclass of ``tuple``, with the recorded ``__name__`` and
  ``__module__``, and ``_fields`` exactly the recorded field names (read from the class
  dictionaries of its MRO);
- it never imports anything and calls nothing of the class: instances are made by
  ``tuple.__new__(cls, values)``, which is what a namedtuple's own ``_make`` does, and runs no
  ``__new__`` or ``__init__`` of the class.

A file can therefore only choose among classes the process already holds, and only one
that is built exactly like the namedtuple it describes.
"""

from __future__ import annotations

import collections
import functools
import keyword
import sys
import types
import unicodedata
from collections.abc import Iterable
from typing import Any

__all__ = ["class_for", "make", "module_of", "valid", "valid_module"]


def valid(name: Any, fields: Any) -> bool:
    """Whether a namedtuple of this name and fields can be recreated as a fresh class.

    Every name is an identifier and no keyword, and no field starts with ``_`` or repeats,
    also after the NFKC normalisation Python applies to identifiers in source code (``"ﬁ"``
    is the field ``"fi"``), which is how ``collections.namedtuple`` compiles them.

    Example:
        >>> valid("Point", ["x", "y"]), valid("Point", ["fi", "\\ufb01"]), valid("P", ["_x"])
        (True, False, False)
    """
    if type(name) is not str or type(fields) not in (list, tuple) or any(type(f) is not str for f in fields):
        return False
    normal = [unicodedata.normalize("NFKC", n) for n in (name, *fields)]
    return (
        all(n.isidentifier() and not keyword.iskeyword(n) for n in (name, *fields, *normal))
        and not any(f.startswith("_") for f in (*fields, *normal[1:]))
        and len(set(normal[1:])) == len(fields)
    )


def valid_module(module: Any) -> bool:
    """Whether `module` is a dotted module name (``optax._src.base``).

    Example:
        >>> valid_module("optax._src.base"), valid_module("os; rm"), valid_module("")
        (True, False, False)
    """
    return type(module) is str and all(part.isidentifier() for part in module.split("."))


def module_of(cls: type) -> str | None:
    """The module a namedtuple class records, or None if its ``__module__`` is not a module name."""
    module = vars(cls).get("__module__")
    return module if valid_module(module) else None


def class_for(name: str, fields: tuple[str, ...], module: str | None) -> type:
    """The already-imported class `module.name` if it is this namedtuple, else a fresh one.

    Example:
        >>> import inspect
        >>> class_for("Attribute", ("name", "kind", "defining_class", "object"), "inspect") is inspect.Attribute
        True
        >>> class_for("Attribute", ("name",), "inspect") is inspect.Attribute  # other fields: a fresh class
        False
    """
    found = _imported(name, fields, module) if module is not None else None
    return found if found is not None else _fresh(name, fields)


def make(cls: type, values: Iterable[Any]) -> Any:
    """An instance of namedtuple class `cls` holding `values`, as its ``_make`` builds it."""
    return tuple.__new__(cls, values)  # type: ignore[type-var]


def _imported(name: str, fields: tuple[str, ...], module: str) -> type | None:
    mod = sys.modules.get(module)
    if type(mod) is not types.ModuleType:
        return None
    cls = mod.__dict__.get(name)
    if type(cls) is not type or not issubclass(cls, tuple) or any(type(base) is not type for base in cls.__mro__):
        return None
    if cls.__name__ != name or vars(cls).get("__module__") != module:
        return None
    recorded = next((vars(base)["_fields"] for base in cls.__mro__ if "_fields" in vars(base)), None)
    if type(recorded) is not tuple or any(type(f) is not str for f in recorded) or recorded != fields:
        return None
    return cls


@functools.lru_cache(maxsize=1024)
def _fresh(name: str, fields: tuple[str, ...]) -> type:
    return collections.namedtuple(name, fields)  # type: ignore[misc]
