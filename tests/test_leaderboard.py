"""The leaderboard's statistics against hand computations (the t quantile typed in from a table,
the paired t-test's p value from the closed forms of Student's t with 1 and 2 degrees of freedom,
Holm's adjustment by hand), a constructed benchmark (one loss clearly worse, one within the noise,
one with a single seed, a failed run), its Markdown page, its files and its figure."""

from __future__ import annotations

import math
import random

import numpy as np
import pyarrow.parquet as pq
import pytest

from tuneddml.errors import ConfigError
from tuneddml.plots import draw_leaderboard, save_leaderboard_figure
from tuneddml.results.leaderboard import (
    LEADERBOARD_MD,
    LEADERBOARD_PARQUET,
    SEEDS_PARQUET,
    build_leaderboard,
    holm,
    interval,
    leaderboard_markdown,
    paired_test,
    read_leaderboard,
    read_seeds,
    write_leaderboard,
)

T_975_2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (a printed table)


def p_df2(t: float) -> float:
    """Two-sided p of Student's t with 2 degrees of freedom: P(|T| > t) = 1 - t / sqrt(t^2 + 2)."""
    return 1 - abs(t) / math.sqrt(t * t + 2)


def p_df1(t: float) -> float:
    """Two-sided p with 1 degree of freedom (Cauchy): 1 - (2 / pi) atan(|t|)."""
    return 1 - 2 / math.pi * math.atan(abs(t))


def test_interval_by_hand():
    iv = interval([0.40, 0.42, 0.44])
    half = T_975_2 * 0.02 / math.sqrt(3)
    assert (iv.mean, iv.sd, iv.n) == (pytest.approx(0.42), pytest.approx(0.02), 3)
    assert iv.low == pytest.approx(0.42 - half) and iv.high == pytest.approx(0.42 + half)
    assert iv.half_width == pytest.approx(0.049683, abs=1e-6)  # 4.3027 * 0.011547
    # 90%: t_{0.95, 2} = 2.919986 (a printed table)
    assert interval([0.40, 0.42, 0.44], confidence=0.9).half_width == pytest.approx(
        2.919986 * 0.02 / math.sqrt(3)
    )


def test_interval_drops_failed_runs_and_gives_none_from_one_seed():
    assert interval([0.40, math.nan, 0.42, None, 0.44]) == interval([0.40, 0.42, 0.44])
    one = interval([0.5, math.nan])
    assert one.mean == 0.5 and one.n == 1 and all(math.isnan(v) for v in (one.low, one.high, one.sd))
    none = interval([math.nan])
    assert none.n == 0 and math.isnan(none.mean)
    with pytest.raises(ConfigError, match="confidence"):
        interval([0.1, 0.2], confidence=95)


def test_paired_test_by_hand_pairs_by_seed():
    # seed 3: 0.46 - 0.44 = 0.02, seed 5: 0.04, seed 7: 0.04; mean 1/30, sd 0.011547,
    # se = sd / sqrt(3) = 1/150, t = 5 exactly; seed 9 is only in b and is left out
    a = {7: 0.50, 3: 0.46, 5: 0.47}
    b = {9: 0.40, 5: 0.43, 3: 0.44, 7: 0.46}
    assert p_df2(5.0) == pytest.approx(0.03775, abs=1e-6)  # 1 - 5 / 5.19615
    assert paired_test(a, b) == pytest.approx(p_df2(5.0))
    assert paired_test(b, a) == pytest.approx(p_df2(5.0))  # two-sided
    shuffled = list(a.items())
    random.Random(0).shuffle(shuffled)
    assert paired_test(dict(shuffled), b) == pytest.approx(p_df2(5.0))
    # aligned sequences pair by position; a NaN drops its pair: diffs 0.03, 0.01 -> t = 0.02 / 0.01 = 2
    assert paired_test([0.50, 0.41, 0.7], [0.47, 0.40, math.nan]) == pytest.approx(p_df1(2.0))


