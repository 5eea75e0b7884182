"""Plug-ins: a spec's name may be a built-in, an installed entry point, or an import path.

Wherever a spec names a model or a dataset (``--model``, ``--data``) or a
codec stage, the name is looked up in this order:

1. the built-in registry (``cnn``, ``fashion-mnist``, ``zstd``, ...);
2. the entry points of the installed packages, group ``fedsqueeze.<kind>``
   (``fedsqueeze.models``, ``fedsqueeze.datasets``, ``fedsqueeze.codecs``), as
   numcodecs registers codecs: in a plug-in's ``pyproject.toml``,
   ``[project.entry-points."fedsqueeze.models"] resnet20 = "mypkg.models:resnet20"``;
3. an import path ``package.module:callable``, e.g. ``--model "mymod:build(hidden=32)"``.

Parameters follow in the usual spec grammar. A name that resolves nowhere,
or a module that does not import, is a ``PluginError`` (a ValueError) that
names what was looked for, so a server refuses it at start and a client
that lacks the module says which one it is missing.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

KINDS = ("models", "datasets", "codecs", "trainers", "methods")
_IMPORT_PATH_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class PluginError(ValueError):
    """A plug-in that cannot be found or imported."""


@dataclass(frozen=True)
class Plugin:
    name: str
    origin: str    # "built-in", "entry point of <distribution>", or "import path"
    target: Any


def is_import_path(name: str) -> bool:
    return bool(_IMPORT_PATH_RE.match(name))


def import_path(path: str, kind: str) -> Any:
    """The object ``package.module:attr`` names; PluginError naming the missing module or attribute."""
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"{kind} {path!r}: cannot import module {module_name!r} ({exc}); install the package "
                          "that provides it, or put it on PYTHONPATH") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise PluginError(f"{kind} {path!r}: module {module_name!r} has no attribute {attribute!r}") from None
    return target


def _entry_points(kind: str) -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=f"fedsqueeze.{kind}")}


def resolve(kind: str, name: str, builtins: Mapping[str, Any], import_paths: bool = True) -> Plugin:
    """The plug-in ``name`` names among ``builtins``, the entry points of ``kind``, or (if ``import_paths``) an
    import path."""
    if name in builtins:
        return Plugin(name, "built-in", builtins[name])
    point = _entry_points(kind).get(name)
    if point is not None:
        try:
            return Plugin(name, f"entry point of {point.dist.name if point.dist else 'an unknown package'}",
                          point.load())
        except ImportError as exc:
            raise PluginError(f"{kind[:-1]} {name!r}: its entry point {point.value!r} does not import ({exc})") \
                from None
    if import_paths and is_import_path(name):
        return Plugin(name, "import path", import_path(name, kind[:-1]))
    known = sorted({*builtins, *_entry_points(kind)})
    hint = "; or give an import path package.module:callable" if import_paths else ""
    raise PluginError(f"unknown {kind[:-1]} {name!r}; known: {', '.join(known)}{hint}")


def listing(kind: str, builtins: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, where from) for every registered plug-in of ``kind``: built-ins, then entry points."""
    rows = [(name, "built-in") for name in sorted(builtins)]
    for name, point in sorted(_entry_points(kind).items()):
        if name not in builtins:
            rows.append((name, f"{point.value} (entry point of {point.dist.name if point.dist else '?'})"))
    return rows
