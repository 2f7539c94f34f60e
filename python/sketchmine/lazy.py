"""Modules imported on first use.

Why: reading a run (its summaries, `sketchmine summary | compare | unit`, the report's pages)
goes through the statistics modules that mining shares, and those use torch and the compiled
core. Importing torch took 2 s of a 4.3 s `sketchmine summary` that never touches a tensor;
the statistics modules name torch and `ops` through `lazy`, so only code that uses them
imports them (a partial run's distributions are rebuilt by the accumulators: that does).
"""
from __future__ import annotations

import importlib
import types
from typing import Any


class _Lazy(types.ModuleType):
    """Stands for the module of its name in one module's globals until an attribute is asked
    for: then imports it and puts it in those globals in its own place, so the module's later
    uses (a mining loop's many) reach it directly, not through this."""

    def __init__(self, name: str, owner: dict[str, Any]) -> None:
        super().__init__(name)
        self._owner = owner

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        alias = self.__name__.rpartition(".")[2]
        if self._owner.get(alias) is self:
            self._owner[alias] = module
        return getattr(module, attr)


def lazy(name: str, owner: dict[str, Any]) -> Any:
    """A stand-in for module `name`, bound in `owner` (the caller's globals()) under the last
    part of the name, that imports the module when first used."""
    return _Lazy(name, owner)