def test_paired_test_edge_cases():
    assert math.isnan(paired_test({1: 0.5, 2: 0.6}, {2: 0.4, 3: 0.5}))  # one pair: no test
    assert paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]) == 1.0  # identical: zero differences
    assert paired_test([0.5, 0.6, 0.7], [0.25, 0.35, 0.45]) == 0.0  # the same gap on every seed
    with pytest.raises(ConfigError, match="paired_test"):
        paired_test([0.5, 0.6], [0.5])
    with pytest.raises(ConfigError, match="paired_test"):
        paired_test({1: 0.5}, [0.5])


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.5, math.nan, 0.6])  # NaN not counted: m = 2; 2 * 0.5 = 1.0, capped, then max
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == 1.0
    assert holm([0.02]) == [0.02]


METRICS = {"map_at_r": 0.0, "r_precision": 0.1, "recall_at_1": 0.3}


def seed_rows(loss: str, values: list[float], config: dict, seeds: list[int] | None = None) -> list[dict]:
    """One row per seed: test MAP@R ``value``, the other metrics offset from it, concatenated +0.02,
    validation +0.05."""
    rows = []
    for seed, value in zip(seeds or range(len(values)), values):
        row = {"loss": loss, "seed": seed, "config": config}
        for m, offset in METRICS.items():
            row |= {
                f"test.{m}": value + offset,
                f"concat.{m}": value + offset + 0.02,
                f"val.{m}": value + offset + 0.05,
            }
        rows.append(row)
    return rows


def benchmark() -> list[dict]:
    return [
        *seed_rows(
            "triplet", [0.30, 0.31, 0.295, math.nan], {"loss.margin": 0.1}
        ),  # clearly worse; a failed run
        *seed_rows("contrastive", [0.49, 0.52, 0.48], {"loss.pos_margin": 0.9}),  # within the noise
        *seed_rows("multi_similarity", [0.50, 0.51, 0.49], {"loss.alpha": 2.0, "lr": 1e-4}),  # best
        *seed_rows("npair", [0.45], {}),  # one seed
    ]


SEARCH = {"multi_similarity": {"val": 0.61, "trials": 20, "search": "tpe"}}


def test_leaderboard_ranks_and_compares_by_hand():
    board = build_leaderboard(benchmark(), search=SEARCH)
    rows = {r["loss"]: r for r in board.table}
    assert [r["loss"] for r in board.table] == ["multi_similarity", "contrastive", "npair", "triplet"]
    assert [r["rank"] for r in board.table] == [1, 2, 3, 4]
    assert board.best == "multi_similarity"
    best, close, worse, single = (rows[k] for k in ("multi_similarity", "contrastive", "triplet", "npair"))
    half = T_975_2 * 0.01 / math.sqrt(3)  # best: 0.50, 0.51, 0.49, sd 0.01
    assert best["test.map_at_r.mean"] == pytest.approx(0.50)
    assert (best["test.map_at_r.low"], best["test.map_at_r.high"]) == pytest.approx(
        (0.50 - half, 0.50 + half)
    )
    assert best["concat.recall_at_1.mean"] == pytest.approx(0.82)
    assert best["val.map_at_r.mean"] == pytest.approx(0.55)
    assert (best["search.val"], best["search.trials"], best["search.name"]) == (0.61, 20, "tpe")
    assert math.isnan(close["search.val"]) and close["search.trials"] is None
    assert best["config"] == '{"loss.alpha": 2.0, "lr": 0.0001}'
    # contrastive: diffs 0.01, -0.01, 0.01: mean 1/300, sd 0.011547, t = 0.5 -> p = 1 - 0.5 / 1.5
    # triplet: diffs 0.20, 0.20, 0.195: mean 0.198333, sd 0.0028868, se 1/600, t = 119
    p_close, p_worse = 1 - 0.5 / 1.5, p_df2(119.0)
    assert close["p_vs_best"] == pytest.approx(p_close) and worse["p_vs_best"] == pytest.approx(p_worse)
    assert worse["p_holm"] == pytest.approx(2 * p_worse)  # Holm over the two tested comparisons
    assert close["p_holm"] == pytest.approx(p_close)  # 1 * p_close, above 2 * p_worse
    assert (close["significant"], close["overlaps_best"]) == (False, True)
    assert (worse["significant"], worse["overlaps_best"]) == (True, False)
    assert worse["diff_vs_best"] == pytest.approx(0.198333, abs=1e-6)
    assert (worse["seeds"], worse["failed"]) == (3, 1)  # the NaN run dropped
    assert worse["test.map_at_r.sd"] == pytest.approx(0.0076376, abs=1e-7)  # 0.30, 0.31, 0.295
    # npair: one seed, no interval, no test
    assert single["seeds"] == 1 and single["test.map_at_r.mean"] == pytest.approx(0.45)
    assert all(math.isnan(single[f"test.map_at_r.{k}"]) for k in ("low", "high", "sd"))
    assert (
        math.isnan(single["p_vs_best"]) and single["significant"] is None and single["overlaps_best"] is None
    )
    assert math.isnan(best["p_vs_best"]) and best["significant"] is None
    # the noise: each loss's sd of test MAP@R (0.01, 0.0208167, 0.0076376) and their mean
    assert board.noise.per_loss == pytest.approx(
        {"multi_similarity": 0.01, "contrastive": 0.0208167, "triplet": 0.0076376}, abs=1e-7
    )
    assert board.noise.mean == pytest.approx((0.01 + 0.0208167 + 0.0076376) / 3, abs=1e-7)


