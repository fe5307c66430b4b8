"""List what a trial or a search space can name: ``python -m tuneddml.catalog [KIND] [--json]``.

Everything here falls out of the registries: the trial settings, every component with its
parameters (and, for a loss, its family, balance and search ranges), the metrics a trial reports,
the searchers, the schedulers, the shipped search spaces and presets. ``KIND`` narrows it to one of them
(``python -m tuneddml.catalog losses``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import textwrap
from collections.abc import Sequence
from typing import IO, Any

from tuneddml.cli import EXIT_BAD_INPUT, first_paragraph, first_sentence, plain
from tuneddml.config import _TOP_SPECS, BACKBONE_SPECS, component_registries
from tuneddml.registry import Entry, ParamSpec, Registry

WIDTH = 100  # the printed catalog's lines are wrapped at this many characters
TRIAL = "trial"
SPACES = "spaces"
PRESETS = "presets"


def balance_text(prefix: str, name: str) -> str | None:
    """A loss's balance in one line (what its ``lambda`` weighs), None for other components."""
    if prefix != "loss":
        return None
    from tuneddml.losses import LOSSES

    entry = LOSSES.get(name)
    balance = getattr(entry.factory, "balance", None)
    if balance is None:
        return "lambda is passed to the base loss: its balance" if entry.param("lambda") else None
    return (
        f"{balance.formula()}; {balance.first.rstrip('.')}: {balance.first_means}; "
        f"{balance.second.rstrip('.')}: {balance.second_means}"
    )


#: the kinds of component that are methods of a paper: each says in its docstring what it follows
METHOD_KINDS: tuple[str, ...] = ("loss", "sampler", "miner", "embedding_aug")
FOLLOWS = "Follows:"


def follows(entry: Entry[Any]) -> str | None:
    """The docstring paragraph that starts ``Follows:`` (which paper equation or official code the
    method follows, and what it simplifies), plain and on one line, without the word; None if the
    docstring has none."""
    doc = inspect.getdoc(entry.factory) or ""
    for paragraph in doc.split("\n\n"):
        text = paragraph.strip()
        if text.startswith(FOLLOWS):
            return plain(text[len(FOLLOWS) :])
    return None


def summary(entry: Entry[Any]) -> str:
    """An entry's summary, whole and plain: the first sentence of its docstring (which the
    registry's one-line summary may cut mid-way), or the summary it was registered with."""
    doc = inspect.getdoc(entry.factory) or ""
    lines = doc.strip().splitlines()
    if lines and entry.summary == lines[0]:
        return first_sentence(first_paragraph(doc))
    return plain(entry.summary)


def _spec(p: ParamSpec) -> dict[str, Any]:
    return {
        "default": p.default,
        "type": p.kind.__name__,
        "choices": list(p.choices) if p.choices else None,
        "range": str(p.interval) if p.interval else None,
    }


