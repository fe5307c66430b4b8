"""The fidelity analysis of a multi-fidelity search, on hand-made rows whose numbers are computed
here by hand: promotion of the top k, Spearman's rank correlation, matching configurations across
rungs, the report with a check run (regret, rank, compute), its files and its figure."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tuneddml.errors import ConfigError
from tuneddml.results.fidelity import (
    FIDELITY_JSON,
    FIDELITY_MD,
    config_key,
    fidelity_report,
    promote,
    read_fidelity_report,
    spearman,
    write_fidelity_report,
)

M = "map_at_r"


def _row(lr, value, *, order=0, status="finished", seconds=10.0, trial=None, **config):
    row = {f"config.{k}": v for k, v in {"lr": lr, **config}.items()}
    return {**row, f"best.{M}": value, "status": status, "order": order, "seconds": seconds,
            "trial_id": trial or f"t{order}", "mlflow_run_id": None}  # fmt: skip


# -- promote ------------------------------------------------------------------------------------
def test_promote_keeps_exactly_the_top_k_best_first_ties_by_order():
    rows = [
        _row(1, 0.3, order=3),
        _row(2, 0.5, order=4),
        _row(3, 0.5, order=1),  # ties with lr=2, started earlier: first
        _row(4, 0.9, order=5, status="failed"),  # failed: left out whatever its value
        _row(5, math.nan, order=6),
        _row(6, None, order=7),
        _row(7, 0.1, order=0),
        _row(8, math.inf, order=8),  # not finite
    ]
    assert [r["config.lr"] for r in promote(rows, M, "max", 2)] == [3, 2]
    assert [r["config.lr"] for r in promote(rows, M, "max", 3)] == [3, 2, 1]
    assert [r["config.lr"] for r in promote(rows, M, "min", 2)] == [7, 1]
    assert [r["config.lr"] for r in promote(rows, M, "min", 3)] == [7, 1, 3]
    assert [r["config.lr"] for r in promote(rows, M, "max", 50)] == [3, 2, 1, 7]  # every scored row
    assert promote(rows, M, "max", 0) == [] and promote([], M, "max", 3) == []
    assert promote(rows, M, "max", 1)[0] is not rows[2] and promote(rows, M, "max", 1)[0] == rows[2]  # copies
    with pytest.raises(ConfigError) as err:
        promote(rows, M, "maximise", 2)
    assert err.value.field == "mode" and "max" in str(err.value)


# -- spearman -----------------------------------------------------------------------------------
def test_spearman_against_hand_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)  # 1 - 6*2/(3*8)
    # ties: x ranks (1.5, 1.5, 3, 4), y ranks (1, 2, 3, 4): Pearson of the ranks
    rx, ry = np.array([1.5, 1.5, 3, 4]), np.array([1, 2, 3, 4.0])
    expected = np.corrcoef(rx, ry)[0, 1]
    assert spearman([0.2, 0.2, 0.5, 0.9], [1, 2, 3, 4]) == pytest.approx(expected)
    assert spearman([1, 2], [1, 2]) is None  # n < 3
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2, 3], [5, 5, 5]) is None  # constant
    assert spearman([1, 2, math.nan, 3, 4], [1, 2, 9, 3, 4]) == pytest.approx(1.0)  # the NaN pair left out
    with pytest.raises(ValueError):
        spearman([1, 2, 3], [1, 2])


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (3, 5, 17, 40):
        x = rng.integers(0, 6, n).astype(float)  # many ties
        y = x + rng.normal(0, 2, n)
        y[: n // 3] = np.round(y[: n // 3])
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


# -- config_key ---------------------------------------------------------------------------------
def test_config_key_matches_across_int_float_none_and_numpy():
    keys = ["lr", "loss", "loss.margin", "missing"]
    a = {"config.lr": 1, "config.loss": "supcon", "config.loss.margin": None}
    b = {"config.lr": 1.0, "config.loss": "supcon", "config.loss.margin": math.nan}
    c = {
        "config.lr": np.float64(1.0),
        "config.loss": np.str_("supcon"),
        "config.loss.margin": np.nan,
        "config.missing": None,
    }
    assert config_key(a, keys) == config_key(b, keys) == config_key(c, keys) == (1, "supcon", None, None)
    assert len({config_key(r, keys) for r in (a, b, c)}) == 1
    assert config_key({"config.lr": 0.1}, ["lr"]) != config_key({"config.lr": 0.2}, ["lr"])
    assert isinstance(config_key(b, keys)[0], float) and type(config_key(c, keys)[0]) is float
    assert config_key({"config.sizes": [1, 2]}, ["sizes"]) == ((1, 2),)  # hashable
    pd = pytest.importorskip("pandas")
    row = pd.Series({"config.lr": 1.0, "config.loss": "supcon", "config.loss.margin": pd.NA})
    assert config_key(row, keys) == (1, "supcon", None, None)


# -- the report ---------------------------------------------------------------------------------
# rung 0: six configurations (and a failed one); its top 3 (lr 6, 2, 4) promoted to rung 1, whose
# rows give lr as floats; the check ran all seven at full fidelity.
RUNG0 = [
    _row(lr, v, order=i)
    for i, (lr, v) in enumerate([(1, 0.1), (2, 0.5), (3, 0.3), (4, 0.4), (5, 0.2), (6, 0.6)])
]
RUNG0 += [_row(7, None, order=6, status="failed")]
RUNG1 = [
    _row(6.0, 0.55, order=7, seconds=30.0),
    _row(2.0, 0.7, order=8, seconds=30.0),
    _row(4.0, 0.45, order=9, seconds=30.0),
]
CHECK = [_row(lr, v, order=20 + i, seconds=30.0, trial=f"c{lr}")
         for i, (lr, v) in enumerate([(1, 0.3), (2, 0.72), (3, 0.5), (4, 0.46), (5, 0.35), (6, 0.56)])]  # fmt: skip
CHECK += [_row(7, None, order=26, status="failed", seconds=30.0)]


def _report(**kwargs):
    return fidelity_report([RUNG0, RUNG1], ["lr"], M, "max", names=["cached", "full"], **kwargs)


def test_report_per_rung_and_pair():
    report = _report()
    cached, full = report["rungs"]
    assert cached == {
        "name": "cached", "trials": 7, "configs": 7, "scored": 6, "failed": 1, "best": 0.6,
        "best_config": {"lr": 6}, "best_trial": "t5", "seconds": 70.0, "promoted": 3,
    }  # fmt: skip
    assert full["best"] == 0.7 and full["best_config"] == {"lr": 2.0} and full["seconds"] == 90.0
    assert full["promoted"] is None
    (pair,) = report["pairs"]  # two rungs: (0, 1) is also (0, last)
    assert pair["matched"] == 3 and pair["ran_both"] == 3
    # x = (0.6, 0.5, 0.4) -> ranks 3, 2, 1; y = (0.55, 0.7, 0.45) -> 2, 3, 1: 1 - 6*2/(3*8) = 0.5
    assert pair["spearman"] == pytest.approx(0.5)
    assert pair["best_kept"] is False and pair["best_rank_before"] == 2 and pair["of"] == 6
    assert sorted(pair["dropped"]) == [0.1, 0.2, 0.3]
    assert [p["final_best"] for p in pair["points"]] == [False, True, False]
    assert report["compute"] == {"seconds": [70.0, 90.0], "total": 160.0}
    assert report["check"] is None
    assert [c["config"]["lr"] for c in report["configurations"]][:3] == [2, 6, 4]  # furthest, then best there


def test_report_with_a_check_run_regret_rank_and_compute():
    check = _report(check=CHECK, top_k=3)["check"]
    assert (check["configs"], check["scored"], check["covered"], check["of"], check["matched"]) == (
        7,
        6,
        7,
        7,
        6,
    )
    # rung 0 ranks (by lr 1..6) 1 5 3 4 2 6, the check's 1 6 4 3 2 5: d^2 = 4, 1 - 6*4/(6*35)
    assert check["spearman"] == pytest.approx(1 - 24 / 210)
    assert (
        check["best_full"] == 0.72
        and check["best_full_config"] == {"lr": 2}
        and check["best_full_trial"] == "c2"
    )
    # top 1 of rung 0 is lr 6 (0.56 in the check): regret 0.16; lr 2 is in the top 2 on
    regrets = {e["k"]: e["regret"] for e in check["regret_top_k"]}
    assert list(regrets) == [1, 2, 3, 4, 6]  # powers of two below 6, 6 itself, and the search's k
    assert regrets[1] == pytest.approx(0.16) and regrets[2] == regrets[3] == regrets[4] == regrets[6] == 0
    assert check["rung0_best_rank"] == 2  # lr 6 is second in the check
    assert check["search_best"] == {
        "config": {"lr": 2.0},
        "value": 0.7,
        "check_value": 0.72,
        "rank": 1,
        "regret": 0.0,
    }
    assert check["seconds"] == 210.0 and check["compute_ratio"] == pytest.approx(160 / 210)
    assert [p["promoted"] for p in check["points"]] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]  # rung 0's order


def test_three_rungs_min_mode_and_a_pick_the_check_lacks():
    rung0 = [
        _row(lr, v, order=lr) for lr, v in [(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0)]
    ]  # a loss: lower is better
    rung1 = [_row(lr, v, order=10 + lr) for lr, v in [(4, 1.5), (3, 1.0), (2, 2.5)]]
    rung2 = [_row(lr, v, order=20 + lr) for lr, v in [(3, 0.8), (4, 0.9)]]
    check = [_row(lr, v, order=30 + lr) for lr, v in [(1, 0.5), (2, 0.9), (4, 0.7)]]  # lr 3 missing
    report = fidelity_report([rung0, rung1, rung2], ["lr"], M, "min", seconds=[1.0, 2.0, 3.0], check=check)
    assert [(p["from"], p["to"]) for p in report["pairs"]] == [(0, 1), (1, 2), (0, 2)]
    first, second, end = report["pairs"]
    assert (
        first["spearman"] == pytest.approx(0.5)
        and first["best_kept"] is False
        and first["best_rank_before"] == 2
    )
    assert second["spearman"] is None and second["matched"] == 2 and second["best_kept"] is True
    assert [p["promoted"] for p in first["points"]] == [True, True, False]  # lr 2 did not go on to rung 2
    assert first["promoted_to"] == "rung 2" and end["promoted_to"] is None
    assert report["compute"]["total"] == 6.0
    ck = report["check"]
    assert ck["best_full"] == 0.5 and ck["rung0_best_rank"] == 2  # rung 0's best (lr 4) is 0.7 in the check
    # rung 0's order: lr 4, 3, 2, 1; the check's best (lr 1) only in its top 4; lr 3 not in the check
    assert [(e["k"], e["regret"]) for e in ck["regret_top_k"]] == [
        (1, pytest.approx(0.2)),
        (2, pytest.approx(0.2)),
        (4, 0.0),
    ]
    pick = ck["search_best"]
    assert pick["config"] == {"lr": 3} and pick["check_value"] is None and pick["rank"] is None
    assert pick["regret"] == pytest.approx(0.3)  # its own last-rung value, 0.8, against the check's best


def test_bad_inputs_name_the_field():
    for kwargs, field in (
        ({"names": ["a"]}, "names"),
        ({"seconds": [1.0]}, "seconds"),
        ({"top_k": 0}, "top_k"),
    ):
        with pytest.raises(ConfigError) as err:
            fidelity_report([RUNG0, RUNG1], ["lr"], M, "max", **kwargs)
        assert err.value.field == field
    with pytest.raises(ConfigError):
        fidelity_report([], ["lr"], M, "max")


# -- files and figure ---------------------------------------------------------------------------
def test_write_fidelity_report_files(tmp_path):
    report = _report(check=CHECK, top_k=2)
    written = write_fidelity_report(report, tmp_path / "out", figure="fidelity.png")
    assert written == {"json": tmp_path / "out" / FIDELITY_JSON, "markdown": tmp_path / "out" / FIDELITY_MD}
    assert read_fidelity_report(tmp_path / "out") == json.loads(json.dumps(report))
    assert not list((tmp_path / "out").glob("*.tmp"))
    text = written["markdown"].read_text()
    assert "Spearman 0.50 between cached and full over 3 configurations" in text
    assert "Spearman 0.89 between cached and the check over 6 configurations" in text
    assert "noisy" in text and "The best at full was not the best at cached: it was 2nd of 6 there." in text
    assert "| 1 | 0.5600 | 0.1600 |" in text and "| 2 (the search's k) | 0.7200 | 0.0000 |" in text
    assert "The best configuration of cached is 2nd of 6 in the check" in text
    assert "The search's final pick (lr=2) scores 0.7200 in the check (1st of 6): it is the best." in text
    assert "0.76 of the check's (1.3x less)" in text
    assert "| lr=2 | 0.5000 | 0.7000 | 0.7200 |" in text and "| lr=1 | 0.1000 |  | 0.3000 |" in text
    assert "| lr=7 | n/a |  | n/a |" in text  # failed at rung 0 and in the check
    nan = _report(seconds=[math.nan, 1.0])  # strict JSON all the same
    write_fidelity_report(nan, tmp_path / "nan")
    assert read_fidelity_report(tmp_path / "nan")["compute"]["seconds"][0] is None


def test_draw_fidelity_a_figure_or_why_not(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from tuneddml.plots import draw_fidelity, save_fidelity_figure

    report = _report(check=CHECK)
    figure = draw_fidelity(report)
    assert isinstance(figure, Figure)
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert titles == ["cached vs full: Spearman 0.50 (n=3)", "cached vs check: Spearman 0.89 (n=6)"]
    assert save_fidelity_figure(report, tmp_path / "fidelity.png").stat().st_size > 1000
    apart = fidelity_report([RUNG0, [_row(9, 0.5)]], ["lr"], M, "max")  # nothing matched
    assert draw_fidelity(apart) == "fidelity: no configuration has a value at two fidelities"
    assert save_fidelity_figure(apart, tmp_path / "none.png") == draw_fidelity(apart)
    assert not (tmp_path / "none.png").exists()
