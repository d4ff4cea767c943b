"""Session datasets: the text split format of ``shared/data`` and raw click logs (SR-GNN preprocessing).

Everything here is numpy + the standard library: the stream worker and tests import it without torch.

A dataset is a :class:`SessionSplit`: training sessions (lists of item ids 1..N in click order) and test
:class:`Cases` (prefix -> next item). Cases are stored flat (CSR style) so that a batch of prefixes is
gathered into a padded ``[B, L]`` array with one fancy-indexing call instead of a Python loop.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class Cases:
    """Prefix -> next-item cases, stored flat.

    Case ``c`` is the prefix ``flat[start[c] : start[c] + length[c]]`` with target ``target[c]``.
    Training cases share storage with their session (every prefix of a session points into the same
    slice), so 719k Diginetica cases cost one copy of the 906k clicks.

    Attributes:
        flat: int64 [T] item ids.
        start: int64 [C] offset of each prefix in ``flat``.
        length: int64 [C] prefix length (>= 1).
        target: int64 [C] next item id (>= 1).
    """

    flat: np.ndarray
    start: np.ndarray
    length: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def subset(self, index: np.ndarray) -> Cases:
        """Cases selected by ``index`` (shares ``flat``)."""
        return Cases(self.flat, self.start[index], self.length[index], self.target[index])

    def padded(self, index: np.ndarray, max_len: int | None = None) -> np.ndarray:
        """Prefixes of the cases ``index`` as a left-aligned, 0-padded int64 array ``[B, L]``.

        ``L`` is the longest selected prefix, capped at ``max_len``; longer prefixes keep their last
        ``max_len`` clicks (the most recent ones matter most for the next item).
        """
        length = self.length[index]
        start = self.start[index]
        width = int(length.max()) if length.size else 1
        if max_len is not None and width > max_len:
            start = start + np.maximum(length - max_len, 0)
            length = np.minimum(length, max_len)
            width = max_len
        cols = np.arange(width)
        valid = cols[None, :] < length[:, None]
        pos = np.where(valid, start[:, None] + cols[None, :], 0)
        return np.where(valid, self.flat[pos], 0)

    def prefixes(self) -> list[list[int]]:
        """All prefixes as Python lists (slow; for tests and small data)."""
        return [self.flat[s : s + n].tolist() for s, n in zip(self.start, self.length, strict=True)]


@dataclass
class SessionSplit:
    """A train/test split of sessions over items ``1..n_items`` (0 is padding).

    Attributes:
        train: training sessions in chronological order, each a list of item ids.
        test: test cases (prefix -> next item).
        n_items: the largest item id (scores are produced for ids ``0..n_items``; 0 is never a candidate).
        item_vocab: raw item id of item ``i`` at position ``i - 1``, when built from a raw log.
        name: a label for reports.
    """

    train: list[list[int]]
    test: Cases
    n_items: int
    item_vocab: list[str] | None = None
    name: str = ""
    train_users: list[str] | None = field(default=None, repr=False)


def sessions_to_cases(sessions: Sequence[Sequence[int]]) -> Cases:
    """Every prefix of every session as a case, in the SR-GNN order.

    For a session ``s`` the cases are ``s[:-1] -> s[-1]``, ``s[:-2] -> s[-2]``, ... ``s[:1] -> s[1]``
    (longest prefix first), which is how the published ``test.txt`` / ``train.txt`` files were made.
    """
    lengths = np.fromiter((len(s) for s in sessions), dtype=np.int64, count=len(sessions))
    flat = np.fromiter((i for s in sessions for i in s), dtype=np.int64, count=int(lengths.sum()))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    n_cases = np.maximum(lengths - 1, 0)
    session_of_case = np.repeat(np.arange(len(sessions)), n_cases)
    first_case = np.concatenate([[0], np.cumsum(n_cases)[:-1]]).astype(np.int64)
    k = np.arange(int(n_cases.sum())) - np.repeat(first_case, n_cases)
    prefix_len = lengths[session_of_case] - 1 - k
    start = offsets[session_of_case]
    target = flat[start + prefix_len]
    return Cases(flat, start, prefix_len, target)


def case_sessions(cases: Cases, sessions: Sequence[Sequence[int]]) -> np.ndarray:
    """Index (into ``sessions``) of the session each case comes from, int64 [C], for cases made by
    :func:`sessions_to_cases` from ``sessions`` (or a subset of them): a case's prefix starts where its
    session starts in ``flat``."""
    lengths = np.fromiter((len(s) for s in sessions), dtype=np.int64, count=len(sessions))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return np.searchsorted(offsets, cases.start, side="right") - 1


def _read_sessions_txt(path: Path) -> list[list[int]]:
    with path.open() as f:
        return [[int(t) for t in line.split()] for line in f if line.strip()]


def read_test_tsv(path: Path) -> Cases:
    """Read ``prefix ids<TAB>next item`` lines into :class:`Cases`."""
    prefixes: list[list[int]] = []
    targets: list[int] = []
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            left, sep, right = line.rstrip("\n").partition("\t")
            if not sep:
                raise ValueError(f"{path}:{line_no}: expected 'prefix<TAB>target'")
            prefixes.append([int(t) for t in left.split()])
            targets.append(int(right))
    lengths = np.array([len(p) for p in prefixes], dtype=np.int64)
    if (lengths < 1).any():
        raise ValueError(f"{path}: empty prefix")
    flat = np.fromiter((i for p in prefixes for i in p), dtype=np.int64, count=int(lengths.sum()))
    start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return Cases(flat, start, lengths, np.array(targets, dtype=np.int64))


def read_split(folder: str | Path, name: str | None = None) -> SessionSplit:
    """Read a folder in the shared text format (``train_sessions.txt`` + ``test.tsv``).

    ``n_items`` is the largest id seen in train or test, so a folder never seen before just works.
    """
    folder = Path(folder)
    train = _read_sessions_txt(folder / "train_sessions.txt")
    test = read_test_tsv(folder / "test.tsv")
    max_train = max((max(s) for s in train if s), default=0)
    max_test = max(int(test.flat.max(initial=0)), int(test.target.max(initial=0)))
    n_items = max(max_train, max_test)
    if min((min(s) for s in train if s), default=1) < 1 or int(test.flat.min(initial=1)) < 1:
        raise ValueError(f"{folder}: item ids must be >= 1 (0 is padding)")
    return SessionSplit(train=train, test=test, n_items=n_items, name=name or folder.parent.name)


# ----------------------------------------------------------------------------------------- raw click logs


@dataclass
class Clicks:
    """A raw click log, one row per click, in file order.

    Attributes:
        session: session key per click (str).
        item: raw item id per click (str).
        time: seconds since the epoch (UTC) used to order clicks inside a session.
        day_time: seconds since the epoch of the click's date/time used for the test split.
        user: raw user id per click, or None when the log has none.
    """

    session: list[str]
    item: list[str]
    time: np.ndarray
    day_time: np.ndarray
    user: list[str] | None = None


def _parse_time(value: str) -> float:
    """Epoch seconds from an ISO date/time (``2014-04-06T20:21:58.444Z``, ``2016-05-09``) or a number.

    Numbers above 1e11 are taken as milliseconds.
    """
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        text = value.replace("Z", "+00:00")
        stamp = dt.datetime.fromisoformat(text)
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        return stamp.timestamp()
    return number / 1000.0 if number > 1e11 else number


def read_diginetica_clicks(path: str | Path) -> Clicks:
    """Diginetica ``train-item-views.csv``: ``sessionId;userId;itemId;timeframe;eventdate`` (header).

    Accepts the camelCase header of the official file and the snake_case header of the SR-GNN sample.
    Clicks are ordered by ``timeframe`` inside a session; the split uses ``eventdate``.
    """
    aliases = {"sessionid": "session", "session_id": "session", "userid": "user", "user_id": "user",
               "itemid": "item", "item_id": "item", "timeframe": "timeframe", "eventdate": "eventdate"}
    session, item, user, frame, date = [], [], [], [], []
    with Path(path).open(newline="") as f:
        reader = csv.reader(f, delimiter=";")
        header = [aliases.get(h.strip().lower(), h) for h in next(reader)]
        col = {h: i for i, h in enumerate(header)}
        missing = {"session", "item", "timeframe", "eventdate"} - col.keys()
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        for row in reader:
            if not row:
                continue
            session.append(row[col["session"]])
            item.append(row[col["item"]])
            user.append(row[col["user"]] if "user" in col else "NA")
            frame.append(float(row[col["timeframe"]]))
            date.append(_parse_time(row[col["eventdate"]]))
    day = np.array(date, dtype=np.float64)
    return Clicks(session, item, day + np.array(frame) / 1e9, day, user)


def read_yoochoose_clicks(path: str | Path) -> Clicks:
    """Yoochoose ``yoochoose-clicks.dat``: ``session,timestamp,item,category`` without a header."""
    session, item, stamp = [], [], []
    with Path(path).open(newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            session.append(row[0])
            stamp.append(_parse_time(row[1]))
            item.append(row[2])
    t = np.array(stamp, dtype=np.float64)
    return Clicks(session, item, t, t)


def read_csv_clicks(path: str | Path, *, item: str, time: str, session: str | None = None,
                    user: str | None = None, delimiter: str | None = None,
                    gap_seconds: float = 1800.0) -> Clicks:
    """A generic click log with a header naming its columns.

    Without a ``session`` column, sessions are cut per user at inactivity gaps longer than
    ``gap_seconds`` (default 30 min, as in ARCHITECTURE.md). ``delimiter`` is sniffed when omitted.
    """
    with Path(path).open(newline="") as f:
        sample = f.read(4096)
        f.seek(0)
        if delimiter is None:
            delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
        reader = csv.DictReader(f, delimiter=delimiter)
        rows = [r for r in reader if r.get(item)]
    if session is None and user is None:
        raise ValueError("need a session column or a user column to cut sessions")
    items = [r[item] for r in rows]
    t = np.array([_parse_time(r[time]) for r in rows], dtype=np.float64)
    users = [r[user] for r in rows] if user else None
    sessions = ([r[session] for r in rows] if session is not None
                else _sessions_by_gap(users or [], t, gap_seconds))
    return Clicks(sessions, items, t, t, users)


def _sessions_by_gap(users: list[str], t: np.ndarray, gap_seconds: float) -> list[str]:
    """Session keys ``user#n``: a new session starts when a user's next click is > gap after the last."""
    order = sorted(range(len(users)), key=lambda i: (users[i], t[i]))
    keys = [""] * len(users)
    prev_user, prev_t, n = None, 0.0, 0
    for i in order:
        if users[i] != prev_user or t[i] - prev_t > gap_seconds:
            n = n + 1 if users[i] == prev_user else 0
        keys[i] = f"{users[i]}#{n}"
        prev_user, prev_t = users[i], t[i]
    return keys


