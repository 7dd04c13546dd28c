"""A registry of classes by name (backbones, plugins), timm-style: ``@registry.register("name")``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import ClassVar, Generic, Protocol, TypeVar

from trainables.errors import InputError


class Named(Protocol):
    """What a registered class has: the ``name`` it is registered as (set by :meth:`Registry.register`)."""

    name: ClassVar[str]


T = TypeVar("T", bound=type[Named])


class Registry(Generic[T]):
    """Classes of one ``kind`` by name; ``package`` is imported on first lookup so that every module
    registering into it has run."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind, self.package = kind, package
        self._classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: make the class available as ``name`` (and set its ``name`` attribute)."""

        def add(cls: T) -> T:
            if name in self._classes:
                raise InputError(f"{self.kind} {name!r} is registered twice")
            self._classes[name] = cls
            cls.name = name
            return cls

        return add

    def get(self, name: str) -> T:
        """The class registered as ``name``, or an InputError listing the available names."""
        names = self.names()
        if name not in self._classes:
            raise InputError(f"unknown {self.kind} {name!r} (available: {', '.join(names)})")
        return self._classes[name]

    def names(self) -> list[str]:
        importlib.import_module(self.package)
        return sorted(self._classes)
