"""Metrics on hand-made score rows: pessimistic ties, padding column, HR/MRR/NDCG values."""

import math

import numpy as np
import pytest

from model.metrics import RankAccumulator, metrics_from_ranks, target_ranks


def test_ties_count_against_the_target():
    scores = np.array([
        [9.0, 1.0, 5.0, 5.0, 5.0],   # target 2 ties with items 3, 4 -> rank 3
        [0.0, 3.0, 2.0, 1.0, 0.5],   # target 1 strictly best -> rank 1
        [100.0, 1.0, 1.0, 1.0, 1.0],  # all equal -> last (4), padding column 0 ignored
    ])
    np.testing.assert_array_equal(target_ranks(scores, np.array([2, 1, 4])), [3, 1, 4])


def test_metric_values():
    m = metrics_from_ranks(np.array([1, 3, 15, 25]), ks=(10, 20))
    assert m["HR@10"] == pytest.approx(50.0)
    assert m["HR@20"] == pytest.approx(75.0)
    assert m["MRR@10"] == pytest.approx(100 * (1 + 1 / 3) / 4)
    assert m["MRR@20"] == pytest.approx(100 * (1 + 1 / 3 + 1 / 15) / 4)
    assert m["NDCG@20"] == pytest.approx(100 * (1 + 1 / math.log2(4) + 1 / math.log2(16)) / 4)


def test_accumulator_and_bad_targets():
    acc = RankAccumulator()
    acc.add(np.array([[0.0, 1.0, 2.0]]), np.array([2]))
    acc.add(np.array([[0.0, 1.0, 2.0]]), np.array([1]))
    res = acc.result()
    assert res["HR@10"] == 100.0 and res["MRR@10"] == pytest.approx(75.0) and res["cases"] == 2
    with pytest.raises(ValueError):
        target_ranks(np.zeros((1, 3)), np.array([0]))
