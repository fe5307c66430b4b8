"""Imports every module of this package so that each searcher registers itself.

New modules need no entry here. The adapters are left out: they import Ray or Optuna at the top,
which a search request must not pay for before it is validated.
"""

from __future__ import annotations

import importlib
import pkgutil

ADAPTERS = {"ray_searcher", "optuna_sampler"}

_package = __name__.rsplit(".", 1)[0]
for _module in pkgutil.iter_modules(importlib.import_module(_package).__path__):
    if not _module.name.startswith("_") and _module.name not in ADAPTERS:
        importlib.import_module(f"{_package}.{_module.name}")
