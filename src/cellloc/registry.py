"""Name -> object maps filled by decorators, so a config names a task, loss, format or reader by string.

``Registry`` is a ``dict``: ``REG[name]`` looks an entry up, ``REG.register(name)`` is the
decorator that adds one. A name may be *provided* by a module that is not imported yet (its
``plugins`` map says which): the first lookup imports that module, whose import registers the
entry. That keeps heavy or optional modules (torch, another dataset's reader) out of runs that
do not use them, and names the plug-in point of an entry that lives on another branch. A name
nobody provides is an :class:`~cellloc.errors.InputError` listing the known names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TypeVar

from .errors import InputError

T = TypeVar("T")


class Registry(dict[str, T]):
    """``{name: entry}`` for one kind of thing (``what`` names it in error messages)."""

    def __init__(self, what: str, plugins: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.what = what
        self.plugins = dict(plugins or {})  # name -> module whose import registers it

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` adds the decorated object under ``name``."""

        def deco(obj: T) -> T:
            self[name] = obj
            return obj

        return deco

    def names(self) -> list[str]:
        """Every known name: registered ones and those a plug-in module provides."""
        return sorted(set(self) | set(self.plugins))

    def __missing__(self, name: str) -> T:
        module = self.plugins.get(name)
        if module is not None:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:
                    raise
                raise InputError(f"{self.what} {name!r} is provided by {module}, which this installation lacks") from None
            if dict.__contains__(self, name):
                return dict.__getitem__(self, name)
            raise InputError(f"{self.what} {name!r}: {module} was imported but did not register it")
        raise InputError(f"unknown {self.what} {name!r}; known: {', '.join(self.names())}")
