"""The ``start_points:`` of a space file: configs every searcher evaluates first, in order (warm
starts, e.g. the optima a paper published), checked against the space's domains.

A point is a mapping of *searched* keys (the flat keys of a trial config, ``loss.margin``); a
searched key it leaves out takes its domain's ``start`` (the active variant's, for a key with
variants ``key@i``), and only the domains whose ``when`` hold at the point count. Refused, with a
ConfigError naming ``<file>: start_points[i].<key>``: a point that is not a mapping, a key the
space does not search, a value outside its domain, and a key whose condition the point does not
meet (``loss.temperature`` given with ``loss: contrastive`` when only supcon searches it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuneddml.errors import ConfigError
from tuneddml.searchers.domain import Domain, _member

EXPECTED = "a list of mappings {searched key: value}, e.g. [{loss: contrastive, loss.pos_margin: 0.9}]"


def parse_start_points(
    raw: Any, parameters: Mapping[str, tuple[Domain, ...]], where: str
) -> tuple[dict[str, Any], ...]:
    """The file's ``start_points`` as full trial configs (a value for every active domain, by
    key), in file order; ``()`` when the file has none."""
    field = f"{where}: start_points"
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(field, raw, EXPECTED)
    points = []
    for i, given in enumerate(raw):
        if not isinstance(given, Mapping):
            raise ConfigError(f"{field}[{i}]", given, EXPECTED)
        points.append(complete_point(given, parameters, f"{field}[{i}]"))
    return tuple(points)


def complete_point(
    given: Mapping[str, Any], parameters: Mapping[str, tuple[Domain, ...]], field: str
) -> dict[str, Any]:
    """A partial point -> the full config (missing keys at their domain's start), checked."""
    for key in given:
        if key not in parameters:
            raise ConfigError(f"{field}.{key}", given[key], f"a searched parameter: {', '.join(map(str, parameters))}")
    config: dict[str, Any] = {}
    for variants in parameters.values():
        for d in variants:
            if d.key in config or not d.active(config):
                continue
            config[d.key] = _value(d, given[d.key], f"{field}.{d.key}") if d.key in given else d.start
    for key in given:
        if key not in config:
            raise ConfigError(f"{field}.{key}", given[key], _condition(parameters[key], config))
    return config


def describe(domain: Domain) -> Any:
    """What a domain holds, for an error message: its choices, or its range."""
    if not domain.numeric:
        return list(domain.choices)
    kind = "an integer" if domain.kind == "int" else "a number"
    return f"{kind} in [{domain.low:g}, {domain.high:g}]"


def _value(domain: Domain, value: Any, field: str) -> Any:
    if domain.numeric and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(field, value, describe(domain)) from None
    if not domain.contains(value):
        raise ConfigError(field, value, describe(domain))
    if not domain.numeric:  # the choice itself (4, not 4.0)
        return next(c for c in domain.choices if _member(value, (c,)))
    return int(value) if domain.kind == "int" else float(value)


def _condition(variants: tuple[Domain, ...], config: Mapping[str, Any]) -> str:
    """Why a given key is not searched at this point: the conditions, and what the point has."""
    options = [" and ".join(f"{k} {_held(v)}" for k, v in d.when) for d in variants]
    keys = list(dict.fromkeys(k for d in variants for k, _ in d.when))
    has = ", ".join(f"{k}={config[k]}" if k in config else f"{k} unset" for k in keys)
    return f"a key searched at this point: {variants[0].key} is searched when {' or '.join(options)} (this point has {has})"


def _held(values: tuple[Any, ...]) -> str:
    return f"= {values[0]}" if len(values) == 1 else f"in {list(values)}"
