"""A backbone written down and built again: how a checkpoint records its network and inference rebuilds it.

A record is what the CLI accepts for ``model.backbone``: the import path of a function or class called with the
number of classes (``imagenette_sota.models.xresnet18``), or a class or function with its keyword arguments
(``{"class_path": "imagenette_sota.models.XResNet", "init_args": {"act": "torch.nn.Mish", "sa": true}}``; classes
among the arguments by import path). It is plain data, so checkpoints still load with ``weights_only=True``.
``build`` resolves a record as the CLI resolves that key (jsonargparse, for the same type), after checking that
everything it would import lies in a trusted package: a checkpoint is data, and loading one must not run code that
its author chose.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import jsonargparse
from torch import nn

Backbone = Callable[[int], nn.Module]  # builds the network from the number of classes (the model's parameter type)
Record = str | dict[str, Any]
TRUSTED = ("imagenette_sota", "torch.nn", "torchvision.models")  # imported from a checkpoint without being named
DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


class Unrecordable(TypeError):
    """A value that cannot be written down as plain data (an object, a lambda, a local function)."""


def import_path(obj: Any) -> str | None:
    """``module.name`` of an importable function or class, through the shortest module that exports it, as a config
    spells it (``torch.nn.Mish``); None for a lambda, a partial or a local function."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if not (module and name and "<" not in name and callable(obj)):
        return None
    parts = module.split(".")
    shortest = next(
        (
            prefix
            for i in range(1, len(parts))
            if getattr(sys.modules.get(prefix := ".".join(parts[:i])), name, None) is obj
        ),
        module,
    )
    return f"{shortest}.{name}"


def record(backbone: Any) -> Record | None:
    """How to build ``backbone`` again: a config's spelling (an import path, or ``class_path`` with ``init_args``),
    a function or class, or a ``functools.partial`` of one with keyword arguments; None if it cannot be written down.
    """
    try:
        if isinstance(backbone, str):
            return backbone
        if isinstance(backbone, Mapping) and "class_path" in backbone:
            return {"class_path": str(backbone["class_path"]), "init_args": plain(backbone.get("init_args") or {})}
        if isinstance(backbone, partial) and not backbone.args and import_path(backbone.func):
            return {"class_path": import_path(backbone.func), "init_args": plain(backbone.keywords)}
    except Unrecordable:
        return None
    return import_path(backbone)


def plain(value: Any) -> Any:
    """``value`` as plain data (numbers, strings, lists, dicts), classes and functions by import path."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if path := import_path(value):
        return path
    raise Unrecordable(f"{value!r} cannot be written down")


def build(spec: Record, trust: Sequence[str] = ()) -> Backbone:
    """The backbone ``spec`` records, resolved as the CLI resolves ``model.backbone``; ValueError if it would import
    anything outside ``TRUSTED`` and the packages in ``trust``, or cannot be resolved."""
    trusted = (*TRUSTED, *trust)
    for path in imports(spec):
        if not any(path == package or path.startswith(f"{package}.") for package in trusted):
            top = path.split(".")[0]
            raise ValueError(
                f"its backbone names {path}, outside {', '.join(trusted)}: a checkpoint is data, and loading it "
                f"imports nothing else by itself. If you trust this checkpoint and {top}, name it: --trust {top} "
                f"(Python: trust=[{top!r}])"
            )
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--backbone", type=Backbone)
    try:
        built = parser.instantiate(parser.parse_object({"backbone": spec})).backbone
    except (jsonargparse.ArgumentError, ImportError, TypeError, ValueError) as e:
        raise ValueError(f"its backbone {spec!r} cannot be built here ({' '.join(str(e).split())})") from None
    return built


def imports(spec: Any) -> list[str]:
    """Every string in ``spec`` that could name something to import: a dotted name whose top module exists here."""
    if isinstance(spec, str):
        found = DOTTED.fullmatch(spec) and importlib.util.find_spec(spec.split(".")[0]) is not None
        return [spec] if found else []
    if isinstance(spec, Mapping):
        spec = list(spec.values())
    return [path for value in spec for path in imports(value)] if isinstance(spec, list) else []
