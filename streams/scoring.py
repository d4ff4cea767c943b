"""The worker's scoring stage: the scorer in a child process, fed by a thread of the worker that pulls
admitted events itself and hands scored chunks back to the event loop.

The event loop admits micro-batches (validation, state, Kafka I/O); the scorer runs ``export.scorer.Scorer``.
Two choices keep both cores busy:

- **A process for the scorer** (:class:`ScorerProcess`). The scorer's own Python work (id mapping, graph
  building, results to lists, and a return from each onnxruntime call, one per size bucket) needs the GIL,
  and in the worker's process it waited for the event loop to let go of it: inside the scorer, the scoring
  thread was off its core about a third of the time. The child has its own interpreter; the worker's side
  only pickles the sessions out and the answers back.
- **A thread that pulls** (:class:`ScoringThread`). It takes the next chunk as soon as it has finished the
  last one. Submitting each chunk from the event loop (``run_in_executor``) left the scorer idle until the
  loop had resumed the submitting task, and the loop runs one callback at a time: while the agent admitted
  a micro-batch of 256 events (several milliseconds), the scorer waited.
- **One request ahead**. The thread sends the next chunk before it collects the answer to the current one,
  so the child starts on it at once: the thread's own turn (the answer in, the next request out) needs the
  worker's GIL, and the event loop holds that for milliseconds at a time.

Backpressure both ways: :meth:`ScoringThread.put` waits while ``max_waiting`` batches wait for the thread, and
the thread waits while ``max_scored`` chunks are with the emitter (released by :meth:`ScoringThread.done_with`).
A failure of the scorer (the scorer process's included) ends the thread; :meth:`~ScoringThread.put`
and :meth:`~ScoringThread.get` then raise it, so the agent fails loudly instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Generic, NamedTuple, NoReturn, Protocol, TypeVar

from streams.inline import start_inline

log = logging.getLogger("igrec.worker")

SCORER_PROCESS = "igrec-scorer"
"""OS name of the scorer process (``top``, py-spy and ``bench/bench_worker.py`` find it by this name)."""
FEEDER_THREAD = "igrec-feeder"
"""OS name of the worker's thread that feeds the scorer (:class:`ScoringThread`)."""

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Chunk(Generic[T, R]):
    """Scored items with their results, in the order the emitter must send their outputs; ``began`` is the
    ``time.perf_counter()`` at which they were sent to the scorer (one request ahead: maybe while it still
    scored the chunk before)."""

    items: list[T]
    results: list[R]
    began: float


@dataclass(frozen=True)
class Scoring:
    """The scorer's answer for one event: top-K external ids and log-probabilities (empty when not scored),
    the clicked item's model index (0 when it is not in the model's vocabulary), and the session's interest
    weights (the mean interest assignment of its known items; None without an interest table or a known
    item)."""

    items: list[str]
    scores: list[float]
    scored: bool
    clicked: int
    interests: list[float] | None
    item_interests: list[float] | None = None
    """The clicked item's own interest assignment (None when unknown or without an interest table)."""

    @property
    def known_item(self) -> bool:
        return self.clicked > 0


SCORING_FIELDS = tuple(f.name for f in fields(Scoring))
"""A :class:`Scoring` crosses the pipe as a plain tuple in this order (cheaper to pickle than the object)."""


class SessionPrefix(NamedTuple):
    """What scoring needs of an event (a ``streams.state.Step`` has the same attributes): the external ids of
    the current session's clicks up to and including it, and the user's earlier sessions."""

    current: list[str]
    history: list[list[str]]


