"""Tiny name -> entry registries, and the two the platform has: methods and data sets.

Plug-ins register themselves when their package is imported (``reprlab.methods``,
``reprlab.platform.data.sets``); a registry imports its plug-in package on first lookup. The config
asks the registries for the types of its ``method`` and ``data.<set>`` sections, so nothing here
imports the config, a method or a data set."""

from __future__ import annotations

import importlib
from typing import Callable, Generic, TypeVar

from reprlab.platform.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes; ``plugins`` is imported on first lookup so registrations happen."""

    def __init__(self, kind: str, plugins: str | None = None) -> None:
        self.kind = kind
        self._plugins = plugins
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = obj
            return obj

        return deco

    def _load(self) -> None:
        if self._plugins:
            importlib.import_module(self._plugins)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def get(self, name: str, key: str | None = None) -> T:
        self._load()
        if name not in self._entries:
            where = f"{key}: " if key else ""
            raise ConfigError(f"config: {where}unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        return self._entries[name]

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._entries.items())


# Entries: method classes (``reprlab.platform.contract.method.Method`` subclasses) and data-set
# descriptions (``reprlab.platform.data.catalog.DataSet``). Each entry has ``Config``, the type of
# its config section (or None for a data set without settings).
METHODS: Registry = Registry("method", plugins="reprlab.methods")
DATASETS: Registry = Registry("data set", plugins="reprlab.platform.data.sets")
