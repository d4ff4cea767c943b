"""Per-user session state and how one event changes it (pure Python; the worker keeps it in a faust Table).

A user's state is a JSON-able dict: the current session (its id, number, length, last timestamp, and its
last ``max_current`` clicks with the source offset of each), the last ``max_sessions`` earlier sessions
(clicks, offsets, ids, lengths), and the last applied offset per source partition.

Items are kept as external ids, so a new model with a new vocabulary reads the same state, and items the
model does not know stay in the session. Applying an event is idempotent: a user's events all come from
one partition in order, so an event at or below the last applied offset is a re-delivery (after a crash,
before the consumer committed). It does not change the state; its step is rebuilt from the stored offsets,
so the recommendation re-emitted for it is computed on exactly the prefix the first delivery saw.

The worker stores a state as JSON bytes and reads it back through :func:`read_state`, which checks its shape:
a state that cannot be read (damaged, or written by an incompatible version) raises :class:`UnreadableState`
instead of failing somewhere inside the worker on every delivery of that user's events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from streams.records import Event, Refusal


@dataclass(frozen=True)
class SessionPolicy:
    """Where sessions end and how much of them is kept."""

    gap_s: float = 30 * 60.0
    max_current: int = 200
    max_sessions: int = 5
    max_history_len: int = 50
    max_session_events: int = 10_000


@dataclass(frozen=True)
class Step:
    """What one event did: its session, its position there, and the clicks up to and including it.

    ``applied`` is False for a re-delivered event; ``found`` is False when its clicks have since left the
    bounded state (then ``current`` is empty and the event cannot be scored again).
    """

    applied: bool
    found: bool
    new_session: bool
    session_id: str
    position: int
    current: list[str]
    history: list[list[str]]
    previous_item: str | None


class OversizedSession(Refusal):
    """The session already has ``max_session_events`` events (a bot or a stuck producer)."""

    code = "oversized_session"


class UnreadableState(Refusal):
    """A stored user state is not JSON or not a state of this layout; ``str(error)`` says what is wrong."""

    code = "user_state_unreadable"


def empty_state() -> dict[str, Any]:
    return {
        "session_id": None,
        "session_no": 0,
        "last_ts": None,
        "length": 0,
        "current": [],
        "current_offsets": [],
        "history": [],
        "history_offsets": [],
        "history_ids": [],
        "history_lengths": [],
        "offsets": {},
    }


def read_state(raw: bytes | None) -> dict[str, Any] | None:
    """The state stored as ``raw`` (None: the user has none yet), checked to be one :func:`apply_event` and the
    worker can use: every field present with its type, parallel lists of equal lengths, items as strings and
    offsets and lengths as numbers. Raises :class:`UnreadableState` with the first problem found."""
    if raw is None:
        return None
    try:
        state = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise UnreadableState(f"not JSON: {error}") from None
    problem = _problem(state)
    if problem is not None:
        raise UnreadableState(problem)
    return state


def applied_offsets(raw: bytes | None) -> dict[str, int] | None:
    """The last applied source offset per partition of the state stored as ``raw``; None where there is none
    to read. A state with offsets no higher anywhere than another's, and lower somewhere, is an earlier version
    of the same user's state (:func:`streams.changelog.superseded`). Only the offsets are checked: this runs
    for every message of a changelog replay, and the worker checks the whole state when it reads it."""
    if raw is None:
        return None
    try:
        state = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    offsets = state.get("offsets") if isinstance(state, dict) else None
    return offsets if isinstance(offsets, dict) and _numbers(offsets.values()) else None


def _problem(state: Any) -> str | None:
    """What makes ``state`` unusable, or None."""
    if not isinstance(state, dict):
        return f"expected an object, got {type(state).__name__}"
    missing = _FIELDS - state.keys()
    if missing:
        return f"missing {', '.join(sorted(missing))}"
    if not all(type(state[name]) is list for name in _LISTS) or type(state["offsets"]) is not dict:
        return f"{', '.join(_LISTS)} must be lists and offsets an object"
    if type(state["session_no"]) is not int or type(state["length"]) is not int:
        return "session_no and length must be integers"
    if not (state["session_id"] is None or type(state["session_id"]) is str):
        return "session_id must be a string or null"
    if not (state["last_ts"] is None or type(state["last_ts"]) in (int, float)):
        return "last_ts must be a number or null"
    if not _numbers(state["offsets"].values()):
        return "offsets must map partitions to numbers"
    if not (_strings(state["current"]) and _numbers(state["current_offsets"])) or len(state["current"]) != len(
        state["current_offsets"]
    ):
        return "current and current_offsets must be as many strings as numbers"
    history, history_offsets = state["history"], state["history_offsets"]
    if not len(history) == len(history_offsets) == len(state["history_ids"]) == len(state["history_lengths"]):
        return "history, history_offsets, history_ids and history_lengths must be equally long"
    for session, offsets in zip(history, history_offsets, strict=True):
        if type(session) is not list or type(offsets) is not list or len(session) != len(offsets):
            return "each history session must be a list of clicks with a list of as many offsets"
        if not (_strings(session) and _numbers(offsets)):
            return "history clicks must be strings and their offsets numbers"
    if not (_strings(state["history_ids"]) and _numbers(state["history_lengths"])):
        return "history_ids must be strings and history_lengths numbers"
    return None


def _strings(values: Any) -> bool:
    """Whether every value is a string. ``str.join`` takes only strings and checks them in C, several times
    faster than a Python loop: a full state has about 450 clicks, and every event reads its user's state."""
    try:
        "".join(values)
    except TypeError:
        return False
    return True


