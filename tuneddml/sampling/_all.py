"""Imports every module of this package so that each component registers itself.

New modules need no entry here: every module not starting with ``_`` (and not ``base``) is imported.
"""

from __future__ import annotations

import importlib
import pkgutil

_package = __name__.rsplit(".", 1)[0]
for _module in pkgutil.iter_modules(importlib.import_module(_package).__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{_package}.{_module.name}")