def _entry(prefix: str, entry: Entry[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": summary(entry)}
    if prefix == "loss":
        out["family"] = entry.factory.family  # type: ignore[attr-defined]
    if b := balance_text(prefix, entry.name):
        out["balance"] = b
    if prefix in METHOD_KINDS:
        out["follows"] = follows(entry)
    out["params"] = {p.name: _spec(p) for p in (*entry.params, *(BACKBONE_SPECS if prefix == "backbone" else ()))}
    if entry.runtime_params and prefix == "dataset":
        out["trial_sets"] = {p.name: _spec(p) for p in entry.runtime_params}
    if entry.search:
        out["search"] = dict(entry.search)
    if entry.requires:
        out["requires"] = list(entry.requires)
    return out


def other_registries() -> dict[str, Registry[Any]]:
    """The registries a search (not a trial) chooses from."""
    from tuneddml.evaluation import METRICS
    from tuneddml.searchers import SEARCHERS
    from tuneddml.searchers.schedulers import SCHEDULERS

    return {"metric": METRICS, "searcher": SEARCHERS, "scheduler": SCHEDULERS}


def kinds() -> list[str]:
    """What the catalog can be narrowed to: ``trial``, each registry's kind, ``spaces``, ``presets``."""
    return [TRIAL, *component_registries(), *other_registries(), SPACES, PRESETS]


def kind_of(word: str) -> str:
    """``losses`` or ``loss`` -> ``loss``; a word that names no kind exits 2, naming the kinds."""
    for kind in kinds():
        if word in (kind, f"{kind}s", f"{kind}es", kind.removesuffix("s")):
            return kind
    from tuneddml.cli import fail

    fail(f"KIND: bad value {word!r} (expected one of {', '.join(kinds())}; a plural works too)", EXIT_BAD_INPUT)


def spaces() -> dict[str, dict[str, Any]]:
    """The shipped search spaces: what each says it is, its searcher, budget and searched keys."""
    from tuneddml.searchers.space_file import find_space, list_spaces, read_space

    out: dict[str, dict[str, Any]] = {}
    for name in list_spaces():
        data = read_space(find_space(name))
        out[name] = {
            "description": data.get("description", ""),
            "searcher": data.get("searcher"),
            "scheduler": data.get("scheduler"),
            "num_samples": data.get("num_samples"),
            "metric": data.get("metric"),
            "parameters": list(data.get("parameters", {})),
            "start_points": len(data.get("start_points", ())),
        }
    return out


def presets() -> dict[str, dict[str, Any]]:
    """The shipped presets: what each is, the numbers its papers reach, its settings."""
    from tuneddml.presets import list_presets, read_preset

    return {name: vars(read_preset(name)) for name in list_presets()}


def catalog(only: str | None = None) -> dict[str, object]:
    """The catalog as data; ``only``: one kind of :func:`kinds` (``metric`` brings ``metric_keys``)."""
    from tuneddml.evaluation import metric_keys

    out: dict[str, object] = {}
    if only in (None, TRIAL):
        out[TRIAL] = {s.name: _spec(s) for s in _TOP_SPECS}
    registries = {**component_registries(), **other_registries()}
    for kind, registry in registries.items():
        if only in (None, kind):
            out[kind] = {name: _entry(kind, registry.get(name)) for name in registry.names()}
    if only in (None, "metric"):
        out["metric_keys"] = metric_keys()
    if only in (None, SPACES):
        out[SPACES] = spaces()
    if only in (None, PRESETS):
        out[PRESETS] = presets()
    return out


def _say(out: IO[str], text: str, indent: str, more: str | None = None) -> None:
    """``text`` wrapped at :data:`WIDTH`, its first line after ``indent``, the next after ``more``."""
    lines = textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=more or indent + "  ")
    print("\n".join(lines), file=out)


def _print_trial(out: IO[str]) -> None:
    print("trial settings (KEY=VALUE):", file=out)
    for spec in _TOP_SPECS:
        print(f"  {spec.describe()}", file=out)


def _print_components(prefix: str, registry: Registry[Any], out: IO[str]) -> None:
    print(f"{prefix} (choose with {prefix}=NAME, parameters as {prefix}.PARAM=VALUE):", file=out)
    if prefix == "backbone":
        print("  every backbone also takes:", file=out)
        for p in BACKBONE_SPECS:
            print(f"      {p.describe()}", file=out)
    for name in registry.names():
        entry = registry.get(name)
        _say(out, f"{name}: {summary(entry)}", "  ")
        if prefix == "loss":
            print(f"      family: {entry.factory.family}", file=out)  # type: ignore[attr-defined]
        balance = balance_text(prefix, name)
        if balance:
            _say(out, f"balance: {balance}", "      ", "          ")
        if prefix in METHOD_KINDS and (line := follows(entry)):
            _say(out, f"follows: {line}", "      ", "          ")
        for p in entry.params:
            print(f"      {p.describe()}", file=out)
        if prefix == "dataset":
            for p in entry.runtime_params:
                print(f"      {p.describe()} (the trial's {'data_root' if p.name == 'root' else p.name})", file=out)


def _print_others(kind: str, registry: Registry[Any], out: IO[str]) -> None:
    from tuneddml.evaluation import metric_keys

    titles = {
        "metric": f"metrics (a space's metric; a trial reports {', '.join(metric_keys())})",
        "searcher": "searchers (a space's searcher, or --searcher NAME)",
        "scheduler": "schedulers (a space's scheduler, or --scheduler NAME)",
    }
    print(f"{titles[kind]}:", file=out)
    for name in registry.names():
        entry = registry.get(name)
        needs = f" (needs {', '.join(entry.requires)})" if entry.requires else ""
        _say(out, f"{name}: {summary(entry)}{needs}", "  ")


def _print_spaces(out: IO[str]) -> None:
    print("spaces (python -m tuneddml.search --space=NAME):", file=out)
    for name, space in spaces().items():
        about = f"{space['description']}. " if space["description"] else ""
        _say(
            out,
            f"{name}: {about}{space['searcher']} searcher, {space['scheduler']} scheduler, "
            f"{space['num_samples']} trials; varies {', '.join(space['parameters'])}"
            + (f"; {space['start_points']} start points first" if space["start_points"] else ""),
            "  ",
        )


def _print_presets(out: IO[str]) -> None:
    print("presets (python -m tuneddml.train --preset NAME; a space file's preset: NAME):", file=out)
    for name, preset in presets().items():
        _say(out, f"{name}: {preset['description']}. Reference: {preset['reference']}", "  ", "    ")


def print_catalog(only: str | None, out: IO[str]) -> None:
    """The catalog for a person; ``only``: one kind of :func:`kinds`."""
    sections = []
    if only in (None, TRIAL):
        sections.append(lambda: _print_trial(out))
    for prefix, registry in component_registries().items():
        if only in (None, prefix):
            sections.append(lambda p=prefix, r=registry: _print_components(p, r, out))
    for kind, registry in other_registries().items():
        if only in (None, kind):
            sections.append(lambda k=kind, r=registry: _print_others(k, r, out))
    if only in (None, SPACES):
        sections.append(lambda: _print_spaces(out))
    if only in (None, PRESETS):
        sections.append(lambda: _print_presets(out))
    for i, section in enumerate(sections):
        if i:
            print(file=out)
        section()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tuneddml.catalog", description=first_paragraph(__doc__))
    parser.add_argument(
        "kind", nargs="?", metavar="KIND", help=f"show only this kind: {', '.join(kinds())} (a plural works too)"
    )
    parser.add_argument("--json", action="store_true", help="print the catalog as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    only = kind_of(args.kind) if args.kind else None
    if args.json:
        print(json.dumps(catalog(only), indent=2, default=str))
    else:
        print_catalog(only, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