def _numbers(values: Any) -> bool:
    """Whether every value is a number (``sum`` checks them in C, as :func:`_strings` does strings)."""
    try:
        sum(values)
    except TypeError:
        return False
    return True


_FIELDS = frozenset(empty_state())
_LISTS = ("current", "current_offsets", "history", "history_offsets", "history_ids", "history_lengths")


def apply_event(
    state: dict[str, Any] | None, event: Event, partition: int, offset: int, policy: SessionPolicy
) -> tuple[dict[str, Any], Step]:
    """Apply ``event`` (read from ``partition`` at ``offset``) to a user's ``state``.

    Returns the new state (a new dict; the input is not modified) and the step.
    Raises :class:`OversizedSession` when the session is full; the state is then unchanged.
    """
    state = empty_state() if state is None else state
    if offset <= state["offsets"].get(str(partition), -1):
        return state, replayed_step(state, offset)
    new_session = _starts_session(state, event, policy)
    if new_session:
        state = _close_session(state, policy)
        state["session_no"] += 1
        state["session_id"] = event.session_id or f"{event.user_id}#{state['session_no']}"
    elif state["length"] >= policy.max_session_events:
        raise OversizedSession(
            f"session {state['session_id']} already has {state['length']} events (max {policy.max_session_events})"
        )
    else:
        state = dict(state)
    previous = state["current"][-1] if state["current"] else None
    state["current"] = [*state["current"], event.item_id][-policy.max_current :]
    state["current_offsets"] = [*state["current_offsets"], offset][-policy.max_current :]
    state["length"] += 1
    state["last_ts"] = event.ts
    state["offsets"] = {**state["offsets"], str(partition): offset}
    step = Step(
        applied=True,
        found=True,
        new_session=new_session,
        session_id=state["session_id"],
        position=state["length"] - 1,
        current=list(state["current"]),
        history=[list(s) for s in state["history"]],
        previous_item=previous,
    )
    return state, step


def _starts_session(state: dict[str, Any], event: Event, policy: SessionPolicy) -> bool:
    if state["session_id"] is None:
        return True
    if event.session_id is not None:
        return event.session_id != state["session_id"]
    return state["last_ts"] is not None and event.ts - state["last_ts"] > policy.gap_s


def _close_session(state: dict[str, Any], policy: SessionPolicy) -> dict[str, Any]:
    """Move the current session into the (bounded) history and start an empty one."""
    keep, cut = policy.max_sessions, policy.max_history_len
    closed = dict(state)
    if state["current"]:
        closed["history"] = [*state["history"], state["current"][-cut:]][-keep:]
        closed["history_offsets"] = [*state["history_offsets"], state["current_offsets"][-cut:]][-keep:]
        closed["history_ids"] = [*state["history_ids"], state["session_id"]][-keep:]
        closed["history_lengths"] = [*state["history_lengths"], state["length"]][-keep:]
    closed |= {"current": [], "current_offsets": [], "length": 0}
    return closed


def replayed_step(state: dict[str, Any], offset: int) -> Step:
    """The step of an already applied event, rebuilt from the stored offsets of its session."""
    if offset in state["current_offsets"]:
        index = state["current_offsets"].index(offset)
        first = state["length"] - len(state["current"])
        return Step(
            False,
            True,
            False,
            state["session_id"],
            first + index,
            state["current"][: index + 1],
            [list(s) for s in state["history"]],
            state["current"][index - 1] if index else None,
        )
    for j in range(len(state["history"]) - 1, -1, -1):
        if offset in state["history_offsets"][j]:
            index = state["history_offsets"][j].index(offset)
            session = state["history"][j]
            first = state["history_lengths"][j] - len(session)
            return Step(
                False,
                True,
                False,
                state["history_ids"][j],
                first + index,
                session[: index + 1],
                [list(s) for s in state["history"][:j]],
                session[index - 1] if index else None,
            )
    return Step(False, False, False, state["session_id"] or "", -1, [], [], None)