def score_batch(scorer: Any, steps: Sequence[SessionPrefix]) -> list[Scoring]:
    """Score each step's current session; unknown items are left out of the scored session, and a session
    with no known item (or an event whose clicks left the bounded state) is not scored. Users' histories are
    mapped only for a scorer that uses them. Results are converted per batch, not per item."""
    indices = [scorer.index_of(step.current) for step in steps]
    known = [session[session > 0] for session in indices]
    rows = [b for b, session in enumerate(known) if session.size]
    top_ids: list[list[str]] = []
    top_scores: list[list[float]] = []
    if rows:
        histories = None
        if scorer.uses_history:
            histories = [[(h := scorer.index_of(s))[h > 0] for s in steps[b].history] for b in rows]
        top, scores = scorer.recommend_sessions([known[b] for b in rows], histories)
        top_ids, top_scores = scorer.external_ids(top).tolist(), scores.tolist()
    clicked = [int(session[-1]) if len(session) else 0 for session in indices]
    weights: list = [None] * len(rows)
    own: list = [None] * len(steps)
    if scorer.interests is not None:
        weights = scorer.interest_weights([known[b] for b in rows]).tolist()
        own = scorer.interests[clicked].tolist()
    row_of = {b: row for row, b in enumerate(rows)}
    results = []
    for b, item in enumerate(clicked):
        row = row_of.get(b)
        results.append(Scoring(
            items=top_ids[row] if row is not None else [],
            scores=top_scores[row] if row is not None else [],
            scored=row is not None,
            clicked=item,
            interests=weights[row] if row is not None else None,
            item_interests=own[b] if item > 0 else None,
        ))
    return results


class Requests(Protocol[T, R]):
    """A scorer that takes requests ahead of its answers: :meth:`submit` queues one, :meth:`collect` returns the
    answer to the oldest one not yet collected (one result per item, in order)."""

    def submit(self, items: list[T]) -> None: ...

    def collect(self) -> Sequence[R]: ...


class ScoringThread(Generic[T, R]):
    """Has ``scorer`` score every item waiting, from a thread of its own, in chunks of at most ``chunk`` items,
    handed back in submission order.

    The thread keeps ``ahead`` more chunks submitted behind the one being scored, when items are waiting: the
    scorer (a child process) then starts the next chunk as soon as it has answered one, instead of waiting
    for this thread, whose Python work (the answer in, the next request out) waits for the GIL the event
    loop holds.

    Args:
        scorer: where chunks go (:class:`Requests`). Its calls run on the thread, so any Python work in them
            holds the GIL the event loop needs; the worker's (a :class:`ScorerProcess`) mostly waits on its pipe.
        chunk: most items per request.
        max_waiting: batches :meth:`put` may queue for the thread before it waits.
        max_scored: chunks handed to the event loop and not yet :meth:`done_with` before the thread waits.
        ahead: chunks submitted beyond the one being scored (0: one request at a time).
        name: OS-level name of the thread.
    """

    def __init__(self, scorer: Requests[T, R], *, chunk: int, max_waiting: int, max_scored: int, ahead: int = 1,
                 name: str = FEEDER_THREAD):
        self._scorer = scorer
        self._chunk = chunk
        self._ahead = ahead
        self._name = name
        self.inbox: queue.Queue[list[T] | None] = queue.Queue()
        self.scored: asyncio.Queue[Chunk[T, R]] = asyncio.Queue()
        self._waiting_slots = asyncio.Semaphore(max_waiting)
        self._scored_slots = threading.Semaphore(max_scored)
        self._stopping = threading.Event()
        self._pending: list[T] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed: asyncio.Future | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread; call from the event loop that will :meth:`put` and :meth:`get`."""
        self._loop = asyncio.get_running_loop()
        self._failed = self._loop.create_future()
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end after its current call; items not yet handed back are dropped (their messages
        stay un-acknowledged, so Kafka delivers them again)."""
        self._stopping.set()
        self.inbox.put(None)
        self._scored_slots.release()

    async def put(self, items: list[T]) -> None:
        """Queue ``items`` for the thread; waits while ``max_waiting`` batches wait; raises the thread's failure."""
        await self._unless_failed(self._waiting_slots.acquire())
        self.inbox.put(items)

    async def get(self) -> Chunk[T, R]:
        """The next scored chunk, in order; raises the thread's failure."""
        return await self._unless_failed(self.scored.get())

    def done_with(self, chunk: Chunk[T, R]) -> None:
        """The emitter has finished ``chunk``: the thread may hand over another."""
        self._scored_slots.release()

    async def _unless_failed(self, awaitable: Awaitable[Any]) -> Any:
        return await unless_stopped(awaitable, self._failed)

    def _run(self) -> None:
        name_os_thread(self._name)
        submitted: collections.deque[tuple[list[T], float]] = collections.deque()
        try:
            while not self._stopping.is_set():
                while len(submitted) <= self._ahead:
                    items = self._next_chunk(wait=not submitted)
                    if items is None:
                        break
                    self._scorer.submit(items)
                    submitted.append((items, time.perf_counter()))
                if not submitted:
                    return
                items, began = submitted.popleft()
                results = list(self._scorer.collect())
                if len(results) != len(items):
                    raise RuntimeError(f"the scorer answered {len(results)} results for {len(items)} items")
                self._scored_slots.acquire()
                if self._stopping.is_set():
                    return
                self._call(self.scored.put_nowait, Chunk(items, results, began))
        except BaseException as error:  # handed to the event loop, which raises it in put() and get()
            self._call(self._fail, error)

    def _next_chunk(self, wait: bool) -> list[T] | None:
        """The next chunk of at most ``chunk`` items: from what was taken, else from the inbox (every batch
        waiting there, up to ``chunk`` items, at least one batch whatever its size). None when nothing is
        waiting and ``wait`` is false, or when the thread is to stop."""
        if not self._pending:
            try:
                waiting = self.inbox.get(block=wait)
            except queue.Empty:
                return None
            if waiting is None:
                self._stopping.set()
                return None
            self._pending = self._take_more(waiting)
        items, self._pending = self._pending[: self._chunk], self._pending[self._chunk :]
        return items

    def _take_more(self, waiting: list[T]) -> list[T]:
        """``waiting`` and the batches behind it in the inbox, up to ``chunk`` items."""
        taken = 1
        while len(waiting) < self._chunk:
            try:
                more = self.inbox.get_nowait()
            except queue.Empty:
                break
            if more is None:
                self._stopping.set()
                break
            waiting = waiting + more
            taken += 1
        self._call(self._release_waiting, taken)
        return waiting

    def _release_waiting(self, taken: int) -> None:
        for _ in range(taken):
            self._waiting_slots.release()

    def _fail(self, error: BaseException) -> None:
        if not self._failed.done():
            self._failed.set_exception(error)

    def _call(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the event loop (a closed loop means the worker is gone: nothing to do)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)


