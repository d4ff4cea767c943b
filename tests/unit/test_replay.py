"""Replay's session reconstruction must be the exact inverse of the offline case construction."""

from __future__ import annotations

import numpy as np
import pytest

from model.data import read_test_tsv, sessions_to_cases
from streams.replay import cases_to_sessions, session_events
from streams.settings import ROOT

DIGINETICA_TEST = ROOT.parent / "shared" / "data" / "diginetica" / "srgnn_split" / "test.tsv"


def _same_cases(a, b) -> bool:
    pa = [tuple(a.flat[s : s + n]) for s, n in zip(a.start, a.length, strict=True)]
    pb = [tuple(b.flat[s : s + n]) for s, n in zip(b.start, b.length, strict=True)]
    return pa == pb and np.array_equal(a.target, b.target)


def test_round_trip_on_hand_made_sessions() -> None:
    sessions = [[1, 2, 3], [4, 4], [5, 6, 5, 7]]
    assert cases_to_sessions(sessions_to_cases(sessions)) == sessions


def test_round_trip_on_the_diginetica_test_split() -> None:
    cases = read_test_tsv(DIGINETICA_TEST)
    sessions = cases_to_sessions(cases)
    assert _same_cases(sessions_to_cases(sessions), cases)
    assert sum(len(s) - 1 for s in sessions) == len(cases) == 60_858


def test_out_of_order_cases_are_refused() -> None:
    cases = sessions_to_cases([[1, 2, 3, 4]])
    shuffled = cases.subset(np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="prefix order"):
        cases_to_sessions(shuffled)


def test_events_are_deterministic_and_keyed_by_user() -> None:
    events = list(session_events([[10, 11], [12]], run="r"))
    assert [(e["user_id"], e["item_id"]) for e in events] == [("r-u0", "10"), ("r-u0", "11"), ("r-u1", "12")]
    assert events == list(session_events([[10, 11], [12]], run="r"))
    assert events[1]["ts"] > events[0]["ts"]