def test_statements_say_what_the_table_shows():
    text = "\n".join(build_leaderboard(benchmark()).statement)
    assert "multi_similarity ranks first on test MAP@R (0.500 +- 0.025, 95% CI over 3 seeds)." in text
    assert (
        "contrastive (0.497 +- 0.052, 95% CI over 3 seeds): not significantly different from multi_similarity"
        in text
    )
    assert "Holm-adjusted p = 0.67; intervals overlap" in text
    assert "triplet (0.302 +- 0.019, 95% CI over 3 seeds): significantly worse than multi_similarity" in text
    assert "Holm-adjusted p < 0.001; intervals do not overlap" in text
    assert "npair (0.450 from 1 seed; n=1: no interval): not compared" in text
    assert "triplet: 1 of 4 runs without a test MAP@R, left out." in text
    assert "Measured noise: the seed-to-seed standard deviation of test MAP@R is 0.013" in text
    assert "little power" not in text


def test_two_seeds_are_said_to_have_little_power():
    rows = [*seed_rows("a", [0.50, 0.52], {}), *seed_rows("b", [0.47, 0.51], {})]
    board = build_leaderboard(rows)
    text = " ".join(board.statement)
    assert "paired t-test over 2 seeds, little power" in text and "1 degree of freedom" in text
    assert board.table[1]["p_vs_best"] == pytest.approx(p_df1(2.0))  # diffs 0.03, 0.01: t = 2


def test_no_result_at_all_and_bad_inputs():
    board = build_leaderboard(seed_rows("a", [math.nan, math.nan], {}))
    assert board.best is None and board.table[0]["seeds"] == 0 and "nothing to rank" in board.statement[0]
    with pytest.raises(ConfigError, match="rank_by"):
        build_leaderboard(benchmark(), rank_by="nmi")
    with pytest.raises(ConfigError, match="one row per"):
        build_leaderboard(seed_rows("a", [0.5, 0.6], {}, seeds=[1, 1]))
    with pytest.raises(ConfigError, match="config"):
        build_leaderboard([*seed_rows("a", [0.5], {"lr": 1}), *seed_rows("a", [0.6], {"lr": 2}, seeds=[1])])
    with pytest.raises(ConfigError, match="rows"):
        build_leaderboard([])