async def unless_stopped(awaitable: Awaitable[Any], watched: asyncio.Future) -> Any:
    """``await awaitable``, unless ``watched`` (a task or future that the awaited work depends on) ends first:
    then its exception, or a RuntimeError when it ended without one, is raised instead of waiting forever.
    A coroutine runs inline up to its first suspension (:func:`streams.inline.start_inline`): one that
    does not wait (room in the queue) takes no task and no turn of the event loop."""
    if not watched.done():
        if asyncio.iscoroutine(awaitable):
            finished, awaitable = start_inline(awaitable)
            if finished:
                return awaitable
        waiter = asyncio.ensure_future(awaitable)
        await asyncio.wait({waiter, watched}, return_when=asyncio.FIRST_COMPLETED)
        if waiter.done():
            return waiter.result()
        waiter.cancel()
    elif asyncio.iscoroutine(awaitable):
        awaitable.close()
    watched.result()
    raise RuntimeError(f"{watched!r} stopped")


def prepare_thread(name: str, nice: int) -> None:
    """Name the calling thread at the OS level and change its scheduling priority by ``nice``."""
    name_os_thread(name)
    renice_thread(nice)


def name_os_thread(name: str) -> None:
    """Give the calling thread an OS-level name (Linux ``prctl``), so ``top -H``, py-spy and the worker bench's
    CPU accounting can tell the scorer and its feeder from the event loop; a no-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # 15 = PR_SET_NAME


def renice_thread(nice: int) -> None:
    """Add ``nice`` to the calling thread's nice value (Linux schedules threads one by one; negative is a higher
    priority). Raising the priority needs CAP_SYS_NICE; without it the thread keeps its priority (logged)."""
    if not nice or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, max(-20, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice)))
    except OSError as error:
        log.info("%s keeps its priority (nice %+d refused: %s)", threading.current_thread().name, nice,
                 error.strerror)


class ScorerProcess:
    """:func:`score_batch` with an ``export.scorer.Scorer`` in a child process (see the module docstring for why).

    The child is a fresh interpreter (``python -m streams.scoring``) talking over a socket pair: no fork of a
    process with threads and an event loop, and, unlike ``multiprocessing``'s spawn, no re-import of the
    caller's main module. Requests may be sent ahead of their answers (:meth:`submit`, :meth:`collect`). The
    child ends when the socket closes, so it does not outlive the worker, killed or not. The constructor raises
    what the scorer's start-up raised: an ``ArtefactError`` for a corrupted or incompatible artefact (the child
    verifies it, as ``export.scorer.Scorer`` does), a RuntimeError with the child's traceback for anything else
    (a GPU provider that cannot start); a failure while scoring is raised by the call, with the child's
    traceback.

    Args:
        artefact, providers, threads, fp16, int8: as for ``export.scorer.Scorer``.
        nice: added to the child's nice value (see :func:`renice_thread`).
    """

    def __init__(self, artefact: str | Path, *, providers: str = "auto", threads: int | None = 1, nice: int = 0,
                 fp16: bool = False, int8: bool = False):
        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[1])
        env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "streams.scoring", str(theirs.fileno()), str(artefact), providers,
                 str(threads or 0), str(nice), "fp16" if fp16 else "int8" if int8 else "float32"],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        self._conn = Connection(ours.detach())
        self.providers: list[str] = self._answer()

    def __call__(self, steps: Sequence[SessionPrefix]) -> list[Scoring]:
        """One request and its answer: :meth:`submit` then :meth:`collect`, so one caller at a time, and not
        between another caller's submit and collect."""
        self.submit(steps)
        return self.collect()

    def submit(self, steps: Sequence[SessionPrefix]) -> None:
        """Send a request; the child reads requests as they come and answers them in order (:meth:`collect`)."""
        try:
            self._conn.send([(step.current, step.history) for step in steps])
        except OSError:
            self._ended()

    def collect(self) -> list[Scoring]:
        """The answer to the oldest request not yet collected."""
        return [Scoring(*fields) for fields in self._answer()]

    def _answer(self) -> Any:
        try:
            kind, value = self._conn.recv()
        except (EOFError, OSError):
            self._ended()
        if kind == "refused":
            from export.artefact import ArtefactError

            raise ArtefactError(value)
        if kind == "error":
            raise RuntimeError(f"the scorer process failed:\n{value}")
        return value

    def _ended(self) -> NoReturn:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=1)
        raise RuntimeError(f"the scorer process ended (exit code {self._process.returncode})") from None

    def close(self) -> None:
        """End the child (it exits when the socket closes; killed if it has not within 5 s)."""
        self._conn.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.poll() is None