def preprocess_clicks(clicks: Clicks, test_days: float, *, min_item_count: int = 5,
                      name: str = "", train_fraction: float = 1.0) -> SessionSplit:
    """The SR-GNN preprocessing (``datasets/preprocess.py`` of CRIPAC-DIG/SR-GNN), re-implemented.

    1. group clicks by session, order them by time; a session's date is its latest click's date;
    2. drop sessions of length 1; count items over what is left; drop items seen fewer than
       ``min_item_count`` times; drop sessions left shorter than 2;
    3. test = sessions dated strictly after ``max date - test_days``; train = strictly before (a session
       dated exactly on the boundary is in neither, as in the original script); both sorted by date;
    4. items renumbered ``1..N`` in order of first appearance in the (date-sorted) train sessions; test
       clicks on items unseen in train are dropped, then test sessions shorter than 2 are dropped;
    5. every prefix of a test session is a case (:func:`sessions_to_cases`).

    ``train_fraction`` keeps only the most recent fraction of training sessions (Yoochoose 1/64), after
    renumbering, as SR-GNN did.
    """
    by_session: dict[str, list[int]] = {}
    for i, key in enumerate(clicks.session):
        by_session.setdefault(key, []).append(i)
    sessions: dict[str, list[str]] = {}
    dates: dict[str, float] = {}
    users: dict[str, str] = {}
    for key, rows in by_session.items():
        rows.sort(key=lambda r: clicks.time[r])
        sessions[key] = [clicks.item[r] for r in rows]
        dates[key] = float(max(clicks.day_time[r] for r in rows))
        if clicks.user is not None:
            users[key] = clicks.user[rows[-1]]
    sessions = {k: s for k, s in sessions.items() if len(s) > 1}
    counts: dict[str, int] = {}
    for s in sessions.values():
        for it in s:
            counts[it] = counts.get(it, 0) + 1
    kept: dict[str, list[str]] = {}
    for k, s in sessions.items():
        filtered = [it for it in s if counts[it] >= min_item_count]
        if len(filtered) >= 2:
            kept[k] = filtered
    if not kept:
        return SessionSplit([], sessions_to_cases([]), 0, [], name)
    max_date = max(dates[k] for k in kept)
    split_date = max_date - test_days * SECONDS_PER_DAY
    train_keys = sorted((k for k in kept if dates[k] < split_date), key=lambda k: dates[k])
    test_keys = sorted((k for k in kept if dates[k] > split_date), key=lambda k: dates[k])
    vocab: dict[str, int] = {}
    train: list[list[int]] = []
    for k in train_keys:
        train.append([vocab.setdefault(it, len(vocab) + 1) for it in kept[k]])
    test_sessions = []
    for k in test_keys:
        ids = [vocab[it] for it in kept[k] if it in vocab]
        if len(ids) >= 2:
            test_sessions.append(ids)
    if train_fraction < 1.0:
        n_keep = max(1, int(len(train) * train_fraction))
        train_keys, train = train_keys[-n_keep:], train[-n_keep:]
    return SessionSplit(
        train=train,
        test=sessions_to_cases(test_sessions),
        n_items=len(vocab),
        item_vocab=list(vocab),
        name=name,
        train_users=[users[k] for k in train_keys] if users else None,
    )


