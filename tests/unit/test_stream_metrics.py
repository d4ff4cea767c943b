"""Ranks from served top-K lists agree with full-ranking metrics (the basis of stream evaluation)."""

from __future__ import annotations

import numpy as np

from model.metrics import metrics_from_ranks, ranks_from_top_k, target_ranks


def test_top_k_ranks_equal_full_ranks_inside_k_and_miss_outside() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(500, 300)).astype(np.float32)
    scores[:, 0] = -np.inf
    targets = rng.integers(1, 300, size=500)
    k = 20
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    full = target_ranks(scores, targets)
    served = ranks_from_top_k(top, top_scores, targets)
    assert np.array_equal(np.minimum(full, k + 1), served)
    assert metrics_from_ranks(full) == metrics_from_ranks(served)


def test_ties_count_against_the_target_and_empty_slots_never_count() -> None:
    top = np.array([[5, 7, 9, 0], [5, 7, 9, 0]])
    scores = np.array([[3.0, 2.0, 2.0, 0.0], [3.0, 2.0, 2.0, 0.0]])
    assert ranks_from_top_k(top, scores, np.array([9, 0 + 4])).tolist() == [3, 5]


def test_join_pairs_each_recommendation_with_the_next_click_of_its_session() -> None:
    from streams.evaluate_stream import case_metrics, join_cases

    events = [{"event_id": f"e{i}", "item_id": item} for i, item in enumerate(["a", "b", "c", "x", "y"])]
    recs = [
        {"event_id": "e0", "session_id": "s1", "position": 0, "items": ["b", "z"], "scores": [2.0, 1.0]},
        {"event_id": "e1", "session_id": "s1", "position": 1, "items": ["z", "c"], "scores": [2.0, 1.0]},
        {"event_id": "e1", "session_id": "s1", "position": 1, "items": ["z", "c"], "scores": [2.0, 1.0]},
        {"event_id": "e2", "session_id": "s1", "position": 2, "items": ["a"], "scores": [1.0]},
        {"event_id": "e3", "session_id": "s2", "position": 0, "items": ["q"], "scores": [1.0]},
        {"event_id": "e4", "session_id": "s2", "position": 1, "items": ["x"], "scores": [1.0]},
    ]
    cases = join_cases(events, recs)
    assert [(c.event_id, c.target) for c in cases] == [("e0", "b"), ("e1", "c"), ("e3", "y")]
    metrics = case_metrics(cases)
    assert metrics["cases"] == 3
    assert metrics["HR@20"] == 100 * 2 / 3
    assert abs(metrics["MRR@20"] - 100 * (1 + 1 / 2) / 3) < 1e-9
