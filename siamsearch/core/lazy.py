"""Lazy package attributes: ``from package import Name`` imports the module that defines ``Name`` only then."""
from __future__ import annotations

import sys
from importlib import import_module
from typing import Any, Callable, Mapping


def lazy_attributes(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` (PEP 562) for ``package``: ``names`` maps each public name to the
    submodule (relative to ``package``) that defines it; the first access imports it and caches the value
    on the package. Other names raise :class:`AttributeError`, so ``from package import submodule`` still
    imports submodules."""
    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(import_module(f".{names[name]}", package), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
