"""A table of plug-ins by name (aggregator kinds, backbone families, dataset sources), shared by their packages.

Built-in plug-ins are modules of a package that each register one item at import; they are imported on the first
lookup, so reading the table costs nothing until it is needed. Other modules (a test's) register the same way.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, Protocol, TypeVar


class _Named(Protocol):
    name: str


T = TypeVar("T", bound=_Named)


class Plugins(Generic[T]):
    def __init__(self, what: str, package: str, builtin: tuple[str, ...]):
        self.what, self.package, self.builtin = what, package, builtin
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, item: T) -> T:
        """Make `item` known by its name; registering a name twice is a programming error."""
        if item.name in self._items:
            raise ValueError(f"{self.what} {item.name!r} is already registered")
        self._items[item.name] = item
        return item

    def all(self) -> dict[str, T]:
        """Every registered item by name, built-ins first, in the order of `builtin`."""
        if not self._loaded:
            self._loaded = True
            for name in self.builtin:
                importlib.import_module(f"{self.package}.{name}")
        rank = {name: i for i, name in enumerate(self.builtin)}  # a built-in imported directly registers early
        return dict(sorted(self._items.items(), key=lambda item: rank.get(item[0], len(rank))))


def resolve(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """A plug-in's implementation: the callable itself, or a "module:attr" reference imported now (so declaring it
    imports nothing heavy)."""
    if isinstance(ref, str):
        module, attr = ref.split(":")
        return getattr(importlib.import_module(module), attr)
    return ref
