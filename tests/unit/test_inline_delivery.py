"""streams.inline_delivery: faust's own drain loop (``Consumer._drain_messages``, run here on a bare mode Service)
hands each message to its callback without creating tasks when the callback does not wait; a callback that
waits is resumed by faust's ``wait_first`` and can still be interrupted by a suspended flow; other
``wait_first`` callers are unchanged. faust's own stream iterator takes queued events in runs, not one per
turn of the event loop."""

from __future__ import annotations

import asyncio
import warnings
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import faust
import faust._cython.streams as compiled_streams
import pytest
from faust.transport.consumer import Consumer
from mode import Service

from streams.inline import Resumed, start_inline
from streams.inline_delivery import deliver_inline, take_in_runs

TP = ("events", 0)


class Drainer(Service):
    """Just enough of a faust consumer for faust's drain loop to run over ``batches`` and then stop."""

    _drain_messages = Consumer._drain_messages
    consumer_stopped_errors = ()

    def __init__(self, batches: list[list[int]], callback: Callable[[Any], Awaitable[Any]]) -> None:
        super().__init__()
        self.batches = batches
        self.callback = callback
        self.suspend_flow = asyncio.Event()
        self._read_offset: dict[Any, int | None] = defaultdict(lambda: None)
        self._commit_every = None
        self.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: False))
        self.transport = SimpleNamespace(app=SimpleNamespace(should_stop=False))
        self.fetcher = SimpleNamespace(_stopped=asyncio.Event())

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        if not self.batches:
            self.fetcher._stopped.set()
            return
        for offset in self.batches.pop(0):
            yield TP, SimpleNamespace(offset=offset, topic=TP[0])

    async def drain(self) -> None:
        await asyncio.wait_for(self._drain_messages(self.fetcher), timeout=10)


def counting_tasks() -> list[int]:
    """Count the tasks the running loop creates from now on (``count[0]``)."""
    count = [0]
    loop = asyncio.get_running_loop()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task:
        count[0] += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    return count


async def drain_counting_tasks(batches: list[list[int]], inline: bool) -> tuple[list[int], int]:
    """The offsets delivered and the tasks created while faust's drain loop runs over ``batches``."""
    got: list[int] = []

    async def callback(message: Any) -> None:
        got.append(message.offset)

    drainer = Drainer(batches, callback)
    if inline:
        deliver_inline(drainer)
    count = counting_tasks()
    try:
        await drainer.drain()
    finally:
        asyncio.get_running_loop().set_task_factory(None)
    return got, count[0]


async def test_a_message_whose_callback_does_not_wait_is_delivered_without_tasks() -> None:
    _, per_fetch = await drain_counting_tasks([[], []], inline=True)  # faust's own, per getmany
    fausts, fausts_tasks = await drain_counting_tasks([[0, 1, 2], [3, 4]], inline=False)
    inline, inline_tasks = await drain_counting_tasks([[0, 1, 2], [3, 4]], inline=True)
    assert fausts == inline == [0, 1, 2, 3, 4]
    assert fausts_tasks >= per_fetch + 4 * 5, "faust's wait_first: four tasks a message"
    assert inline_tasks == per_fetch


async def test_a_callback_that_waits_is_resumed_where_it_waited() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    returned: list[int] = []

    async def callback(message: Any) -> int:
        await queue.put(message.offset)  # waits while the queue is full
        returned.append(message.offset)
        return message.offset

    async def take_slowly() -> list[int]:
        taken = []
        while len(taken) < 4:
            await asyncio.sleep(0.01)
            taken.append(await queue.get())
        return taken

    drainer = Drainer([[0, 1], [2, 3]], callback)
    deliver_inline(drainer)
    taker = asyncio.ensure_future(take_slowly())
    await drainer.drain()
    assert await taker == [0, 1, 2, 3]
    assert returned == [0, 1, 2, 3]


async def test_a_suspended_flow_still_interrupts_a_waiting_callback() -> None:
    blocked = asyncio.Event()
    outcome: list[str] = []

    async def callback(message: Any) -> None:
        if message.offset == 1:
            try:
                await asyncio.Event().wait()  # as on_message waits for a paused flow control
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise
        outcome.append(f"delivered {message.offset}")
        blocked.set()

    drainer = Drainer([[0, 1, 2]], callback)
    deliver_inline(drainer)
    draining = asyncio.ensure_future(drainer.drain())
    await blocked.wait()
    await asyncio.sleep(0.05)
    assert not draining.done(), "message 1's callback holds the drain"
    drainer.suspend_flow.set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await draining
    assert sorted(outcome) == ["cancelled", "delivered 0", "delivered 2"]
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_wait_first_outside_the_drain_loop_is_fausts() -> None:
    drainer = Drainer([], lambda message: asyncio.sleep(0))
    deliver_inline(drainer)
    done = asyncio.Event()
    done.set()

    async def at_once() -> int:
        return 1

    results = await drainer.wait_first(at_once(), done.wait())
    assert results.results == [1, True], "faust's wait_first starts both; the inline path would not start the second"


async def test_resumed_forwards_results_and_errors_into_the_coroutine() -> None:
    loop = asyncio.get_running_loop()
    ok, bad = loop.create_future(), loop.create_future()

    async def waits(future: asyncio.Future) -> str:
        try:
            return f"got {await future}"
        except ValueError as error:
            return f"caught {error}"

    resumed = []
    for future in (ok, bad):
        coroutine = waits(future)
        resumed.append(asyncio.ensure_future(Resumed(coroutine, coroutine.send(None))))
    ok.set_result(7)
    bad.set_exception(ValueError("broken"))
    assert await asyncio.gather(*resumed) == ["got 7", "caught broken"]


async def test_start_inline_finishes_what_does_not_wait_and_hands_back_what_does() -> None:
    async def at_once() -> int:
        return 3

    async def later() -> int:
        await asyncio.sleep(0.01)
        return 4

    assert start_inline(at_once()) == (True, 3)
    finished, rest = start_inline(later())
    assert not finished
    assert await asyncio.ensure_future(rest) == 4


async def turns_to_stream(count: int) -> int:
    """Turns of the event loop a faust stream takes to yield ``count`` events already in its queue."""
    app = faust.App("igrec-test-inline", broker="kafka://127.0.0.1:1", store="memory://")
    app.flow_control.resume()
    stream = app.channel().stream()
    for value in range(count):
        await stream.channel.put(value)
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.ensure_future(count_turns())
    try:
        taken = 0
        async for _ in stream:
            taken += 1
            if taken == count:
                return turns
    finally:
        counter.cancel()
    raise AssertionError("the stream ended early")


async def test_a_stream_takes_what_is_queued_in_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # faust's own sleep (a worker app made by an earlier test has installed the runs process-wide); the
    # module's sleep is restored after the test
    monkeypatch.setattr(compiled_streams, "sleep", asyncio.sleep)
    one_by_one = await turns_to_stream(200)
    take_in_runs(64)
    take_in_runs(64)  # a second call changes nothing
    in_runs = await turns_to_stream(200)
    assert one_by_one >= 199, "faust's iterator: one event per turn"
    assert in_runs <= 200 // 64 + 1


def test_faust_without_its_compiled_iterator_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(faust.streams, "_CStreamIterator", None)
    monkeypatch.setattr(compiled_streams, "sleep", compiled_streams.sleep)
    before = compiled_streams.sleep
    take_in_runs()
    assert compiled_streams.sleep is before
    assert "pure-Python stream iterator" in caplog.text
