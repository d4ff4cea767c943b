"""The worker's scoring thread (streams.scoring): order, chunking, backpressure both ways, failures, and that it
keeps scoring while the event loop is busy."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from streams.scoring import FEEDER_THREAD, ScoringThread, unless_stopped


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=20))


class Calls:
    """A scorer for the stage that calls ``score`` on the stage's thread when an answer is collected."""

    def __init__(self, score) -> None:
        self._score = score
        self._submitted: collections.deque = collections.deque()

    def submit(self, items: list) -> None:
        self._submitted.append(items)

    def collect(self) -> list:
        return self._score(self._submitted.popleft())


def test_every_item_comes_back_once_in_order_in_chunks_of_at_most_chunk() -> None:
    calls: list[list[int]] = []

    def score(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [10 * i for i in items]

    async def scenario() -> None:
        stage = ScoringThread(Calls(score), chunk=128, max_waiting=8, max_scored=8)
        stage.start()
        batches = [list(range(0, 5)), list(range(5, 300)), list(range(300, 301))]
        for batch in batches:
            await stage.put(batch)
        items, results = [], []
        while len(items) < 301:
            chunk = await stage.get()
            items += chunk.items
            results += chunk.results
            stage.done_with(chunk)
        stage.stop()
        assert items == list(range(301))
        assert results == [10 * i for i in range(301)]
        assert all(1 <= len(c) <= 128 for c in calls)

    run(scenario)


def test_the_thread_takes_the_next_chunk_while_the_event_loop_is_busy() -> None:
    started: list[float] = []

    def score(items: list[int]) -> list[int]:
        started.append(time.perf_counter())
        time.sleep(0.02)
        return items

    async def scenario() -> None:
        stage = ScoringThread(Calls(score), chunk=2, max_waiting=8, max_scored=8)
        stage.start()
        for i in range(4):
            await stage.put([2 * i, 2 * i + 1])
        busy_until = time.perf_counter() + 0.5
        time.sleep(0.5)  # the event loop is blocked: nothing on it can hand work to the thread
        assert len(started) == 4 and max(started) < busy_until, "all four chunks started while the loop was busy"
        for _ in range(4):
            stage.done_with(await stage.get())
        stage.stop()

    run(scenario)


@pytest.mark.parametrize("ahead, expected", [
    (1, ["submit 0", "submit 1", "collect 0", "submit 2", "collect 1", "collect 2"]),
    (0, ["submit 0", "collect 0", "submit 1", "collect 1", "submit 2", "collect 2"]),
])
def test_the_next_chunk_is_submitted_before_the_current_answer_is_collected(ahead, expected) -> None:
    """With ``ahead`` = 1 the scorer always holds the next request while it answers one."""
    log: list[str] = []

    class Recorder:
        def __init__(self) -> None:
            self.submitted: collections.deque = collections.deque()

        def submit(self, items: list[int]) -> None:
            log.append(f"submit {items[0]}")
            self.submitted.append(items)

        def collect(self) -> list[int]:
            items = self.submitted.popleft()
            log.append(f"collect {items[0]}")
            return items

    async def scenario() -> None:
        stage = ScoringThread(Recorder(), chunk=1, max_waiting=8, max_scored=8, ahead=ahead)
        stage.start()
        await stage.put([0, 1, 2])
        got = []
        while len(got) < 3:
            chunk = await stage.get()
            got += chunk.items
            stage.done_with(chunk)
        stage.stop()
        assert got == [0, 1, 2]

    run(scenario)
    assert log == expected


def test_put_waits_while_max_waiting_batches_wait_for_the_thread() -> None:
    release = threading.Event()

    def score(items: list[int]) -> list[int]:
        release.wait()
        return items

    async def scenario() -> None:
        stage = ScoringThread(Calls(score), chunk=1, max_waiting=2, max_scored=8)
        stage.start()
        await stage.put([0])
        while stage.inbox.qsize():  # the thread has taken batch 0 and blocks in score
            await asyncio.sleep(0.01)
        await stage.put([1])
        await stage.put([2])
        blocked = asyncio.ensure_future(stage.put([3]))
        await asyncio.sleep(0.2)
        assert not blocked.done(), "a third waiting batch must wait"
        release.set()
        await asyncio.wait_for(blocked, timeout=5)
        got = []
        while len(got) < 4:
            chunk = await stage.get()
            got += chunk.items
            stage.done_with(chunk)
        assert got == [0, 1, 2, 3]
        stage.stop()

    run(scenario)


def test_the_thread_waits_while_max_scored_chunks_are_with_the_emitter() -> None:
    scored: list[int] = []

    def score(items: list[int]) -> list[int]:
        scored.extend(items)
        return items

    async def scenario() -> None:
        stage = ScoringThread(Calls(score), chunk=1, max_waiting=8, max_scored=2)
        stage.start()
        for i in range(5):
            await stage.put([i])
        await asyncio.sleep(0.3)
        assert stage.scored.qsize() == 2, "two chunks handed over, the third held back"
        assert len(scored) == 3, "the third is scored and waits for a slot"
        first = await stage.get()
        stage.done_with(first)
        await asyncio.sleep(0.2)
        assert stage.scored.qsize() == 2 and len(scored) == 4
        stage.stop()

    run(scenario)


def test_a_scoring_failure_is_raised_by_get_and_by_put_instead_of_waiting_forever() -> None:
    def score(items: list[int]) -> list[int]:
        raise ValueError("the scorer broke")

    async def scenario() -> None:
        stage = ScoringThread(Calls(score), chunk=4, max_waiting=1, max_scored=2)
        stage.start()
        await stage.put([1])
        with pytest.raises(ValueError, match="the scorer broke"):
            await stage.get()
        with pytest.raises(ValueError, match="the scorer broke"):
            for _ in range(3):  # the slot of the failed batch may be back: put until it would wait
                await stage.put([2])

    run(scenario)


def test_a_wrong_number_of_results_is_an_error() -> None:
    async def scenario() -> None:
        stage = ScoringThread(Calls(lambda items: items[:-1]), chunk=4, max_waiting=2, max_scored=2)
        stage.start()
        await stage.put([1, 2])
        with pytest.raises(RuntimeError, match="1 results for 2 items"):
            await stage.get()

    run(scenario)


def test_the_thread_has_its_os_name_and_ends_on_stop_even_when_the_emitter_holds_every_slot() -> None:
    names: list[str] = []

    def score(items: list[int]) -> list[int]:
        names.append(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip())
        return items

    async def scenario() -> None:
        stage = ScoringThread(Calls(score), chunk=1, max_waiting=8, max_scored=1)
        stage.start()
        for i in range(3):
            await stage.put([i])
        await asyncio.sleep(0.2)  # one chunk handed over, the next blocked on the slot
        stage.stop()
        stage._thread.join(timeout=5)
        assert not stage._thread.is_alive()

    run(scenario)
    assert set(names) == {FEEDER_THREAD}


def test_unless_stopped_raises_the_watched_tasks_error_instead_of_waiting_forever() -> None:
    async def scenario() -> None:
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)

        async def failing_emitter() -> None:
            await asyncio.sleep(0.05)
            raise RuntimeError("emitter failed")

        emitter = asyncio.ensure_future(failing_emitter())
        await unless_stopped(queue.put(1), emitter)
        with pytest.raises(RuntimeError, match="emitter failed"):
            await unless_stopped(queue.put(2), emitter)
        with pytest.raises(RuntimeError, match="emitter failed"):
            await unless_stopped(queue.put(3), emitter)  # already ended: raised at once

    run(scenario)


def test_unless_stopped_takes_no_task_for_what_does_not_wait() -> None:
    async def scenario() -> None:
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        emitter = asyncio.ensure_future(asyncio.sleep(10))
        created = [0]

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task:
            created[0] += 1
            return asyncio.Task(coro, loop=loop, **kwargs)

        asyncio.get_running_loop().set_task_factory(factory)
        assert await unless_stopped(queue.put(1), emitter) is None
        assert created[0] == 0, "room in the queue: put inline"
        later = asyncio.get_running_loop().call_later(0.05, queue.get_nowait)
        await unless_stopped(queue.put(2), emitter)  # full: waits in a task until the get
        assert created[0] == 1 and queue.get_nowait() == 2
        later.cancel()
        emitter.cancel()

    run(scenario)
