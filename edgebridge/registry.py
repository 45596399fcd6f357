"""Plugin discovery shared by every registry (families, encoder backends, tools, preprocessors).

A registry is a package whose modules register themselves when imported (a decorator such as
``@register_family``). ``discover`` imports those modules once, on first lookup, so that adding a
family, backend, tool or preprocessing kind is one new file, and listing what exists stays cheap
(engines are imported inside the plugins, never at discovery).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Iterable

_done: set[str] = set()


def discover(package: str, path: Iterable[str], accept: Callable[[str], bool] = lambda name: True) -> None:
    """Import every module of ``package`` (found on ``path``, its ``__path__``) whose name ``accept``s, once."""
    if package in _done:
        return
    for info in pkgutil.iter_modules(list(path)):
        if accept(info.name):
            importlib.import_module(f"{package}.{info.name}")
    _done.add(package)
