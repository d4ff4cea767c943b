"""Run a coroutine in its caller up to its first suspension, and go on with it in a task only if it suspends.

What most of the worker's awaits wait for is usually ready already (room in a queue, a free semaphore slot, an
event that is set). Wrapping each in a task, as ``asyncio.wait`` and mode's ``wait_first`` do, costs a turn of
the event loop or two, in which every other ready task runs first: the agent's admission and faust's delivery
of fetched messages then waited behind the emitter's work (docs/results.md, "Delivery without a turn per
message").
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any


def start_inline(coroutine: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run ``coroutine`` in the calling task up to its first suspension: ``(True, its result)`` if it finished
    there, else ``(False, an awaitable that resumes it)`` for a task or ``asyncio.wait`` to go on with. An
    exception it raises before suspending propagates to the caller."""
    try:
        yielded = coroutine.send(None)
    except StopIteration as returned:
        return True, returned.value
    return False, Resumed(coroutine, yielded)


class Resumed:
    """A coroutine already run to its first suspension, as an awaitable that goes on from there.

    ``yielded`` is what the coroutine's first step gave its driver (the future it waits for, or None for a
    bare yield); awaiting this object hands that to the task, and forwards whatever the task sends or throws
    (a result, a cancellation) into the coroutine until it returns."""

    def __init__(self, coroutine: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coroutine = coroutine
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, yielded = self._coroutine, self._yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as error:  # delivered into the coroutine (a cancellation above all)
                step = coroutine.throw, error
            else:
                step = coroutine.send, sent
            try:
                yielded = step[0](step[1])
            except StopIteration as returned:
                return returned.value


def close_unstarted(awaitables: tuple[Any, ...]) -> None:
    """Close coroutines that will never run, so Python does not warn that they were never awaited."""
    for awaitable in awaitables:
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
