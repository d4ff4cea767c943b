"""POP and SKNN baselines on hand-computed examples."""

import numpy as np
import pytest

from model.baselines import SessionKNN, evaluate_baseline
from model.data import SessionSplit, sessions_to_cases


def test_sknn_scores_are_summed_cosine_similarities():
    knn = SessionKNN([[1, 2, 3], [1, 4], [5, 6]], n_items=6, k=10, sample=10)
    out = np.zeros(7)
    knn.scores(np.array([1]), out)
    s0, s1 = 1 / np.sqrt(3), 1 / np.sqrt(2)
    np.testing.assert_allclose(out, [0, s0 + s1, s0, s0, s1, 0, 0])


def test_sknn_keeps_only_k_most_similar_and_most_recent_sample():
    knn = SessionKNN([[1, 2], [1, 3, 4, 5], [1, 6]], n_items=6, k=1, sample=2)
    out = np.zeros(7)
    knn.scores(np.array([1]), out)
    # sample=2 keeps sessions 1 and 2; k=1 keeps session 2 (similarity 1/sqrt(2) > 1/2).
    assert out[6] == pytest.approx(1 / np.sqrt(2)) and out[2] == 0 and out[3] == 0


def test_pop_ties_are_pessimistic():
    split = SessionSplit(train=[[1, 2], [2, 3], [3, 1]], test=sessions_to_cases([[1, 2]]), n_items=3)
    # All items have count 2: the target ties with the two others and ranks 3rd.
    res = evaluate_baseline("pop", split)
    assert res["MRR@10"] == pytest.approx(100 / 3)
