"""One registry for the things chosen by name (methods, attacks, architectures), as torchvision's
model registry and auto-attack's attack list: a dict of name -> class or builder."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Registry(dict):
    """``@REGISTRY.register(name)`` adds a class or builder (a class also gets ``name``);
    ``REGISTRY.lookup(name)`` returns it or raises a ValueError listing the choices."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(entry: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if isinstance(entry, type):
                entry.name = name
            self[name] = entry
            return entry

        return decorator

    def lookup(self, name: str):
        if name not in self:
            raise ValueError(f"{self.kind} must be one of {sorted(self)}, got {name!r}")
        return self[name]
