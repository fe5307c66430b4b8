"""The ``points`` searcher: exactly the space's start points, in order, then FINISHED; refused
before Ray starts for a space without start points; a branched loss x seed space as the lead's
re-evaluation runs use it. No Ray."""

from __future__ import annotations

import json
import os
import textwrap

import pytest
from searcher_helpers import drive, space_from_text

from tuneddml.errors import ConfigError
from tuneddml.searchers import SEARCHERS, check_searcher
from tuneddml.searchers.core import FINISHED, is_core
from tuneddml.searchers.points import PointsSearch
from tuneddml.searchers.space import load_space

SPACE = """
    mode: max
    parameters:
      loss: {choice: [supcon, contrastive]}
      loss.lambda: {uniform: [0.05, 0.95], start: 0.5}
      loss.temperature: {loguniform: [0.01, 1.0], start: 0.1, when: {loss: supcon}}
"""
POINTS = """
    start_points:
      - {loss: contrastive, loss.lambda: 0.3}
      - {loss: supcon, loss.temperature: 0.05}
      - {loss: supcon, loss.lambda: 0.7, loss.temperature: 0.2}
      - {loss: contrastive}
"""
FULL = [
    {"loss": "contrastive", "loss.lambda": 0.3},
    {"loss": "supcon", "loss.lambda": 0.5, "loss.temperature": 0.05},
    {"loss": "supcon", "loss.lambda": 0.7, "loss.temperature": 0.2},
    {"loss": "contrastive", "loss.lambda": 0.5},
]
VALUES = [0.4, None, 0.9, 0.6]  # the second fails


@pytest.fixture
def space(tmp_path):
    return space_from_text(tmp_path, SPACE + POINTS)


def value_of(config):
    return VALUES[FULL.index(config)]


def test_it_evaluates_exactly_the_points_in_order_then_finishes(space):
    core = PointsSearch(space)
    assert is_core(core) and "points" in SEARCHERS
    history = drive(core, value_of)
    assert [c for _, c, _ in history] == FULL
    assert core.finished and core.ask() == FINISHED
    assert core.best() == (FULL[2], 0.9)


def test_the_budget_cuts_the_list_and_min_mode_picks_the_lowest(space):
    core = PointsSearch(space, max_trials=2, mode="min")
    assert [c for _, c, _ in drive(core, value_of)] == FULL[:2]
    assert core.best() == (FULL[0], 0.4)  # the failed second point is no result


def test_all_handed_out_at_once_and_told_in_any_order(space):
    core = PointsSearch(space)
    asked = [core.ask() for _ in range(4)]
    assert core.ask() == FINISHED and core.best() == ({}, None)
    for key, config in reversed(asked):
        core.tell(key, value_of(config), complete=config != FULL[2])  # the best one stopped early
    assert core.best() == (FULL[3], 0.6)
    with pytest.raises(KeyError):
        core.tell(asked[0][0], 1.0)  # told already


def test_a_restored_search_continues_with_the_remaining_points(space):
    first = PointsSearch(space)
    key, config = first.ask()
    first.tell(key, value_of(config))
    pending = first.ask()
    second = PointsSearch(space)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    second.tell(pending[0], value_of(pending[1]))
    assert [c for _, c, _ in drive(second, value_of)] == FULL[2:]
    assert second.best() == (FULL[2], 0.9)


def test_a_space_without_start_points_is_refused_naming_the_flag(tmp_path):
    plain = space_from_text(tmp_path, SPACE)
    with pytest.raises(ConfigError) as info:
        check_searcher("points", plain)
    assert info.value.field == "--searcher" and "start_points" in info.value.expected
    check_searcher("points")  # the name alone is valid
    with pytest.raises(ConfigError, match="--searcher"):
        PointsSearch(plain)
    # a file whose own searcher is points must list start points
    with pytest.raises(ConfigError) as info:
        space_from_text(tmp_path, SPACE + "    searcher: points\n", name="own")
    assert info.value.field.endswith("own.yaml: searcher") and "start_points" in info.value.expected


def test_the_command_line_refuses_points_without_start_points_before_ray(tmp_path, monkeypatch, capsys):
    import ray

    from tuneddml.search import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--space=quick", "--searcher", "points"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --searcher") and "start_points" in err[0]
    assert not ray.is_initialized() and os.listdir(tmp_path) == []


def test_the_catalog_lists_the_searcher_with_its_summary():
    from tuneddml.catalog import catalog

    entry = catalog("searcher")["searcher"]["points"]
    assert "start_points" in json.dumps(entry) and "in order" in json.dumps(entry)


BRANCHED = """
    description: each loss's best config x each seed
    searcher: points
    num_samples: 6
    fixed: {dataset: glyphs-tiny, epochs: 1}
    parameters:
      loss:
        branches:
          contrastive: own
          multi_similarity: own
      seed: {choice: [0, 1, 2]}
    start_points:
"""


def test_a_branched_loss_x_seed_space_with_the_trial_configs_validation(tmp_path):
    best = [
        {"loss": "contrastive", "loss.pos_margin": 0.9, "loss.neg_margin": 0.4},
        {"loss": "multi_similarity", "loss.alpha": 2.5, "loss.beta": 40.0, "loss.threshold": 0.6},
    ]
    points = [{**b, "seed": s} for b in best for s in (0, 1, 2)]
    text = BRANCHED + "".join(f"      - {json.dumps(p)}\n" for p in points)
    path = tmp_path / "reeval.yaml"
    path.write_text(textwrap.dedent(text))
    space = load_space(path)  # the default validator: TrialConfig.from_flat on every point
    assert len(space.start_points) == 6 and space.searcher == "points"
    # every other parameter of each loss's branch at its declared start
    assert space.start_points[0] == {
        "loss": "contrastive", "loss.lambda": 0.5, "loss.aggregation": "nonzero", "loss.pos_margin": 0.9,
        "loss.neg_margin": 0.4, "seed": 0,
    }  # fmt: skip
    assert space.start_points[5] == {
        "loss": "multi_similarity", "loss.lambda": 0.5, "loss.threshold": 0.6, "loss.alpha": 2.5,
        "loss.beta": 40.0, "seed": 2,
    }  # fmt: skip
    core = SEARCHERS.build("points", {}, field="--searcher", space=space, seed=0, mode="max", max_trials=6)
    history = drive(core, lambda c: c["seed"] + (c["loss"] == "multi_similarity"))
    assert [c for _, c, _ in history] == list(space.start_points)
    assert core.best()[0]["seed"] == 2 and core.best()[0]["loss"] == "multi_similarity"
    # a point in one branch may not set another branch's parameter
    bad = BRANCHED + '      - {"loss": "contrastive", "loss.alpha": 2.5}\n'
    path.write_text(textwrap.dedent(bad))
    with pytest.raises(ConfigError) as info:
        load_space(path)
    assert info.value.field.endswith("start_points[0].loss.alpha")
    assert "loss = multi_similarity" in info.value.expected and "loss=contrastive" in info.value.expected
