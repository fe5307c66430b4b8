"""Help and catalog that tell the truth: every option of every command-line tool has help, no help
text names an option its tool lacks, and the catalog's entries are whole, plain and narrowable."""

from __future__ import annotations

import argparse
import importlib
import json
import re
from pathlib import Path

import pytest

from tests.tuning.procs import ROOT
from tuneddml.catalog import kinds, main, summary
from tuneddml.cli import first_sentence, plain
from tuneddml.config import component_registries

OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
REST = re.compile(r"``|:[a-z]+:`|`_")


def _tools() -> list[str]:
    """Every module under tuneddml/ that builds an argparse parser (each in its ``_parser()``)."""
    found = []
    for path in sorted((ROOT / "tuneddml").rglob("*.py")):
        if "ArgumentParser(" in path.read_text():
            found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


def test_every_tool_is_found_and_has_a_parser_function():
    tools = _tools()
    assert {"tuneddml.search", "tuneddml.report", "tuneddml.train", "tuneddml.catalog"} <= set(tools)
    for name in tools:
        assert callable(getattr(importlib.import_module(name), "_parser", None)), f"{name}: no _parser()"


@pytest.mark.parametrize("name", _tools())
def test_every_option_has_help_and_help_names_only_real_options(name):
    parser: argparse.ArgumentParser = importlib.import_module(name)._parser()
    options = {s for action in parser._actions for s in action.option_strings}
    texts = []
    missing = sorted(set(OPTION.findall(parser.description or "")) - options)
    assert not missing, f"{name}: its description names {missing}, which the parser lacks"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        what = action.option_strings or [action.dest]
        assert action.help and action.help != argparse.SUPPRESS and action.help.strip(), f"{name} {what}: no help"
        texts.append(action.help)
    for text in texts:
        assert not REST.search(text), f"{name}: reST markup in {text!r}"
        missing = sorted(set(OPTION.findall(text)) - options)
        assert not missing, f"{name}: help names {missing}, which the parser lacks"
    help_text = parser.format_help()
    assert "--list" in options or "--list" not in help_text


@pytest.mark.parametrize("name", _tools())
def test_every_description_is_plain(name):
    parser: argparse.ArgumentParser = importlib.import_module(name)._parser()
    assert parser.description and not REST.search(parser.description), parser.description


def test_search_help_names_the_spaces_and_verbose():
    from tuneddml.search import _parser
    from tuneddml.searchers.space import list_spaces

    text = " ".join(_parser().format_help().split())
    assert all(name in text for name in list_spaces()) and "--verbose" in text


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("For data (e.g. a table): x. Sized for CPUs.", "For data (e.g. a table): x."),
        ("Mining (Wang et al., CVPR 2019): pairs. More.", "Mining (Wang et al., CVPR 2019): pairs."),
        ("One sentence, no full stop", "One sentence, no full stop"),
    ],
)
def test_first_sentence_is_whole(text, first):
    assert first_sentence(text) == first


def test_plain_unwraps_rest():
    assert plain("see :class:`~a.b.ConfigError`, :mod:`x.y` and ``depth``\n   stages") == (
        "see ConfigError, x.y and 'depth' stages"
    )


def _entries():
    from tuneddml.catalog import other_registries

    for kind, registry in {**component_registries(), **other_registries()}.items():
        for name in registry.names():
            yield kind, name, registry.get(name)


def test_every_summary_is_whole_and_plain():
    import inspect

    for kind, name, entry in _entries():
        text = summary(entry)
        assert text and not REST.search(text), f"{kind} {name}: {text!r}"
        doc = " ".join((inspect.getdoc(entry.factory) or "").split())
        if doc.startswith(text.rstrip(".")[:40]):  # taken from the docstring: up to a sentence's end
            assert text.endswith((".", "!", "?", ")")) or plain(doc).startswith(text), f"{kind} {name}: {text!r}"
    from tuneddml.data import DATASETS

    # once cut at the end of the docstring's first line ("... and, unless")
    assert summary(DATASETS.get("glyphs-xl")).endswith("to check a default or a searcher on).")


# a source, then whether it is as published or what differs; or no paper, or pml's own class
FOLLOWS_FORM = re.compile(r".+?\. (As published|Differs: )|no paper: |pytorch-metric-learning's .+ itself")


def test_every_method_says_what_it_follows_and_the_catalog_shows_it(capsys):
    """Each loss, sampler, miner and embedding augmenter names its source and what differs from it
    (a docstring paragraph ``Follows: ...``), and the catalog prints that same line."""
    from tuneddml.catalog import METHOD_KINDS, catalog, follows

    missing = []
    for kind, name, entry in _entries():
        if kind not in METHOD_KINDS:
            continue
        line = follows(entry)
        if line is None or not FOLLOWS_FORM.match(line) or REST.search(line):
            missing.append(f"{kind} {name}: {line!r}")
    assert not missing, "\n".join(missing)
    assert catalog("loss")["loss"]["supcon"]["follows"] == follows(component_registries()["loss"].get("supcon"))
    assert main(["losses"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "follows: " + follows(component_registries()["loss"].get("proxy_anchor")) in printed


def test_follows_reads_only_its_own_paragraph():
    from tuneddml.catalog import follows
    from tuneddml.registry import Registry

    registry: Registry[object] = Registry("thing")

    @registry.register("a")
    class A:
        """Summary.

        Follows: Someone 2020, its
        ``loss``. Differs: nothing
        much.

        Parameters: none.
        """

    @registry.register("b")
    class B:
        """Summary without the paragraph; a line that says Follows: inside is not one."""

    assert follows(registry.get("a")) == "Someone 2020, its 'loss'. Differs: nothing much."
    assert follows(registry.get("b")) is None


def test_the_catalog_narrows_to_one_kind(capsys):
    assert main(["losses"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("loss (choose with loss=NAME") and "\ndataset (" not in text and "  supcon:" in text
    for kind in kinds():
        assert main([kind]) == 0
        shown = capsys.readouterr().out
        assert shown.strip() and shown.count("\n\n") == 0, kind  # one section
        assert main([kind, "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert kind in data and set(data) <= {kind, "metric_keys"}
    assert main(["spaces"]) == 0
    assert "  quick: Tiny demo space" in capsys.readouterr().out


def test_a_bad_kind_exits_2_naming_the_kinds(capsys):
    with pytest.raises(SystemExit) as info:
        main(["lossez"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lossez" in err[0] and all(k in err[0] for k in kinds())


def test_no_file_claims_a_list_option():
    """``--list`` was once named in the search's help; no tool has one."""
    for path in [*(ROOT / "tuneddml").rglob("*.py"), ROOT / "README.md"]:
        assert "--list" not in Path(path).read_text(), path
