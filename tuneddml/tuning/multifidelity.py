"""The multi-fidelity search: many configurations at a cheap fidelity, the best of them at a dearer
one, ..., the best few at the full fidelity; then how well each fidelity ranked the next.

A validated request (:mod:`.multifidelity_request`) -> rung 0, an ordinary search of the space (its
searcher, scheduler and metric) with the rung's cheap settings over its fixed ones and ``N0``
trials -> rung i, a ``points`` search of the best ``N_i`` configurations of rung i-1
(:func:`~tuneddml.results.fidelity.promote`, one per configuration) at rung i's settings -> ... ->
the last rung, at the full fidelity. ``--check`` then runs every configuration of rung 0 at the
full fidelity (every trial trained in full), the ground truth of the report's regret and rank
correlation over all configurations; its compute is reported apart from the search's.

Why a synchronous successive-halving bracket (HyperBand's, one bracket) over whole searches, and
not a Ray Tune scheduler across the fidelities: ASHA and HyperBand promote a trial by *continuing*
it (more epochs of the same model), but a change of fidelity here is not more of the same trial: a
cached-feature trial trains only a head on frozen-backbone features, a different model on different
data at a different cost, and cannot be continued as a fine-tuning trial. So the rungs are separate
searches, each promotion waits for the rung to end (synchronous), and the comparison between
fidelities is over whole configurations. Inside each rung the space's scheduler still acts (ASHA
stops a rung's poor trials early over its epochs).

Each rung is an ordinary search (:func:`~tuneddml.tuning.driver.run_search`) kept under the folder::

    <storage>/<name>/multifidelity.json     settings, MLflow run ids, each rung's outcome, the links
    <storage>/<name>/spaces/rung<i>.yaml    the space each rung ran (check.yaml: the check)
    <storage>/<name>/searches/rung<i>/      each rung's own search folder (check/: the check's)
    <storage>/<name>/fidelity.json|.md|.png the report

``multifidelity.json`` is rewritten (atomically) after every rung, so ``--resume`` runs no finished
rung again and resumes an interrupted one as ``search --resume`` does (the benchmark's logic). In
MLflow each rung's search nests under one parent run, and each promoted trial's run names its cheap
ancestor (:mod:`tuneddml.tracking.multifidelity_run`); links MLflow could not take stay in
``multifidelity.json`` and are applied again by ``--resume``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tuneddml.cli import format_duration, format_values
from tuneddml.tuning.benchmark import _save
from tuneddml.tuning.benchmark import _search as _run_phase  # the benchmark's run-or-resume of one search
from tuneddml.tuning.benchmark_request import write_space
from tuneddml.tuning.multifidelity_request import (
    CHECK,
    MULTIFIDELITY_FILE,
    MULTIFIDELITY_FORMAT,
    SEARCHES_FOLDER,
    SPACES_FOLDER,
    MultiFidelityRequest,
    check_space,
    rung_name,
    rung_space,
)
from tuneddml.tuning.multifidelity_rows import (
    ancestor_links,
    best_of,
    count_configs,
    point_of,
    promoted,
    read_rows,
)

FIGURE_FILE = "fidelity.png"


@dataclass
class MultiFidelitySummary:
    name: str
    folder: Path
    rungs: list[dict[str, Any]]  # each rung's outcome, as multifidelity.json records it
    best_config: dict[str, Any] | None  # the last rung's best
    best_value: float | None
    seconds: float  # the rungs' search time (the check's apart)
    check_seconds: float | None = None
    report: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    parent_run_id: str = ""
    markdown: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "multifidelity": self.name,
            "folder": str(self.folder),
            "rungs": self.rungs,
            "best_config": self.best_config,
            "best_value": self.best_value,
            "seconds": round(self.seconds, 1),
            "check_seconds": None if self.check_seconds is None else round(self.check_seconds, 1),
            "files": {k: str(v) for k, v in self.files.items()},
            "parent_run_id": self.parent_run_id,
        }


def run_multifidelity(
    request: MultiFidelityRequest, *, stream: IO[str] | None = None, verbose: bool = False
) -> MultiFidelitySummary:
    """Run (or resume) the rungs, then the check (``--check``), then the report."""
    from tuneddml.tracking.multifidelity_run import MultiFidelityRun

    out = stream or sys.stdout
    started = time.monotonic()
    folder = request.folder
    record = folder / MULTIFIDELITY_FILE
    if request.resume:
        state = json.loads(record.read_text())
        run = MultiFidelityRun.from_json(request.tracking_uri, state["mlflow"])
        print(f"resuming multi-fidelity search {request.name} from {folder}", file=out, flush=True)
        for name, entry in state["links"].items():  # links MLflow could not take the first time
            if not entry["applied"]:
                _apply_links(run, state, name, out)
        _save(state, record)
    else:
        params = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in request.settings().items() if k != "base"}
        run = MultiFidelityRun.start(request.tracking_uri, request.name, request.name, params)
        folder.mkdir(parents=True)
        write_space(folder / SPACES_FOLDER / f"{rung_name(0)}.yaml", rung_space(request, 0))
        state = {
            "format": MULTIFIDELITY_FORMAT,
            "name": request.name,
            "settings": request.settings(),
            "mlflow": run.to_json(),
            "rungs": [None] * len(request.rungs),
            "check": None,
            "links": {},
        }
        _save(state, record)
        shown = " -> ".join(f"{r.text}:{r.n}" for r in request.rungs)
        print(f"multi-fidelity search {request.name} of {request.space_name}: {shown}", file=out, flush=True)
    keys, metric, mode = request.searched, request.metric, request.mode
    parent = {"mlflow.parentRunId": run.parent_run_id}
    total = len(request.rungs)
    for i, rung in enumerate(request.rungs):
        name = rung_name(i)
        if (state["rungs"][i] or {}).get("status") in ("done", "no_result"):
            print(f"[{i + 1}/{total}] {name} ({rung.text}): done before, not run again", file=out, flush=True)
            continue
        path = folder / SPACES_FOLDER / f"{name}.yaml"
        if i > 0 and not path.is_file():  # a resumed rung runs what it was first given
            previous = read_rows(folder / SEARCHES_FOLDER / rung_name(i - 1))
            points = [point_of(r, keys) for r in promoted(previous, keys, metric, mode, rung.n)]
            if not points:
                print(f"[{i + 1}/{total}] {name}: rung {i - 1} gave no result to promote; stopped", file=out, flush=True)
                state["rungs"][i] = {"status": "no_result", "search": name, "fidelity": rung.text, "n": rung.n, "configs": 0}
                _save(state, record)
                break
            write_space(path, rung_space(request, i, points))
        what = f"{rung.n} configurations searched" if i == 0 else f"the best {rung.n} of {rung_name(i - 1)}"
        print(f"\n[{i + 1}/{total}] {name} ({rung.text}): {what}", file=out, flush=True)
        summary, _ = _run_phase(request, name, parent, out, verbose)
        state.pop("report", None)  # a rung ran: the report is written again
        rows = read_rows(folder / SEARCHES_FOLDER / name)
        best = best_of(rows, keys, metric, mode)
        state["rungs"][i] = {
            "status": "done" if best["config"] is not None else "no_result",
            "search": name,
            "fidelity": rung.text,
            "settings": rung.settings,
            "n": rung.n,
            "configs": count_configs(rows, keys),
            "best": best,
            "trials": summary.counts,
            "parent_run_id": summary.parent_run_id,
            "seconds": summary.seconds,
        }
        if i > 0:
            previous = read_rows(folder / SEARCHES_FOLDER / rung_name(i - 1))
            links = ancestor_links(previous, rows, keys, metric, mode, i, rung.text)
            for link in links:  # where to find a run MLflow did not have when the table was written
                link.update(search_run_id=summary.parent_run_id, ancestor_search_run_id=state["rungs"][i - 1]["parent_run_id"])
            state["links"][name] = {"links": links, "applied": False}
            _apply_links(run, state, name, out)
        _link_search(run, name, summary.parent_run_id, out)
        _save(state, record)
        if best["config"] is None:
            print(f"{name} gave no result; the rungs after it are not run", file=out, flush=True)
            break
    if request.check and (state.get("check") or {}).get("status") != "done":
        _check(request, state, run, out, verbose)
        state.pop("report", None)
        _save(state, record)
    return _finish(request, state, run, started, out)


def _check(request: MultiFidelityRequest, state: dict[str, Any], run: Any, out: IO[str], verbose: bool) -> None:
    """Every configuration of rung 0 at the full fidelity (``--check``)."""
    keys = request.searched
    path = request.folder / SPACES_FOLDER / f"{CHECK}.yaml"
    if not path.is_file():
        first = read_rows(request.folder / SEARCHES_FOLDER / rung_name(0))
        points = [point_of(r, keys) for r in promoted(first, keys, request.metric, request.mode, None)]
        if not points:
            print("check: rung 0 gave no configuration to check", file=out, flush=True)
            state["check"] = {"status": "no_result", "search": CHECK}
            return
        write_space(path, check_space(request, points))
    print(f"\ncheck: every configuration of {rung_name(0)} at the full fidelity (not counted as the search's)", file=out, flush=True)
    summary, _ = _run_phase(request, CHECK, {"mlflow.parentRunId": run.parent_run_id}, out, verbose)
    rows = read_rows(request.folder / SEARCHES_FOLDER / CHECK)
    state["check"] = {
        "status": "done",
        "search": CHECK,
        "configs": count_configs(rows, keys),
        "best": best_of(rows, keys, request.metric, request.mode),
        "trials": summary.counts,
        "parent_run_id": summary.parent_run_id,
        "seconds": summary.seconds,
    }
    _link_search(run, CHECK, summary.parent_run_id, out)


def _apply_links(run: Any, state: dict[str, Any], name: str, out: IO[str]) -> None:
    entry = state["links"][name]
    try:
        undone = run.link(entry["links"])
        why = f"{undone} of their runs not in MLflow yet (python -m tuneddml.tracking.sync sends them)"
    except Exception as exc:  # MLflow unreachable: multifidelity.json keeps them for --resume
        undone, why = len(entry["links"]), str(exc)
    entry["applied"] = not undone
    if undone:
        print(
            f"warning: MLflow: {undone} trial runs of {name} not linked to their ancestors ({why}); "
            f"kept in {MULTIFIDELITY_FILE}, applied again by --resume",
            file=out,
        )


def _link_search(run: Any, name: str, search_run_id: str, out: IO[str]) -> None:
    try:
        run.link_search(name, search_run_id)
    except Exception as exc:
        print(f"warning: MLflow: the parent run does not name the search of {name} ({exc})", file=out)


def report_metrics(report: Any, prefix: str = "") -> dict[str, float]:
    """The report's rank correlations and regrets as MLflow metrics: every finite number under a
    key naming ``spearman`` or ``regret``, named by its path (``pairs.0.spearman``)."""
    found: dict[str, float] = {}
    items = report.items() if isinstance(report, dict) else enumerate(report) if isinstance(report, list) else ()
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, (dict, list)):
            found.update(report_metrics(value, f"{path}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
            if "spearman" in path.lower() or "regret" in path.lower():
                found["".join(c if c.isalnum() or c in "_-./" else "_" for c in path)] = float(value)
    return found


def _finish(request: MultiFidelityRequest, state: dict[str, Any], run: Any, started: float, out: IO[str]) -> MultiFidelitySummary:
    from tuneddml.results.fidelity import fidelity_report, write_fidelity_report

    folder = request.folder
    ran = [(i, s) for i, s in enumerate(state["rungs"]) if s and s.get("status") == "done"]
    seconds = [float(s.get("seconds", 0.0)) for _, s in ran]
    if state.get("report"):  # resumed after its end: nothing new to report or log
        files = {k: Path(v) for k, v in state["report"].items()}
        page = next((p for p in files.values() if p.suffix == ".json" and p.is_file()), None)
        report = json.loads(page.read_text()) if page else {}
        return _summary(request, state, run, report, files, seconds, out)
    if not ran:  # not even rung 0 gave a result: nothing to report
        print(f"no rung gave a result; the searches are in {folder / SEARCHES_FOLDER}", file=out)
        try:
            run.finish(files=[], metrics={}, status="FAILED")
        except Exception as exc:
            print(f"warning: MLflow: the parent run was not ended ({exc})", file=out)
        return _summary(request, state, run, {}, {}, seconds, out)
    rungs = [read_rows(folder / SEARCHES_FOLDER / rung_name(i)) for i, _ in ran]
    names = [f"rung {i} ({s['fidelity']})" for i, s in ran]
    checked = (state.get("check") or {}).get("status") == "done"
    check_rows = read_rows(folder / SEARCHES_FOLDER / CHECK) if checked else None
    # compute as the rows' trial seconds (the check's likewise), not the searches' wall time
    report = fidelity_report(
        rungs, request.searched, request.metric, request.mode, names=names, check=check_rows, top_k=request.rungs[-1].n
    )
    drawn = None
    try:
        from tuneddml.plots import draw_fidelity

        figure = draw_fidelity(report)
        if isinstance(figure, str):
            print(f"fidelity figure not drawn: {figure}", file=out)
        else:
            figure.savefig(folder / FIGURE_FILE, dpi=120)
            drawn = folder / FIGURE_FILE
    except Exception as exc:  # a figure must never cost the report
        print(f"warning: fidelity figure not drawn: {exc}", file=out)
    title = f"Fidelity report: multi-fidelity search {request.name} ({request.space_name})"
    files = dict(write_fidelity_report(report, folder, title=title, figure=FIGURE_FILE if drawn else None))
    if drawn:
        files["figure"] = drawn
    try:
        status = "FINISHED" if len(ran) == len(request.rungs) else "FAILED"
        run.finish(files=[Path(p) for p in files.values()], metrics=report_metrics(report), status=status)
    except Exception as exc:
        print(f"warning: MLflow: the fidelity report was not logged ({exc}); its files are in {folder}", file=out)
    state["report"] = {k: str(v) for k, v in files.items()}
    _save(state, folder / MULTIFIDELITY_FILE)
    return _summary(request, state, run, report, files, seconds, out)


def _summary(
    request: MultiFidelityRequest,
    state: dict[str, Any],
    run: Any,
    report: dict[str, Any],
    files: dict[str, Path],
    seconds: list[float],
    out: IO[str],
) -> MultiFidelitySummary:
    """Print each rung's line and the report's page; the summary."""
    pages = [Path(p) for p in files.values() if str(p).endswith(".md")]
    markdown = pages[0].read_text() if pages and pages[0].is_file() else ""
    for i, s in enumerate(state["rungs"]):
        if s:
            best = s.get("best") or {}
            shown = f"{request.metric}={best['value']:.4f} {format_values(best['config'])}" if best.get("config") else "no result"
            print(
                f"{rung_name(i)} ({s['fidelity']}): {s.get('configs', 0)} configurations, "
                f"{format_duration(float(s.get('seconds', 0.0)))}, best {shown}",
                file=out,
            )
    if markdown:
        print(f"\n{markdown}", file=out)
    last = state["rungs"][-1] if state["rungs"][-1] and state["rungs"][-1].get("status") == "done" else None
    check = state.get("check") or {}
    return MultiFidelitySummary(
        request.name,
        request.folder,
        [s for s in state["rungs"] if s],
        (last or {}).get("best", {}).get("config"),
        (last or {}).get("best", {}).get("value"),
        sum(seconds),
        float(check["seconds"]) if check.get("status") == "done" else None,
        report,
        files,
        run.parent_run_id,
        markdown,
    )
