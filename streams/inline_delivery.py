"""Hand each fetched message to the worker's streams without a round of tasks per message.

faust's consumer drains every fetched record through ``wait_first(callback(message), suspend_flow.wait())``:
four tasks (the callback, the flow's event, the consumer's stopped and crashed events), three of them cancelled
again, and at least two turns of the event loop per message. In every turn each other ready task runs (the
agent admitting a batch, the emitter sending one), so a fetch of twenty records waited behind them up to
twenty times: at 500 events/s that was 20 ms of the worker's "to admission" p99 between the fetch reaching
the event loop and the last of its messages reaching a stream (docs/results.md, "Delivery without a task per
message").

The callback almost never suspends: it only puts the event into each subscribed stream's queue. So
:func:`deliver_inline` runs it in the draining task itself, up to its first suspension
(:func:`streams.inline.start_inline`). If it completes there, nothing else is needed. If it suspends (a full
queue, flow control paused for a rebalance, a producer over its buffer), the suspended callback goes to
faust's own ``wait_first`` as before, so a suspension of the flow still interrupts it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mode.services import WaitResults

from streams.inline import close_unstarted, start_inline


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

