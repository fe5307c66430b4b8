"""The pure metric functions on neighbour-label tables computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuneddml.errors import ConfigError
from tuneddml.evaluation import average_precision, map_at_r, ndcg_at_k, r_precision, recall_at_k

# Three queries of classes 0, 1, 2 with R = 2, 1, 3 other items of their class, plus a query of
# class 3 that is alone (R = 0) and must be left out of every mean.
TABLE = np.array(
    [
        [1, 0, 0, 2],  # rel 0 1 1 0
        [1, 2, 2, 0],  # rel 1 0 0 0
        [2, 0, 2, 2],  # rel 1 0 1 1
        [0, 1, 2, 2],  # lone query: nothing to find
    ]
)
QUERY = np.array([0, 1, 2, 3])
R = np.array([2, 1, 3, 0])
D2, D3 = 1 / math.log2(3), 1 / math.log2(4)  # DCG discounts of ranks 2 and 3 (rank 1: 1)


def test_recall_at_k_by_hand():
    assert recall_at_k(TABLE, QUERY, 1, num_relevant=R) == pytest.approx(2 / 3)
    assert recall_at_k(TABLE, QUERY, 2, num_relevant=R) == pytest.approx(1.0)
    # Without num_relevant every row counts, the lone one as a miss.
    assert recall_at_k(TABLE, QUERY, 1) == pytest.approx(2 / 4)
    # k beyond the table uses the whole row.
    assert recall_at_k(TABLE, QUERY, 50, num_relevant=R) == pytest.approx(1.0)


def test_r_precision_by_hand():
    expected = (1 / 2 + 1 / 1 + 2 / 3) / 3
    assert r_precision(TABLE, QUERY, R) == pytest.approx(expected)


def test_map_at_r_by_hand():
    row0 = (1 / 2) / 2  # the relevant item at rank 2 (within R=2), precision 1/2
    row1 = 1.0
    row2 = (1 / 1 + 2 / 3) / 3  # ranks 1 and 3 within R=3
    assert map_at_r(TABLE, QUERY, R) == pytest.approx((row0 + row1 + row2) / 3)


def test_ndcg_at_k_by_hand():
    row0 = (D2 + D3) / (1 + D2)  # ideal: both relevant items first
    row1 = 1.0
    row2 = (1 + D3) / (1 + D2 + D3)
    assert ndcg_at_k(TABLE, QUERY, 3, R) == pytest.approx((row0 + row1 + row2) / 3)
    # nDCG@1 is precision@1 for binary relevance.
    assert ndcg_at_k(TABLE, QUERY, 1, R) == pytest.approx(2 / 3)


def test_average_precision_over_full_ranking_by_hand():
    row0 = (1 / 2 + 2 / 3) / 2
    row1 = 1.0
    row2 = (1 / 1 + 2 / 3 + 3 / 4) / 3
    assert average_precision(TABLE, QUERY, R) == pytest.approx((row0 + row1 + row2) / 3)


def test_average_precision_needs_every_relevant_item():
    with pytest.raises(ConfigError, match="full ranking"):
        average_precision(TABLE[:, :2], QUERY, R)


def test_tables_narrower_than_r_are_refused():
    with pytest.raises(ConfigError, match="max\\(num_relevant\\) = 3"):
        map_at_r(TABLE[:, :2], QUERY, R)
    with pytest.raises(ConfigError, match="knn_labels"):
        r_precision(TABLE[:, :2], QUERY, R)


def test_only_lone_queries_give_nan():
    assert math.isnan(map_at_r(TABLE[3:], QUERY[3:], R[3:]))
    assert math.isnan(recall_at_k(TABLE[3:], QUERY[3:], 1, num_relevant=R[3:]))


def test_bad_arguments_name_the_field():
    with pytest.raises(ConfigError, match=r"^k: "):
        recall_at_k(TABLE, QUERY, 0)
    with pytest.raises(ConfigError, match="knn_labels"):
        recall_at_k(TABLE, QUERY[:2], 1)
    with pytest.raises(ConfigError, match="num_relevant"):
        map_at_r(TABLE, QUERY, R[:2])


def test_map_at_r_equals_r_precision_when_hits_come_first():
    # MAP@R <= R-precision, with equality when the relevant items within R lead the row.
    table = np.array([[0, 0, 1, 1], [1, 0, 0, 1]])
    q = np.array([0, 1])
    r = np.array([3, 2])
    assert map_at_r(table, q, r) == pytest.approx(((1 + 1) / 3 + 1 / 2) / 2)
    assert r_precision(table, q, r) == pytest.approx((2 / 3 + 1 / 2) / 2)