def test_markdown_holds_the_numbers_and_the_statements():
    board = build_leaderboard(benchmark(), search=SEARCH)
    page = leaderboard_markdown(board, title="CUB-200, Reality Check", meta={"dataset": "cub", "folds": 4})
    assert (
        page.startswith("# CUB-200, Reality Check\n")
        and "- **dataset**: cub" in page
        and "- **folds**: 4" in page
    )
    line = next(x for x in page.splitlines() if x.startswith("| 1 | multi_similarity |"))
    assert "| 3 | 0.500 +- 0.025 [0.475, 0.525] | 0.600 +- 0.025 | 0.800 +- 0.025 | 0.520 +- 0.025 |" in line
    assert line.endswith("| 0.550 | 0.610 | best | best |")
    assert next(x for x in page.splitlines() if x.startswith("| 2 | contrastive |")).endswith("| 0.67 | no |")
    assert next(x for x in page.splitlines() if x.startswith("| 4 | triplet |")).endswith("| < 0.001 | yes |")
    assert "| 3 | npair | 1 | 0.450 (n=1: no interval) |" in page
    for sentence in board.statement:
        assert f"- {sentence}" in page
    assert "### 1. multi_similarity (found by tpe in 20 trials; its best val MAP@R: 0.610)" in page
    assert '"loss.alpha": 2.0' in page


def test_files_round_trip(tmp_path):
    rows = benchmark()
    rows[4] = {
        **rows[4],
        "seed": np.int64(0),
        "test.map_at_r": np.float64(0.49),
    }  # numpy's numbers, as a driver's
    board = build_leaderboard(rows, search=SEARCH)
    written = write_leaderboard(
        board, tmp_path / "board", rows=rows, meta={"dataset": "cub"}, figure="lb.png"
    )
    assert written == {
        "markdown": tmp_path / "board" / LEADERBOARD_MD,
        "table": tmp_path / "board" / LEADERBOARD_PARQUET,
        "seeds": tmp_path / "board" / SEEDS_PARQUET,
    }
    assert sorted(p.name for p in (tmp_path / "board").iterdir()) == sorted(
        [LEADERBOARD_MD, LEADERBOARD_PARQUET, SEEDS_PARQUET]
    )
    assert "![leaderboard](lb.png)" in written["markdown"].read_text()
    back = read_leaderboard(tmp_path / "board")
    assert (back.best, back.statement, back.metrics, back.rank_by) == (
        board.best,
        board.statement,
        board.metrics,
        "map_at_r",
    )
    assert back.noise.per_loss == board.noise.per_loss and back.noise.mean == board.noise.mean
    assert back.meta == {"dataset": "cub"} and board.meta == {}
    for got, want in zip(back.table, board.table):
        assert got.keys() == want.keys()
        for k, v in want.items():
            assert (
                (math.isnan(got[k]) and math.isnan(v))
                if isinstance(v, float) and math.isnan(v)
                else got[k] == v
            ), k
    assert pq.read_table(written["table"]).schema.field("config").type == "string"
    seeds = read_seeds(tmp_path / "board")
    assert len(seeds) == len(rows) and seeds[0]["config"] == {"loss.margin": 0.1}
    assert math.isnan(seeds[3]["test.map_at_r"]) and seeds[4]["test.map_at_r"] == pytest.approx(0.49)
    assert pq.read_table(written["seeds"]).schema.field("test.map_at_r").type == "double"
    assert pq.read_table(written["seeds"]).schema.field("seed").type == "int64"
    with pytest.raises(ConfigError, match="folder"):
        read_leaderboard(tmp_path)


def test_figure_has_one_panel_per_metric(tmp_path):
    board = build_leaderboard(benchmark())
    figure = draw_leaderboard(board)
    assert len(figure.axes) == 3
    assert [t.get_text().split()[0] for t in figure.axes[0].get_yticklabels()] == [
        r["loss"] for r in board.table
    ]
    # the best's test interval is the first bar of the first panel (its y the top row, below the middle)
    segment = figure.axes[0].collections[0].get_segments()[0]
    assert segment[:, 0] == pytest.approx(
        [board.table[0]["test.map_at_r.low"], board.table[0]["test.map_at_r.high"]]
    )
    path = save_leaderboard_figure(board, tmp_path / "lb.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert isinstance(draw_leaderboard(build_leaderboard(seed_rows("a", [math.nan], {}))), str)