def load_raw(path: str | Path, fmt: str, **kwargs) -> SessionSplit:
    """Read and preprocess a raw log. ``fmt``: ``diginetica`` (7 test days), ``yoochoose`` (1 test day)
    or ``csv`` (named columns via ``kwargs``: item, time, session, user, delimiter). Also accepts
    ``test_days`` and ``train_fraction`` (1/64 for Yoochoose 1/64), see :func:`preprocess_clicks`."""
    test_days = kwargs.pop("test_days", None)
    fraction = kwargs.pop("train_fraction", 1.0)
    if fmt == "diginetica":
        clicks, days, name = read_diginetica_clicks(path), test_days or 7, "diginetica-raw"
    elif fmt == "yoochoose":
        clicks, days, name = read_yoochoose_clicks(path), test_days or 1, "yoochoose-raw"
    elif fmt == "csv":
        clicks, days, name = read_csv_clicks(path, **kwargs), test_days or 1, Path(path).stem
    else:
        raise ValueError(f"unknown raw format {fmt!r}")
    return preprocess_clicks(clicks, days, name=name, train_fraction=fraction)


def split_validation(sessions: Sequence[Sequence[int]], fraction: float) -> tuple[list, list]:
    """Split training sessions into (fit, validation): the validation slice is the most recent
    ``fraction`` of sessions, mimicking the time-based test split."""
    n_val = round(len(sessions) * fraction)
    if n_val <= 0:
        return list(sessions), []
    return list(sessions[:-n_val]), list(sessions[-n_val:])


def recency_oversampled(case_session: np.ndarray, n_sessions: int, fraction: float, repeats: int) -> np.ndarray:
    """Case indices of one training epoch: every case once, and the cases of the newest ``fraction`` of the
    ``n_sessions`` sessions ``repeats`` times in all.

    Sessions are in time order and the test period follows the training period, so the newest sessions are
    the closest to it (refitting with the newest 2 % added gained 0.66 HR@20 on Diginetica).
    ``case_session`` is each case's session index (:func:`case_sessions`)."""
    everything = np.arange(len(case_session))
    if fraction <= 0 or repeats <= 1:
        return everything
    recent = everything[case_session >= n_sessions - round(n_sessions * fraction)]
    return np.concatenate([everything, *([recent] * (repeats - 1))])


def item_counts(sessions: Iterable[Sequence[int]], n_items: int) -> np.ndarray:
    """Click count per item id, int64 ``[n_items + 1]`` (index 0 stays 0)."""
    flat = np.fromiter((i for s in sessions for i in s), dtype=np.int64)
    return np.bincount(flat, minlength=n_items + 1)[: n_items + 1]