def _serve_scorer(conn: Connection, artefact: str, providers: str, threads: int | None, nice: int,
                  precision: str) -> None:
    """The child's loop: load the scorer, say which providers it uses, then answer each request until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the worker decides
    prepare_thread(SCORER_PROCESS, nice)
    try:
        from export.artefact import ArtefactError
        from export.scorer import Scorer

        scorer = Scorer(artefact, providers=providers, threads=threads, spin=False, fp16=precision == "fp16",
                        int8=precision == "int8")
    except ArtefactError as refused:
        conn.send(("refused", str(refused)))
        return
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ok", scorer.providers))
    requests = _read_ahead(conn)
    while (request := requests.get()) is not None:
        try:
            answer = [tuple(getattr(result, name) for name in SCORING_FIELDS)
                      for result in score_batch(scorer, [SessionPrefix(*r) for r in request])]
        except Exception:
            answer, kind = traceback.format_exc(), "error"
        else:
            kind = "ok"
        try:
            conn.send((kind, answer))
        except OSError:
            return


def _read_ahead(conn: Connection) -> queue.SimpleQueue:
    """Requests from ``conn`` as they arrive, read by a thread of their own (None after the last): the worker may
    send the next request while this process still scores one, and must never wait for it to be read (both
    sides sending at once to full socket buffers would wait for each other)."""
    requests: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:
        try:
            while True:
                requests.put(conn.recv())
        except (EOFError, OSError):
            requests.put(None)

    threading.Thread(target=read, name="igrec-requests", daemon=True).start()
    return requests


if __name__ == "__main__":  # the child of ScorerProcess: FD ARTEFACT PROVIDERS THREADS NICE PRECISION
    fd, artefact_arg, providers_arg, threads_arg, nice_arg, precision_arg = sys.argv[1:7]
    _serve_scorer(Connection(int(fd)), artefact_arg, providers_arg, int(threads_arg) or None, int(nice_arg),
                  precision_arg)
