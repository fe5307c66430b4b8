"""Reading space files and checking their structure (the format is described in
:mod:`tuneddml.searchers.space`, which also checks their values against the trial config).

Every error is a :class:`~tuneddml.errors.ConfigError` whose field names the file and the key,
e.g. ``tuneddml/search_spaces/x.yaml: parameters.loss.lambda``, with the valid choices.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tuneddml
from tuneddml.errors import ConfigError
from tuneddml.results.schema import TERM
from tuneddml.searchers.branches import expand
from tuneddml.searchers.domain import KINDS, Domain, config_key
from tuneddml.searchers.start_points import parse_start_points

MODES = ("max", "min")
DEFAULT_METRIC = "map_at_r"

TOP_KEYS = (
    "description", "metric", "mode", "searcher", "num_samples", "scheduler", "preset", "fixed", "parameters",
    "start_points",
)
DOMAIN_KEYS = (*KINDS, "log", "start", "when")
REPO_ROOT = Path(tuneddml.__file__).resolve().parent.parent


def space_dirs() -> list[Path]:
    """Where shipped spaces live: ``tuneddml/search_spaces/``, package data (so an installed wheel
    carries them as a source checkout does)."""
    packaged = Path(str(importlib.resources.files("tuneddml") / "search_spaces"))
    return [packaged] if packaged.is_dir() else []


def find_space(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix in (".yaml", ".yml") or "/" in text or path.is_file():
        if path.is_file():
            return path
        raise ConfigError("--space", text, "an existing space file (.yaml) or a shipped space name")
    for folder in space_dirs():
        candidate = folder / f"{text}.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError("--space", text, f"a path to a .yaml file or one of {', '.join(list_spaces())}")


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def list_spaces() -> list[str]:
    """Names of the shipped spaces."""
    return sorted({p.stem for d in space_dirs() for p in d.glob("*.yaml")})


def read_space(path: Path) -> dict[str, Any]:
    """Read the file and check its structure (not yet the values against the trial config): the
    fields of a :class:`~tuneddml.searchers.space.SearchSpace`."""
    import yaml

    from tuneddml.cli import DuplicateKey, load_yaml

    where = display_path(path)
    try:
        data = load_yaml(path.read_text())
    except DuplicateKey as exc:
        at = f"line {exc.line}" if exc.line else "the file"
        raise ConfigError(f"{where}: {exc.key}", f"given twice ({at})", "each key once per mapping") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(where, "unreadable YAML", f"a YAML mapping ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(where, type(data).__name__, "a YAML mapping with keys " + ", ".join(TOP_KEYS))
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(f"{where}: {key}", data[key], TOP_KEYS)

    from tuneddml.searchers import SEARCHERS
    from tuneddml.searchers.schedulers import SCHEDULERS

    def choose(key: str, default: str, valid: Any) -> str:
        value = data.get(key, default)
        if value not in valid:
            raise ConfigError(f"{where}: {key}", value, list(valid))
        return value

    from tuneddml.evaluation import metric_keys  # the registered metrics (loads faiss: here only)

    metric = data.get("metric", DEFAULT_METRIC)
    if metric not in metric_keys() and not (isinstance(metric, str) and metric.startswith(TERM)):
        raise ConfigError(
            f"{where}: metric", metric, f"a metric every trial reports ({', '.join(metric_keys())}) or loss/<term>"
        )
    num_samples = data.get("num_samples", 16)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"{where}: num_samples", num_samples, "a positive number of trials")
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, Mapping) or not all(isinstance(k, str) for k in fixed):
        raise ConfigError(f"{where}: fixed", fixed, "a mapping of flat trial-config keys to values")
    params = data.get("parameters")
    if not isinstance(params, Mapping) or not params:
        raise ConfigError(f"{where}: parameters", params, "a non-empty mapping of keys to distributions")
    params = expand(params, where)  # component blocks ({branches: ...}) become conditional domains
    parameters: dict[str, tuple[Domain, ...]] = {}
    for key, spec in params.items():
        field = f"{where}: parameters.{key}"
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}: parameters", key, "flat trial-config keys (strings)")
        if key in fixed:
            raise ConfigError(field, spec, f"a key that is not also fixed (fixed.{key} = {fixed[key]!r})")
        variants = spec if isinstance(spec, list) else [spec]
        if not variants:
            raise ConfigError(field, spec, "a distribution or a list of conditional variants")
        names = [key] if len(variants) == 1 else [f"{key}@{i}" for i in range(len(variants))]
        parameters[key] = tuple(
            _parse_domain(key, name, v, field if len(variants) == 1 else f"{field}[{i}]", parameters)
            for i, (name, v) in enumerate(zip(names, variants))
        )
        _check_variants(parameters[key], field)
    return {
        "name": path.stem,
        "path": path,
        "description": str(data.get("description") or ""),
        "metric": metric,
        "mode": choose("mode", "max", MODES),
        "searcher": choose("searcher", "coordinate_descent", SEARCHERS),
        "num_samples": num_samples,
        "scheduler": choose("scheduler", "asha", SCHEDULERS),
        "fixed": _with_preset(data.get("preset"), fixed, parameters, where),
        "parameters": parameters,
        "start_points": parse_start_points(data.get("start_points"), parameters, where),
    }


def _with_preset(
    name: Any, fixed: Mapping[str, Any], parameters: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """The space's ``fixed`` over its preset's settings (if it names one); a preset setting that the
    space searches is left to the search."""
    if name is None:
        return dict(fixed)
    from tuneddml.config import merge_flat
    from tuneddml.presets import read_preset

    settings = {k: v for k, v in read_preset(name, f"{where}: preset").settings.items() if k not in parameters}
    return merge_flat(settings, fixed)


def _number(value: Any, field: str, expected: str) -> float:
    # YAML 1.1 reads 1e-3 (no dot) as a string: accept numeric text
    if isinstance(value, bool):
        raise ConfigError(field, value, expected)
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(field, value, expected) from None
    if not math.isfinite(x):
        raise ConfigError(field, value, expected)
    return x


def _parse_domain(
    key: str, name: str, spec: Any, field: str, earlier: Mapping[str, tuple[Domain, ...]]
) -> Domain:
    if not isinstance(spec, Mapping):
        raise ConfigError(field, spec, "a distribution such as {uniform: [0, 1]} or {choice: [a, b]}")
    for k in spec:
        if k not in DOMAIN_KEYS:
            raise ConfigError(f"{field}.{k}", spec[k], DOMAIN_KEYS)
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        raise ConfigError(field, dict(spec), "exactly one distribution: " + ", ".join(KINDS))
    kind = kinds[0]
    raw = spec[kind]
    log = spec.get("log", kind == "loguniform")
    if (
        not isinstance(log, bool)
        or (log and kind in ("uniform", "choice"))
        or (kind == "loguniform" and not log)
    ):
        raise ConfigError(f"{field}.log", spec.get("log"), "true or false, only with int (loguniform is log)")
    if kind == "choice":
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{field}.choice", raw, "a non-empty list of values")
        if any(isinstance(c, (list, dict)) for c in raw):
            raise ConfigError(f"{field}.choice", raw, "a list of single values (strings, numbers, booleans)")
        if len({config_key({"c": c}) for c in raw}) != len(raw):
            raise ConfigError(f"{field}.choice", raw, "a list without repeated values")
        domain = Domain(key, name, kind, choices=tuple(raw))
    else:
        expected = f"[low, high] with low < high{', low > 0' if log else ''}"
        if kind == "int":
            expected = "[low, high], integers with low < high" + (", low >= 1" if log else "")
        if not isinstance(raw, list) or len(raw) != 2:
            raise ConfigError(f"{field}.{kind}", raw, expected)
        low, high = (_number(v, f"{field}.{kind}", expected) for v in raw)
        if (
            low >= high
            or (log and low <= 0)
            or (kind == "int" and not (low.is_integer() and high.is_integer()))
        ):
            raise ConfigError(f"{field}.{kind}", raw, expected)
        domain = Domain(key, name, kind, low=low, high=high, log=log)
    start = spec.get("start", domain.default_start())
    if domain.numeric and isinstance(start, str):
        start = _number(start, f"{field}.start", f"a value in {raw}")
    if not domain.contains(start):
        raise ConfigError(f"{field}.start", spec.get("start"), f"a value in {raw}" if domain.numeric else raw)
    if kind == "int":
        start = int(start)
    elif kind != "choice":
        start = float(start)
    when = _parse_when(spec.get("when"), f"{field}.when", earlier)
    return Domain(key, name, kind, domain.low, domain.high, log, domain.choices, start, when)


def _parse_when(
    when: Any, field: str, earlier: Mapping[str, tuple[Domain, ...]]
) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if when is None:
        return ()
    if not isinstance(when, Mapping) or not when:
        raise ConfigError(field, when, "a mapping {key: value or [values]} on earlier parameters")
    out = []
    for key, values in when.items():
        if key not in earlier:
            raise ConfigError(
                f"{field}.{key}",
                values,
                f"a parameter listed before this one: {', '.join(earlier)}"
                if earlier
                else "a parameter listed before this one (there is none)",
            )
        if isinstance(values, Mapping):  # {except: [...]}: every other choice of that key
            excluded = values.get("except")
            choices = [c for d in earlier[key] for c in d.choices]
            if set(values) != {"except"} or not choices:
                raise ConfigError(f"{field}.{key}", values, "a value, a list of values or {except: [values]} of a choice")
            excluded = excluded if isinstance(excluded, list) else [excluded]
            for v in excluded:
                if v not in choices:
                    raise ConfigError(f"{field}.{key}.except", v, choices)
            values = [c for c in choices if c not in excluded]
        values = tuple(values) if isinstance(values, list) else (values,)
        for v in values:
            if not any(d.contains(v) for d in earlier[key]):
                possible = [c for d in earlier[key] for c in d.choices] or "a value of its range"
                raise ConfigError(f"{field}.{key}", v, possible)
        out.append((key, values))
    return tuple(out)


def _check_variants(variants: tuple[Domain, ...], field: str) -> None:
    """Variants of one key must exclude each other: they condition on a common key, on disjoint values."""
    if len(variants) < 2:
        return
    common = set.intersection(*({k for k, _ in d.when} for d in variants))
    for key in common:
        sets = [next(v for k, v in d.when if k == key) for d in variants]
        if all(not set(map(str, a)) & set(map(str, b)) for i, a in enumerate(sets) for b in sets[i + 1 :]):
            return
    raise ConfigError(
        field,
        f"{len(variants)} variants",
        "variants whose `when` exclude each other (disjoint values of one common key)",
    )
