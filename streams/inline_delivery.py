"""Hand fetched messages to the worker's agent without a turn of the event loop per message, at both hops.

In every turn of the event loop each other ready task runs: the agent admitting a batch, the emitter sending
one, the producer, the hand-offs from the consumer and feeder threads. A hop that moves one message per turn
moves messages only as fast as the loop turns, about a thousand times a second when the worker is busy, and
faust had two such hops (docs/results.md, "Delivery without a turn per message").

**The consumer's drain loop -> the streams' queues** (:func:`deliver_inline`). faust's consumer drains every
fetched record through ``wait_first(callback(message), suspend_flow.wait())``: four tasks (the callback, the
flow's event, the consumer's stopped and crashed events), three of them cancelled again, and at least two
turns of the event loop per message. At 500 events/s, 20 ms of the worker's "to admission" p99 lay between a
fetch reaching the event loop and its last message reaching a stream. The callback almost never suspends: it
only puts the event into each subscribed stream's queue. So it runs in the draining task itself, up to its
first suspension (:func:`streams.inline.start_inline`). If it completes there, nothing else is needed. If it
suspends (a full queue, flow control paused for a rebalance, a producer over its buffer), the suspended
callback goes to faust's own ``wait_first`` as before, so a suspension of the flow still interrupts it. (Its
first step runs in the draining task's context rather than a copy of it; faust's callback sets no context
variable.)

**A stream's queue -> the agent's batch** (:func:`take_in_runs`). faust's stream iterator (its compiled
``StreamIterator``) awaits ``asyncio.sleep(0)`` before every event it takes from its queue, so a stream takes
one event per turn however many wait. At 1,000 events/s events waited there 100-800 ms at p99 while the
agent asked for more every 11 ms. :func:`take_in_runs` lets it take up to :data:`STREAM_RUN` queued events
per turn; it still yields whenever its queue is empty, and ``take_events`` stops taking at its batch size.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faust import streams as faust_streams
from mode.services import WaitResults

from streams.inline import close_unstarted, start_inline

log = logging.getLogger("igrec.worker")

STREAM_RUN = 64
"""Events a faust stream takes from its queue before it lets other tasks run (:func:`take_in_runs`)."""


def deliver_inline(consumer: Any) -> None:
    """Install inline delivery on faust's ``consumer`` (before it starts). Only the ``wait_first`` calls made by
    the consumer's drain loop change; every other caller keeps faust's."""
    drain_messages = consumer._drain_messages
    wait_first = consumer.wait_first
    draining: set[asyncio.Task] = set()

    async def drain_marked(fetcher: Any) -> None:
        task = asyncio.current_task()
        draining.add(task)
        try:
            await drain_messages(fetcher)
        finally:
            draining.discard(task)

    async def first_inline(*coros: Any, timeout: Any = None) -> WaitResults:
        if asyncio.current_task() not in draining or not coros or not asyncio.iscoroutine(coros[0]):
            return await wait_first(*coros, timeout=timeout)
        callback, others = coros[0], coros[1:]
        try:
            finished, outcome = start_inline(callback)
        except BaseException:
            close_unstarted(others)
            raise
        if not finished:
            return await wait_first(outcome, *others, timeout=timeout)
        close_unstarted(others)
        stopped = consumer._stopped.is_set() or consumer._crashed.is_set()
        return WaitResults([], [], True) if stopped else WaitResults([callback], [outcome], False)

    consumer._drain_messages = drain_marked
    consumer.wait_first = first_inline


def take_in_runs(run: int = STREAM_RUN) -> None:
    """Make faust's stream iterator yield to the event loop once every ``run`` events instead of before each.
    Process-wide (faust's compiled iterator looks ``sleep`` up in its module); calling it again changes nothing.
    faust's pure-Python iterator (where its compiled extension is missing) is left as it is, with a warning."""
    if faust_streams._CStreamIterator is None:
        log.warning("faust runs its pure-Python stream iterator: streams take one event per turn of the event loop")
        return
    import faust._cython.streams as compiled

    if getattr(compiled.sleep, "yields_every", None) is not None:
        return
    sleep = asyncio.sleep
    taken = 0

    async def sleep_in_runs(delay: float, result: Any = None) -> Any:
        nonlocal taken
        if delay == 0:
            taken += 1
            if taken % run:
                return result
        return await sleep(delay, result)

    sleep_in_runs.yields_every = run  # type: ignore[attr-defined]
    compiled.sleep = sleep_in_runs
