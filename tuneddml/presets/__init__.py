"""Presets: named sets of trial settings for published training protocols.

A preset is a YAML file in this folder (package data, so a wheel carries it)::

    description: one line, shown by the catalog
    reference: what the protocol reaches in its papers (the numbers to compare with)
    settings: {flat trial-config keys: values}

It is used by ``python -m tuneddml.train --preset NAME`` and by a space file's ``preset: NAME``.
Its settings come first: a config file, the space's ``fixed`` keys and ``KEY=VALUE`` overrides
change them. A preset names no data folder: the dataset's ``data_root`` comes from the user.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneddml.errors import ConfigError

KEYS = ("description", "reference", "settings")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    reference: str
    settings: Mapping[str, Any]


def preset_dir() -> Path:
    return Path(str(importlib.resources.files("tuneddml") / "presets"))


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def read_preset(name: str, field: str = "--preset") -> Preset:
    """The preset called ``name``; ``ConfigError(field, ...)`` naming the shipped ones if there is none."""
    from tuneddml.cli import load_yaml

    path = preset_dir() / f"{name}.yaml"
    if not isinstance(name, str) or "/" in name or not path.is_file():
        raise ConfigError(field, name, f"a shipped preset: {', '.join(list_presets())}")
    data = load_yaml(path.read_text())
    if not isinstance(data, Mapping) or set(data) - set(KEYS) or not isinstance(data.get("settings"), Mapping):
        raise ConfigError(f"preset {name}", str(path), f"a mapping with keys {', '.join(KEYS)}")
    return Preset(
        name, str(data.get("description") or ""), str(data.get("reference") or "").strip(), dict(data["settings"])
    )
