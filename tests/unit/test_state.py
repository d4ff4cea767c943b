"""Session state: boundaries, bounds, idempotent re-delivery with the exact original prefix."""

from __future__ import annotations

import orjson
import pytest

from streams.records import Event
from streams.state import OversizedSession, SessionPolicy, UnreadableState, apply_event, read_state

POLICY = SessionPolicy(gap_s=100.0, max_current=3, max_sessions=2, max_history_len=2, max_session_events=5)


def ev(item: str, ts: float, session: str | None = None, user: str = "u") -> Event:
    return Event(
        schema_version=1, event_id=f"{user}-{item}-{ts}", user_id=user, item_id=item, ts=ts, session_id=session
    )


def run(events: list[Event], policy: SessionPolicy = POLICY):
    state, steps = None, []
    for offset, event in enumerate(events):
        state, step = apply_event(state, event, partition=0, offset=offset, policy=policy)
        steps.append(step)
    return state, steps


def test_inactivity_gap_starts_a_new_session_and_moves_the_old_one_to_history() -> None:
    _, steps = run([ev("a", 0), ev("b", 50), ev("c", 200), ev("d", 250)])
    assert [s.new_session for s in steps] == [True, False, True, False]
    assert [s.position for s in steps] == [0, 1, 0, 1]
    assert steps[1].current == ["a", "b"] and steps[1].previous_item == "a"
    assert steps[3].current == ["c", "d"] and steps[3].history == [["a", "b"]]
    assert steps[2].previous_item is None, "no transition across sessions"
    assert steps[0].session_id == "u#1" and steps[2].session_id == "u#2"


def test_explicit_session_ids_win_over_the_gap() -> None:
    _, steps = run([ev("a", 0, "s1"), ev("b", 10_000, "s1"), ev("c", 10_001, "s2")])
    assert [s.session_id for s in steps] == ["s1", "s1", "s2"]
    assert [s.new_session for s in steps] == [True, False, True]


def test_state_is_bounded() -> None:
    state, steps = run([ev(x, i) for i, x in enumerate("abcd")] + [ev("e", 500), ev("f", 1000), ev("g", 2000)])
    assert steps[3].current == ["b", "c", "d"] and steps[3].position == 3, "last max_current clicks, true position"
    assert state["history"] == [["e"], ["f"]], "at most max_sessions earlier sessions"
    assert run([ev(x, i) for i, x in enumerate("abcd")] + [ev("z", 900)])[0]["history"] == [["c", "d"]]


def test_oversized_session_is_refused_without_changing_state() -> None:
    state, _ = run([ev(str(i), i) for i in range(5)])
    with pytest.raises(OversizedSession, match="already has 5 events"):
        apply_event(state, ev("x", 6), 0, 5, POLICY)


def test_redelivery_changes_nothing_and_rebuilds_the_original_prefix() -> None:
    roomy = SessionPolicy(gap_s=100.0, max_current=5, max_sessions=3, max_history_len=5)
    events = [ev("a", 0), ev("b", 1), ev("c", 2), ev("d", 500), ev("e", 501)]
    state, steps = run(events, roomy)
    for offset in range(len(events)):
        again, step = apply_event(state, events[offset], 0, offset, roomy)
        assert again == state
        assert not step.applied and step.found
        original = steps[offset]
        assert (step.current, step.history, step.session_id, step.position) == (
            original.current,
            original.history,
            original.session_id,
            original.position,
        )


def test_input_state_is_not_mutated() -> None:
    state, _ = run([ev("a", 0)])
    snapshot = repr(state)
    apply_event(state, ev("b", 1), 0, 1, POLICY)
    apply_event(state, ev("c", 900), 0, 1, POLICY)
    assert repr(state) == snapshot


def test_redelivery_of_a_click_that_left_the_bounded_state_is_reported() -> None:
    events = [ev("a", 0), ev("b", 1), ev("c", 2), ev("d", 500)]
    state, _ = run(events)
    _, step = apply_event(state, events[0], 0, 0, POLICY)
    assert not step.applied and not step.found and step.current == []


def test_a_stored_state_reads_back_as_it_was_written() -> None:
    state, _ = run([ev("a", 0), ev("b", 50), ev("c", 200), ev("d", 250), ev("e", 260)])
    assert read_state(orjson.dumps(state)) == state
    assert read_state(None) is None, "no state yet: a new user"


def _stored(**changes) -> bytes:
    state, _ = run([ev("a", 0), ev("b", 50), ev("c", 200)])
    return orjson.dumps({**state, **changes})


@pytest.mark.parametrize(("raw", "problem"), [
    (b"\x00\x01garbage", "not JSON"),
    (orjson.dumps("not a state"), "expected an object, got str"),
    (orjson.dumps({"current": []}), "missing current_offsets"),
    (_stored(history={}), "must be lists"),
    (_stored(length="3"), "must be integers"),
    (_stored(session_id=7), "session_id"),
    (_stored(last_ts="yesterday"), "last_ts"),
    (_stored(offsets={"0": "12"}), "offsets must map"),
    (_stored(current=["c", ["nested"]], current_offsets=[2, 3]), "current and current_offsets"),
    (_stored(current=["c", "d"], current_offsets=[2]), "current and current_offsets"),
    (_stored(history_ids=[]), "equally long"),
    (_stored(history=[["a", "b", "x"]]), "each history session"),
    (_stored(history=[["a", None]]), "history clicks"),
    (_stored(history_lengths=["2"]), "history_ids must be strings"),
])
def test_a_state_that_is_not_one_is_refused_with_its_problem(raw: bytes, problem: str) -> None:
    with pytest.raises(UnreadableState, match=problem):
        read_state(raw)
