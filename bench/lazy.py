"""Packages whose names are imported from their module on first use (PEP 562), so a command
that needs one light module of a package does not import the heavy ones beside it (``bench ls``
imports neither torch nor MLflow; a trial's worker not the report's plotting stack)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, home: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """``(__getattr__, __all__)`` for ``package`` whose public names live in the modules ``home``
    maps them to (name -> module, relative to the package)."""

    def __getattr__(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f".{home[name]}", package), name)

    return __getattr__, sorted(home)
