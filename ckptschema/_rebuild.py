"""Skeleton + leaves -> pytree: `build_tree` for the tree a file describes, `build_like_template` for a template's."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from . import _containers, _namedtuples
from ._errors import CkptSchemaError
from ._flatten import Template
from ._scalars import scalar_value

__all__ = ["build_like_template", "build_tree"]


def build_tree(skeleton: dict[str, Any], arrays: Iterable[Any]) -> Any:
    """The exact tree a skeleton describes, with no template.

    Args:
        skeleton: a skeleton (checked by the manifest model).
        arrays: the value of each ``tensor`` node, in walk order (`_skeleton.iter_nodes`).

    A namedtuple comes back as its original class when that is already imported, else as
    a fresh class of its name and fields (see `_namedtuples`).

    Raises:
        CkptSchemaError: for a ``node`` of a type not on the allow-list (pass a template).

    Example:
        >>> w = {"kind": "tensor", "key": "w", "dtype": "int8", "shape": []}
        >>> build_tree({"kind": "tuple", "children": [w, {"kind": "none"}]}, [7])
        (7, None)
    """
    return _build(skeleton, iter(arrays).__next__)


def _build(node: dict[str, Any], array: Callable[[], Any]) -> Any:
    kind = node["kind"]
    if kind == "tensor":
        return array()
    if kind == "scalar":
        return scalar_value(node)
    if kind == "none":
        return None
    if kind == "list":
        return [_build(c, array) for c in node["children"]]
    if kind == "tuple":
        return tuple(_build(c, array) for c in node["children"])
    if kind == "namedtuple":
        cls = _namedtuples.class_for(node["name"], tuple(node["fields"]), node.get("module"))
        return _namedtuples.make(cls, [_build(c, array) for c in node["children"]])
    if kind == "dict":
        children = {k: _build(c, array) for k, c in zip(node["keys"], node["children"])}
        if node["type"] is None:
            return children
        return _containers.lookup(node["type"]).build(children)
    if kind == "wrapper":
        return _containers.lookup(node["type"]).build(_build(node["child"], array), node["metadata"])
    raise CkptSchemaError(
        f"the checkpoint holds a node of type {node['type']}, which ckptschema only rebuilds through a template; "
        f"pass template= (for example jax.eval_shape of your init function)"
    )


def build_like_template(template: Template, values: Iterable[Any]) -> Any:
    """A tree shaped like a template, with the template's own types, holding `values`.

    Containers come back as the template's own types: namedtuple classes, custom nodes
    (flax.struct dataclasses, equinox Modules, optax states) through their treedefs,
    framework containers through their adapters.

    Args:
        template: the template taken apart (`_flatten.flatten_template`).
        values: the value of each of the template's leaves, in the order of ``template.likes``.

    Example:
        >>> import collections
        >>> from ckptschema._flatten import flatten_template
        >>> Point = collections.namedtuple("Point", "x y")
        >>> build_like_template(flatten_template(Point(0, 0)), [3, 4])
        Point(x=3, y=4)
    """
    return _Builder(template.handles, values).build(template.skeleton)


class _Builder:
    """Consumes the values (leaves, in walk order) and handles (containers, walks' ends order) as it builds."""

    def __init__(self, handles: list[Any], values: Iterable[Any]) -> None:
        self.handle = iter(handles).__next__
        self.value = iter(values).__next__

    def build(self, node: dict[str, Any]) -> Any:
        kind = node["kind"]
        if kind == "tensor" or kind == "scalar":
            return self.value()
        if kind == "none":
            return None
        if kind == "list":
            return [self.build(c) for c in node["children"]]
        if kind == "tuple":
            return tuple(self.build(c) for c in node["children"])
        if kind == "namedtuple":
            items = [self.build(c) for c in node["children"]]
            return type(self.handle())._make(items)
        if kind == "dict":
            children = {k: self.build(c) for k, c in zip(node["keys"], node["children"])}
            if node["type"] is None:
                return children
            return self._container(node, children)
        if kind == "wrapper":
            return self._container(node, self.build(node["child"]))
        items = [self.build(c) for c in node["children"]]
        return self.handle().unflatten(items)

    def _container(self, node: dict[str, Any], inner: Any) -> Any:
        like, container = self.handle(), _containers.lookup(node["type"])
        if container.rebuild_like is not None:
            return container.rebuild_like(like, inner)
        if node["kind"] == "wrapper":
            return container.build(inner, node["metadata"])
        return container.build(inner)
