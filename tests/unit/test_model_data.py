"""Readers: the shared split format, prefix expansion, and the SR-GNN preprocessing of raw logs."""

from pathlib import Path

import numpy as np
import pytest

from model.data import (
    Clicks,
    case_sessions,
    load_raw,
    preprocess_clicks,
    read_split,
    recency_oversampled,
    sessions_to_cases,
)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")


def test_prefix_expansion_order():
    c = sessions_to_cases([[1, 2, 3], [4], [5, 6]])
    assert c.prefixes() == [[1, 2], [1], [5]]
    np.testing.assert_array_equal(c.target, [3, 2, 6])
    np.testing.assert_array_equal(c.padded(np.array([0, 1, 2])), [[1, 2], [1, 0], [5, 0]])
    np.testing.assert_array_equal(c.padded(np.array([0]), max_len=1), [[2]])


def test_case_sessions_names_the_session_of_every_case_also_in_a_subset():
    sessions = [[1, 2, 3], [4], [], [5, 6], [7, 8, 9, 1]]
    cases = sessions_to_cases(sessions)
    np.testing.assert_array_equal(case_sessions(cases, sessions), [0, 0, 3, 4, 4, 4])
    np.testing.assert_array_equal(case_sessions(cases.subset(np.array([5, 2])), sessions), [4, 3])


def test_recency_oversampling_repeats_only_the_newest_sessions_cases():
    sessions = [[1, 2, 3], [4, 5], [6, 7], [8, 9, 1]]  # oldest first
    cases = sessions_to_cases(sessions)
    of_case = case_sessions(cases, sessions)
    epoch = recency_oversampled(of_case, len(sessions), fraction=0.5, repeats=3)
    counts = np.bincount(epoch, minlength=len(cases))
    np.testing.assert_array_equal(counts, np.where(of_case >= 2, 3, 1))
    np.testing.assert_array_equal(recency_oversampled(of_case, len(sessions), 0.0, 3), np.arange(len(cases)))
    np.testing.assert_array_equal(recency_oversampled(of_case, len(sessions), 0.5, 1), np.arange(len(cases)))


def test_split_reader_on_an_unseen_folder(tmp_path):
    (tmp_path / "train_sessions.txt").write_text("3 1\n2 2 4\n")
    (tmp_path / "test.tsv").write_text("1 2\t4\n7\t1\n")
    s = read_split(tmp_path)
    assert s.train == [[3, 1], [2, 2, 4]] and s.n_items == 7
    assert s.test.prefixes() == [[1, 2], [7]]
    np.testing.assert_array_equal(s.test.target, [4, 1])


@pytest.mark.skipif(not (DATA / "yoochoose1_64").exists(), reason="shared data not mounted")
def test_real_split_counts():
    s = read_split(DATA / "yoochoose1_64" / "srgnn_split")
    assert len(s.train) == 116_167 and len(s.test) == 55_898
    assert len(sessions_to_cases(s.train)) == 369_859  # SOURCE.md: SR-GNN's train pair count
    assert s.test.prefixes()[:3] == [[33611, 37169, 6409], [33611, 37169], [33611]]


def _clicks(rows):
    """rows: (session, item, day) -> Clicks with clicks ordered as given."""
    day = np.array([r[2] * 86_400.0 for r in rows])
    return Clicks([r[0] for r in rows], [r[1] for r in rows], day + np.arange(len(rows)), day)


def test_srgnn_preprocessing_rules():
    rows = []
    for d in range(5):                                              # days 0..4: a, b (+ rare twice)
        rows += [(f"s{d}", "a", d), (f"s{d}", "b", d)] + ([(f"s{d}", "rare", d)] if d < 2 else [])
    rows += [("single", "a", 1)]                                    # length 1: dropped before counting
    rows += [("c1", "c", 2), ("c1", "c", 2)]                        # c seen twice: dropped
    rows += [("t1", "b", 10), ("t1", "d", 10), ("t1", "a", 10)]     # d is never in train: dropped
    rows += [("t2", "rare", 10), ("t2", "a", 10)]                   # rare (3 < 5) dropped -> length 1
    rows += [("t3", "d", 10)] * 5 + [("t3", "b", 10)]               # only b left -> length 1
    split = preprocess_clicks(_clicks(rows), test_days=7)
    # Boundary = day 3: train = days 0..2, day 3 is in neither set, day 4 and day 10 are test.
    assert split.train == [[1, 2], [1, 2], [1, 2]]
    assert split.item_vocab == ["a", "b"] and split.n_items == 2
    assert split.test.prefixes() == [[1], [2]]
    np.testing.assert_array_equal(split.test.target, [2, 1])


@pytest.mark.skipif(not (DATA / "diginetica" / "raw_sample").exists(), reason="shared data not mounted")
def test_raw_samples():
    dig = load_raw(next((DATA / "diginetica" / "raw_sample").iterdir()), "diginetica")
    yoo = load_raw(next((DATA / "yoochoose1_64" / "raw_sample").iterdir()), "yoochoose")
    rr = load_raw(DATA / "retailrocket" / "raw_sample" / "sample_retailrocket.csv", "csv",
                  item="item_id", time="timestamp", session="session_id", user="user_id")
    for split in (dig, yoo, rr):
        assert split.train and len(split.test) > 0
        flat = [i for s in split.train for i in s]
        assert min(flat) == 1 and max(flat) == split.n_items
        # ids are in order of first appearance in train
        first = list(dict.fromkeys(flat))
        assert first == list(range(1, split.n_items + 1))
        assert all(len(s) >= 2 for s in split.train)
        assert split.test.target.max() <= split.n_items and split.test.flat.min() >= 1
    assert (dig.n_items, len(dig.train), len(dig.test)) == (309, 469, 99)
