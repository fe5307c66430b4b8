"""A multi-fidelity search request, validated before Ray or MLflow start
(:func:`prepare_multifidelity`), and the space files its rungs run (:func:`rung_space`).

A rung is ``SETTINGS:N``: the flat trial settings that make its trials cheaper
(``features=cached``, ``epochs=1``, ``steps_per_epoch=10``, ``dataset.xxx=...``, comma-separated,
or ``full``: none, the space's own fixed settings) and the number ``N`` of configurations it runs.
Rungs go cheapest first, ``N`` strictly decreasing; the last rung is the full fidelity and must be
``full`` (the full fidelity is the space with the command's ``KEY=VALUE`` overrides: a setting meant
for every rung is an override, not a rung setting). ``N`` may be left off: rung 0 then runs the
space's ``num_samples``, a later rung a quarter of the rung before it (at least 1). With no
``--rung`` the rungs are ``features=cached:4*num_samples`` then ``full:max(2, num_samples//4)``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneddml.errors import ConfigError
from tuneddml.results import RUNS_FOLDER

MULTIFIDELITY_FILE = "multifidelity.json"  # settings, MLflow runs, each rung's outcome, the links
MULTIFIDELITY_FORMAT = "tuneddml.multifidelity/1"
SPACES_FOLDER = "spaces"  # rung<i>.yaml, check.yaml
SEARCHES_FOLDER = "searches"  # rung<i>/, check/: each an ordinary search folder
CHECK = "check"
FULL = "full"
RUNG_FORM = "SETTINGS:N, SETTINGS 'full' or KEY=VALUE[,KEY=VALUE...] (e.g. features=cached:64, epochs=1,steps_per_epoch=10:32, full:8)"
#: settings a rung may not change: they define what the search measures, not what it costs
NOT_A_FIDELITY = ("split", "seed", "cross_validate", "num_folds", "fold")


@dataclass(frozen=True)
class Rung:
    settings: dict[str, Any]  # flat trial settings over the space's fixed ones ({}: full)
    n: int  # configurations run at this rung

    @property
    def text(self) -> str:
        """``epochs=1,steps_per_epoch=10`` or ``full``: the rung's settings as the user writes them."""
        return rung_text(self.settings)

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings, "n": self.n}


def rung_text(settings: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in settings.items()) or FULL


def rung_name(i: int) -> str:
    return f"rung{i}"


def parse_rung(text: str) -> tuple[dict[str, Any], int | None]:
    """``"features=cached,epochs=1:64"`` -> ``({"features": "cached", "epochs": 1}, 64)``; ``N`` may
    be left off (``None``). ConfigError naming ``--rung`` and the valid form."""
    from tuneddml.cli import parse_overrides

    if not isinstance(text, str) or not text.strip():
        raise ConfigError("--rung", text, RUNG_FORM)
    head, colon, tail = text.strip().rpartition(":")
    n: int | None = None
    if colon and tail.strip().lstrip("+").isdigit():
        n = int(tail)
        if n < 1:
            raise ConfigError("--rung", text, f"{RUNG_FORM}, N >= 1")
    elif colon and not tail.strip():
        raise ConfigError("--rung", text, RUNG_FORM)
    else:
        head = text.strip()  # no N (a value may hold a colon itself)
    head = head.strip()
    if head == FULL:
        return {}, n
    items = [item.strip() for item in head.split(",")]
    if not head or any("=" not in item or not item.partition("=")[0].strip() for item in items):
        raise ConfigError("--rung", text, RUNG_FORM)
    try:
        settings = parse_overrides(items)
    except ConfigError:
        raise ConfigError("--rung", text, f"{RUNG_FORM}, each key once") from None
    for key in settings:
        if key in NOT_A_FIDELITY:
            raise ConfigError("--rung", text, f"settings that change what a trial costs, not {key}")
    return settings, n


