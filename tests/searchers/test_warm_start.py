"""``start_points:`` in a space file (parsing, every refusal naming its field) and the warm start of
the ask/tell cores (:class:`~tuneddml.searchers.warm_start.WarmStart`): the points first, in order,
then the core, which learns from them; an exact state round trip. No Ray."""

from __future__ import annotations

import json

import pytest
from searcher_helpers import drive, space_from_text

from tuneddml.errors import ConfigError
from tuneddml.searchers.balance import BalanceSearch
from tuneddml.searchers.coordinate_descent import FINISHED, CoordinateDescent
from tuneddml.searchers.grid import GridSearch
from tuneddml.searchers.warm_start import WarmStart, warm_points

SPACE = """
    mode: max
    parameters:
      loss: {choice: [supcon, contrastive]}
      loss.lambda: {uniform: [0.05, 0.95], start: 0.5}
      loss.temperature: {loguniform: [0.01, 1.0], start: 0.1, when: {loss: supcon}}
      loss.margin:
        - {uniform: [0.0, 0.5], start: 0.2, when: {loss: contrastive}}
        - {uniform: [1.0, 2.0], start: 1.5, when: {loss: supcon}}
      batch_size: {choice: [32, 64], start: 64}
"""
POINTS = """
    start_points:
      - {loss: contrastive, loss.margin: 0.3}
      - {loss: supcon, loss.temperature: 0.07, batch_size: 32}
      - {loss.lambda: 0.25}
"""
# the three points in full, by hand: missing keys at their (active variant's) start
FULL = [
    {"loss": "contrastive", "loss.lambda": 0.5, "loss.margin": 0.3, "batch_size": 64},
    {"loss": "supcon", "loss.lambda": 0.5, "loss.temperature": 0.07, "loss.margin": 1.5, "batch_size": 32},
    {"loss": "supcon", "loss.lambda": 0.25, "loss.temperature": 0.1, "loss.margin": 1.5, "batch_size": 64},
]


@pytest.fixture
def space(tmp_path):
    return space_from_text(tmp_path, SPACE + POINTS)


def score(config):
    """Best at supcon, lambda 0.25, temperature 0.07: of the start points, the third is best (1.97),
    then the second (1.75), then the first (0.75)."""
    value = 1.0 - abs(config["loss.lambda"] - 0.25)
    if config["loss"] == "supcon":
        value += 1.0 - abs(config["loss.temperature"] - 0.07)
    return value


def test_points_are_completed_with_the_starts_of_their_active_domains(space):
    assert list(space.start_points) == FULL
    # the first start point is where every searcher starts, by domain name (variants included)
    assert space.start_point() == {
        "loss": "contrastive", "loss.lambda": 0.5, "loss.temperature": 0.1, "loss.margin@0": 0.3,
        "loss.margin@1": 1.5, "batch_size": 64,
    }  # fmt: skip
    assert space.config_of(space.start_point()) == FULL[0]
    configs = space.representative_configs()
    assert configs[:3] == FULL  # checked first, before the extremes
    assert all(p in configs for p in FULL)


def test_a_space_without_start_points_keeps_its_start(tmp_path):
    space = space_from_text(tmp_path, SPACE)
    assert space.start_points == ()
    start = {"loss": "supcon", "loss.lambda": 0.5, "loss.temperature": 0.1, "loss.margin": 1.5, "batch_size": 64}
    assert space.config_of(space.start_point()) == start


@pytest.mark.parametrize(
    ("points", "field", "needles"),
    [
        ("start_points: {loss: supcon}", "x.yaml: start_points", ["a list of mappings"]),
        ("start_points: [supcon]", "x.yaml: start_points[0]", ["a list of mappings"]),
        (
            "start_points: [{loss: supcon}, {epochs: 3}]",
            "x.yaml: start_points[1].epochs",
            ["a searched parameter: loss, loss.lambda, loss.temperature, loss.margin, batch_size"],
        ),
        ("start_points: [{loss.lambda: 0.99}]", "x.yaml: start_points[0].loss.lambda", ["[0.05, 0.95]"]),
        ("start_points: [{loss: triplet}]", "x.yaml: start_points[0].loss", ["supcon, contrastive"]),
        ("start_points: [{batch_size: 48}]", "x.yaml: start_points[0].batch_size", ["32, 64"]),
        # the active variant's range: contrastive's margin is in [0, 0.5], supcon's in [1, 2]
        (
            "start_points: [{loss: contrastive, loss.margin: 1.5}]",
            "x.yaml: start_points[0].loss.margin",
            ["[0, 0.5]"],
        ),
        (
            "start_points: [{loss: supcon}, {loss: contrastive, loss.temperature: 0.07}]",
            "x.yaml: start_points[1].loss.temperature",
            ["searched when loss = supcon", "this point has loss=contrastive"],
        ),
    ],
)
def test_each_bad_start_point_is_refused_naming_its_field(tmp_path, points, field, needles):
    field = "/" + field
    with pytest.raises(ConfigError) as info:
        space_from_text(tmp_path, SPACE + "    " + points + "\n")
    assert info.value.field.endswith(field)
    for needle in needles:
        assert needle in info.value.expected