def default_rungs(num_samples: int) -> list[Rung]:
    """The issue's "cheap then full": every configuration on cached features, then the best quarter."""
    return [Rung({"features": "cached"}, 4 * num_samples), Rung({}, max(2, num_samples // 4))]


def resolve_rungs(texts: list[str] | None, num_samples: int, searched: set[str] | frozenset[str] = frozenset()) -> list[Rung]:
    """``--rung`` values (or the defaults) -> rungs, checked: at least two, the last ``full``, no
    searched key set by a rung, ``N`` strictly decreasing."""
    if not texts:
        return default_rungs(num_samples)
    parsed = [parse_rung(t) for t in texts]
    if len(parsed) < 2:
        raise ConfigError("--rung", texts[0], "at least two rungs: the cheap ones, then full:N (one rung is a search)")
    if parsed[-1][0]:
        raise ConfigError(
            "--rung", texts[-1], "a last rung that is full:N (the full fidelity is the space's; KEY=VALUE changes it)"
        )
    for text, (settings, _) in zip(texts[:-1], parsed[:-1]):
        if not settings:
            raise ConfigError("--rung", text, "full only as the last rung (a cheaper rung sets what makes it cheaper)")
        clash = sorted(set(settings) & set(searched))
        if clash:
            raise ConfigError("--rung", text, f"settings the space does not search (it searches {clash[0]})")
    rungs: list[Rung] = []
    for i, (text, (settings, n)) in enumerate(zip(texts, parsed)):
        if n is None:
            n = num_samples if i == 0 else max(1, rungs[-1].n // 4)
        if rungs and n >= rungs[-1].n:
            raise ConfigError("--rung", text, f"fewer configurations than the rung before ({rungs[-1].n}): N strictly decreasing")
        rungs.append(Rung(settings, n))
    return rungs


@dataclass
class MultiFidelityRequest:
    name: str
    space_name: str
    base: dict[str, Any]  # the space file's contents, the KEY=VALUE overrides in its fixed settings
    rungs: list[Rung]
    check: bool
    overrides: dict[str, Any]
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None
    address: str | None
    tracking_uri: str
    storage: Path
    resume: bool = False
    seed: int = 0  # rung 0's searcher's
    searched: list[str] = field(default_factory=list)  # the space's searched keys

    @property
    def folder(self) -> Path:
        return self.storage / self.name

    @property
    def metric(self) -> str:
        return str(self.base.get("metric", "map_at_r"))

    @property
    def mode(self) -> str:
        return str(self.base.get("mode", "max"))

    def settings(self) -> dict[str, Any]:
        """What ``multifidelity.json`` records: everything a resumed search keeps."""
        return {
            "space": self.space_name,
            "base": self.base,
            "rungs": [r.to_json() for r in self.rungs],
            "check": self.check,
            "overrides": self.overrides,
            "cpus_per_trial": self.cpus_per_trial,
            "gpus_per_trial": self.gpus_per_trial,
            "max_concurrent": self.max_concurrent,
            "tracking_uri": self.tracking_uri,
            "seed": self.seed,
            "searched": self.searched,
        }

    def search_kwargs(self) -> dict[str, Any]:
        """The ``prepare_search`` arguments every search of it shares."""
        return {
            "cpus_per_trial": self.cpus_per_trial,
            "gpus_per_trial": self.gpus_per_trial,
            "max_concurrent": self.max_concurrent,
            "address": self.address,
            "tracking_uri": self.tracking_uri,
            "storage": str(self.folder / SEARCHES_FOLDER),
            "seed": self.seed,
        }


def rung_space(request: MultiFidelityRequest, i: int, points: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The space of rung ``i``: the space's own, the rung's settings over its fixed ones. Rung 0
    is the space's search (its searcher, scheduler, metric) with ``N0`` trials; a later rung is a
    ``points`` search of ``points`` (the configurations promoted from the rung before), under the
    space's scheduler (ASHA still stops trials early inside a rung)."""
    rung = request.rungs[i]
    space = json.loads(json.dumps(request.base))  # a deep copy
    space["fixed"] = {**(space.get("fixed") or {}), **rung.settings}
    fidelity = rung.text
    if i == 0:
        space["num_samples"] = rung.n
        space["description"] = f"multi-fidelity {request.name}, rung 0 ({fidelity}): {rung.n} configurations searched"
        return space
    assert points is not None
    space.update(searcher="points", num_samples=max(1, len(points)), start_points=[dict(p) for p in points])
    space["description"] = (
        f"multi-fidelity {request.name}, rung {i} ({fidelity}): the best {len(points)} configurations of rung {i - 1}"
    )
    return space


def check_space(request: MultiFidelityRequest, points: list[dict[str, Any]]) -> dict[str, Any]:
    """``--check``: every configuration of rung 0 at the full fidelity, each trained in full (fifo)."""
    space = json.loads(json.dumps(request.base))
    space.update(searcher="points", num_samples=max(1, len(points)), scheduler="fifo", start_points=[dict(p) for p in points])
    space["description"] = f"multi-fidelity {request.name}, check: every configuration of rung 0 at the full fidelity"
    return space


def prepare_multifidelity(
    *,
    space: str,
    rungs: list[str] | None = None,
    check: bool = False,
    overrides: dict[str, Any] | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    max_concurrent: int | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
    name: str | None = None,
    resume: bool = False,
    seed: int | None = None,
) -> MultiFidelityRequest:
    """Validate every input (ConfigError naming the bad one); starts and writes nothing. Every
    rung's search (and the check's) is checked as ``search`` checks one, a later rung with the
    space's start point standing in for the configurations it will be given."""
    from tuneddml.cli import load_yaml
    from tuneddml.searchers.space import load_space
    from tuneddml.tuning.benchmark_request import write_space
    from tuneddml.tuning.request import _check_storage, prepare_search

    given = {
        "--rung": rungs or None,
        "--check": check or None,
        "--cpus-per-trial": cpus_per_trial,
        "--gpus-per-trial": gpus_per_trial,
        "--max-concurrent": max_concurrent,
        "--seed": seed,
    }
    if "://" in (storage or ""):
        raise ConfigError("--storage", storage, "a folder (a multi-fidelity search keeps its searches in it)")
    storage_path = Path(storage or RUNS_FOLDER).expanduser().resolve()
    _check_storage(storage_path)
    if resume:
        return _resumed(storage_path, name, given, overrides, address, tracking_uri)
    loaded = load_space(space)
    base = dict(load_yaml(Path(loaded.path).read_text()))
    for key in overrides or {}:
        if key in loaded.parameters:
            raise ConfigError(key, overrides[key], f"a setting the space does not search ({loaded.name} searches it)")
    base["fixed"] = {**(base.get("fixed") or {}), **(overrides or {})}
    resolved = resolve_rungs(list(rungs or []), loaded.num_samples, set(loaded.parameters))
    name = name or f"{loaded.name}-mf-{time.strftime('%Y%m%d-%H%M%S')}"
    if (storage_path / name).exists():
        raise ConfigError("--name", name, "a new name (that one exists: add --resume to continue it)")
    request = MultiFidelityRequest(
        name=name,
        space_name=loaded.name,
        base=base,
        rungs=resolved,
        check=bool(check),
        overrides=dict(overrides or {}),
        cpus_per_trial=1.0 if cpus_per_trial is None else cpus_per_trial,
        gpus_per_trial=0.0 if gpus_per_trial is None else gpus_per_trial,
        max_concurrent=max_concurrent,
        address=address,
        tracking_uri=tracking_uri or "",
        storage=storage_path,
        seed=seed or 0,
        searched=list(loaded.parameters),
    )
    scratch = Path(tempfile.mkdtemp(prefix="tuneddml-multifidelity-"))
    try:
        kwargs = {**request.search_kwargs(), "storage": str(scratch / SEARCHES_FOLDER)}
        stand_in = [loaded.config_of(loaded.start_point())]  # a later rung's configurations are known only when it starts
        spaces = [rung_space(request, i, None if i == 0 else stand_in) for i in range(len(resolved))]
        if check:
            spaces.append(check_space(request, stand_in))
        for i, content in enumerate(spaces):
            label = rung_name(i) if i < len(resolved) else CHECK
            path = write_space(scratch / f"{label}.yaml", content)
            try:
                checked = prepare_search(space=str(path), name=label, **kwargs)
            except ConfigError as exc:
                raise _named(exc, resolved[i] if i < len(resolved) else None, request.overrides) from None
            if i == 0:
                request.tracking_uri = checked.tracking_uri
                request.max_concurrent = checked.max_concurrent
                request.seed = checked.seed
            kwargs["address_checked"] = True  # the cluster was asked once
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return request


def _named(exc: ConfigError, rung: Rung | None, overrides: dict[str, Any]) -> ConfigError:
    """A setting's error in a scratch space file, said of what the user wrote: ``--rung`` for a
    rung's setting, the key itself for a KEY=VALUE override."""
    key = str(exc.field).rpartition("fixed.")[2] if "fixed." in str(exc.field) else str(exc.field)
    if rung is not None and key in rung.settings:
        return ConfigError("--rung", f"{rung.text}:{rung.n}", f"{RUNG_FORM}, with settings a trial takes; {key}: {exc.expected}")
    if key in overrides:
        return ConfigError(key, overrides[key], exc.expected or None)
    return exc


def _resumed(
    storage: Path,
    name: str | None,
    given: dict[str, Any],
    overrides: dict[str, Any] | None,
    address: str | None,
    tracking_uri: str | None,
) -> MultiFidelityRequest:
    """The request it was started with (``--resume``); a flag or setting that would change it is refused."""
    from tuneddml.tuning.benchmark_request import resumed_settings

    name, settings = resumed_settings(
        storage, name, given, overrides, address, tracking_uri,
        record_file=MULTIFIDELITY_FILE, record_format=MULTIFIDELITY_FORMAT, what="the multi-fidelity search",
    )
    return MultiFidelityRequest(
        name=name,
        space_name=settings["space"],
        base=settings["base"],
        rungs=[Rung(dict(r["settings"]), int(r["n"])) for r in settings["rungs"]],
        check=bool(settings["check"]),
        overrides=settings["overrides"],
        cpus_per_trial=settings["cpus_per_trial"],
        gpus_per_trial=settings["gpus_per_trial"],
        max_concurrent=settings["max_concurrent"],
        address=address,
        tracking_uri=settings["tracking_uri"],
        storage=storage,
        resume=True,
        seed=settings["seed"],
        searched=list(settings["searched"]),
    )