def test_a_start_point_the_trial_config_refuses_names_its_field(tmp_path):
    def validate(flat):  # an invalid combination: contrastive with a small batch
        if flat["loss"] == "contrastive" and flat["batch_size"] == 32 and flat["loss.margin"] > 0.25:
            raise ConfigError("loss.margin", flat["loss.margin"], "at most 0.25 with batch_size 32")

    text = SPACE + "    start_points: [{loss: supcon}, {loss: contrastive, loss.margin: 0.3, batch_size: 32}]\n"
    with pytest.raises(ConfigError) as info:
        space_from_text(tmp_path, text, validate=validate)
    assert info.value.field.endswith("/x.yaml: start_points[1].loss.margin")
    assert "checked at start_points[1]" in info.value.expected and "batch_size=32" in info.value.expected


def test_a_bad_start_point_exits_2_from_the_command_line(tmp_path, monkeypatch, capsys):
    from tuneddml.search import main

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text("parameters:\n  loss: {choice: [supcon, contrastive]}\nstart_points: [{loss: npair}]\n")
    with pytest.raises(SystemExit) as exit_info:
        main([f"--space={path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "start_points[0].loss" in err[0] and "supcon, contrastive" in err[0]


def ask_all(core):
    """Ask until the core waits or finishes: the keys and configs handed out."""
    out = []
    while isinstance(got := core.ask(), tuple):
        out.append(got)
    return out, got


def test_coordinate_descent_runs_the_points_first_then_starts_from_the_best(space):
    assert warm_points(CoordinateDescent, space) == FULL
    core = WarmStart(CoordinateDescent(space, seed=0, max_trials=20 - 3), FULL)
    asked, then = ask_all(core)
    assert [k for k, _ in asked] == ["warm-1", "warm-2", "warm-3"] and [c for _, c in asked] == FULL
    assert then is None and not core.finished  # waits for the three results before its first line
    for key, config in reversed(asked):  # results in any order
        core.tell(key, score(config))
    line, _ = ask_all(core)
    # the first line moves one coordinate away from the best start point (the third: supcon,
    # lambda 0.25), and never re-runs a start point
    assert line and all(c not in FULL for _, c in line)
    best = FULL[2]
    point = {**space.start_point(), **space.names_of(best)}
    assert all(any(space.config_of({**point, n: c.get(space.domain(n).key)}) == c for n in point) for _, c in line)
    assert core.best() == (best, score(best))


def test_a_core_without_observe_is_asked_at_once(space):
    core = WarmStart(GridSearch(space, seed=0, max_trials=4), FULL)
    asked, then = ask_all(core)
    assert [k for k, _ in asked] == ["warm-1", "warm-2", "warm-3", "g00000", "g00001", "g00002", "g00003"]
    assert then == FINISHED
    for key, config in asked:
        core.tell(key, score(config))
    assert core.best() == (FULL[2], score(FULL[2]))  # a warm point beats the 4 grid points
    assert max(score(c) for _, c in asked[3:]) < score(FULL[2])


def test_the_balance_search_takes_each_familys_best_point(space):
    core = WarmStart(BalanceSearch(space, seed=0, max_trials=12 - 3), FULL)
    asked, _ = ask_all(core)
    for key, config in asked:
        core.tell(key, score(config))
    families = {f["name"]: f for f in core.core._families}
    assert space.config_of(families["supcon"]["point"]) == FULL[2]
    assert space.config_of(families["contrastive"]["point"]) == FULL[0]
    rest = [c for _, c, _ in drive(core, score)]
    assert rest and all(c not in FULL for c in rest)  # a start point is not explored again
    assert len(rest) == 9


def test_balance_families_start_at_their_own_start_point(tmp_path):
    text = SPACE + "    start_points: [{loss: contrastive, loss.margin: 0.4, loss.lambda: 0.3}]\n"
    space = space_from_text(tmp_path, text)
    assert warm_points(BalanceSearch, space) == []  # one start point: the search starts there itself
    core = BalanceSearch(space, seed=0, max_trials=8)
    first, second = core.ask()[1], core.ask()[1]
    assert first == {"loss": "contrastive", "loss.lambda": 0.3, "loss.margin": 0.4, "batch_size": 64}
    # the other family at the domains' starts, not at the start point's values
    assert second == {"loss": "supcon", "loss.lambda": 0.5, "loss.temperature": 0.1, "loss.margin": 1.5, "batch_size": 64}


@pytest.mark.parametrize("stop", [2, 3, 5])  # mid-way through the points (one pending), and after
@pytest.mark.parametrize("kind", [CoordinateDescent, BalanceSearch, GridSearch])
def test_a_restored_warm_start_continues_identically(space, kind, stop):
    def build():
        return WarmStart(kind(space, seed=3, max_trials=10), FULL)

    def run(core, history, limit):
        while len(history) < limit:
            got = core.ask()
            if got == FINISHED:
                break
            if got is None:  # waits: tell the oldest pending one
                key, config = next((k, c) for k, c, told in history if not told)
                core.tell(key, score(config))
                history[:] = [(k, c, told or k == key) for k, c, told in history]
                continue
            history.append((*got, False))
        return history

    whole = run(build(), [], 13)
    first = build()
    head = run(first, [], stop)
    state = json.loads(json.dumps(first.state_dict()))  # plain JSON
    second = build()
    second.load_state_dict(state)
    tail = run(second, list(head), 13)
    assert [(k, c) for k, c, _ in tail] == [(k, c) for k, c, _ in whole]


def test_the_optuna_sampler_adapter_asks_the_points_first(space):
    optuna = pytest.importorskip("optuna")
    from tuneddml.searchers.optuna_sampler import CoordinateDescentSampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=CoordinateDescentSampler(space, seed=0, max_trials=8))

    def objective(trial):
        space.define_by_run(trial)
        return score(space.keys_of(trial.params))

    study.optimize(objective, n_trials=8)
    configs = [space.keys_of(t.params) for t in study.trials]
    assert configs[:3] == FULL and all(c not in FULL for c in configs[3:])
    assert study.best_value >= score(FULL[2])


# the Reality Check's published optima (its table, hand-copied): (alpha, beta, base) of
# multi-similarity and the normalised-softmax temperature, CUB-200, Cars196, SOP at batch 32
MLRC_MS = [(0.01, 50.60, 0.56), (14.35, 75.83, 0.66), (8.49, 57.38, 0.41)]
MLRC_NORMSOFTMAX = [0.1087, 0.0886, 0.0630]


def test_shipped_spaces_start_where_they_did_then_take_the_published_optima():
    from tuneddml.searchers.space import load_space

    margins, proxies, seeds = (load_space(n, validate=lambda flat: None) for n in ("margins", "proxy_counts", "seed_methods"))
    for space in (margins, proxies, seeds):
        defaults = {d.name: d.start for d in space.domains}
        assert space.start_points[0] == space.config_of(defaults)  # the first point is the old start
    assert [(p["loss.alpha"], p["loss.beta"], p["loss.threshold"]) for p in margins.start_points[1:]] == MLRC_MS
    assert [p["loss.temperature"] for p in proxies.start_points[1:]] == MLRC_NORMSOFTMAX
    assert [p["loss.temperature"] for p in seeds.start_points[1:]] == MLRC_NORMSOFTMAX
    assert all(p["loss"] == "normsoftmax" and p["loss.lambda"] == 0.5 for p in seeds.start_points[1:])


def test_the_reality_check_space_runs_its_four_optima():
    from tuneddml.searchers.space import load_space

    space = load_space("mlrc_optima")  # the trial config's own checks, pml's ranges included
    assert space.searcher == "points" and space.num_samples == 4 and space.fixed["dataset"] == "cub200"
    assert [dict(p) for p in space.start_points] == [
        {"loss": "pml:ContrastiveLoss", "loss.pos_margin": -0.2, "loss.neg_margin": 0.3841},
        {"loss": "pml:TripletMarginLoss", "loss.margin": 0.0961},
        {"loss": "pml:NTXentLoss", "loss.temperature": 0.0091},
        {"loss": "pml:MultiSimilarityLoss", "loss.alpha": 0.01, "loss.beta": 50.60, "loss.base": 0.56},
    ]


def test_an_invalid_combination_in_a_start_point_fails_before_ray(tmp_path, monkeypatch, capsys):
    """Each value is in its range; the trial config refuses the pair (4 does not divide 30)."""
    import ray

    from tuneddml.search import main

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "combo.yaml"
    path.write_text(
        "fixed: {dataset: glyphs-tiny, split: val, epochs: 1}\n"
        "parameters:\n  batch_size: {choice: [32, 30]}\n  sampler.samples_per_class: {choice: [2, 4]}\n"
        "start_points: [{batch_size: 32, sampler.samples_per_class: 4}, {batch_size: 30, sampler.samples_per_class: 4}]\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main([f"--space={path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "combo.yaml: start_points[1].sampler.samples_per_class" in err[0]
    assert "divisor of batch_size=30" in err[0] and not ray.is_initialized()
