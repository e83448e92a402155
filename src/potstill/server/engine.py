"""One worker thread owns the model and runs the decoder with continuous batching across HTTP requests.

    engine = Engine(lm, max_batch=8, max_queue=64); engine.start()
    job = engine.submit([Row(...), Row(...)])   # from any asyncio task; EngineBusy when max_queue requests wait
    results = await job.future                  # rows of one request stay together; resolved when its rows end
    engine.cancel(job)                          # client gone or too slow: its rows stop at the next step
    engine.close()                              # finishes queued work, then stops the worker

The model is never touched by two threads at once, so concurrent requests cannot corrupt each other. Up to
``max_batch`` rows decode together (the decoder's slots); at every step the decoder asks for more work, and a
waiting request whose rows fit in the free slots joins the running ones there, so a request that arrives while
others decode does not wait for them to end. Each request is answered as soon as its own rows end. A request with
more rows than ``max_batch`` starts when the decoder is empty (its extra rows wait inside it). At most
``max_queue`` requests wait (those decoding do not count); a cancelled request that has not started frees its
place at once and is never decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..decode.text import Result, Row
from .backends import LoadedModel


class EngineClosed(RuntimeError):
    """The server is shutting down and takes no new work."""


class EngineBusy(RuntimeError):
    """``max_queue`` requests are already waiting; the caller should try again later."""


@dataclass
class Job:
    rows: list[Row]
    future: asyncio.Future[list[Result]]
    loop: asyncio.AbstractEventLoop
    taken: bool = False  # the worker gave it to the decoder
    dropped: bool = False  # cancelled before that: the worker skips it
    results: list[Result | None] = field(default_factory=list)
    t0: float = 0.0  # when it was taken


class Engine:
    def __init__(self, lm: LoadedModel, max_batch: int = 8, max_queue: int = 64) -> None:
        self.lm = lm
        self.max_batch = max_batch
        self.max_queue = max_queue
        lm.decoder.slots = max_batch
        self._q: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="potstill-engine", daemon=True)
        self._lock = threading.Lock()
        self._waiting = 0  # submitted, neither taken by the decoder nor dropped
        self._closed = False
        self._stopping = False  # the worker has seen close()'s mark: it takes nothing more
        self._held: Job | None = None  # a job that did not fit in the free slots: the next one taken
        self._running: list[Job] = []  # taken, not yet answered
        self._rows_in = 0  # rows taken and not ended
        self.batches = 0  # decoder runs so far (a run lasts while requests keep arriving); for /health and tests
        self.max_rows_seen = 0  # the most rows in the decoder at once
        self.last_request_s = 0.0  # how long the last request took from being taken to its end (Retry-After)
        self.recent: deque[Result] = deque(maxlen=256)  # the last rows decoded, newest last (tests, debugging)

    def start(self) -> None:
        self._thread.start()

    @property
    def pending(self) -> int:
        """Requests waiting for the decoder."""
        return self._waiting

    def submit(self, rows: list[Row]) -> Job:
        if self._closed:
            raise EngineClosed("the server is shutting down")
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._waiting >= self.max_queue:
                raise EngineBusy(f"the server is busy: {self._waiting} requests are waiting; try again shortly")
            self._waiting += 1
        job = Job(rows, loop.create_future(), loop)
        self._q.put(job)
        return job

    def cancel(self, job: Job) -> None:
        """Stop ``job``'s rows at their next step; a job still waiting gives up its place and is never run."""
        for r in job.rows:
            r.cancelled = True
        with self._lock:
            if not job.taken and not job.dropped:
                job.dropped = True
                self._waiting -= 1
        if not job.future.done():
            job.future.cancel()

    def close(self, timeout: float | None = None) -> None:
        """Take no new work, finish what is queued, stop the worker."""
        if self._closed:
            return
        self._closed = True
        self._q.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------------------------ worker thread
    def _take(self, job: Job) -> bool:
        with self._lock:
            if job.dropped:
                return False
            job.taken = True
            self._waiting -= 1
        job.results, job.t0 = [None] * len(job.rows), time.perf_counter()
        for i, r in enumerate(job.rows):
            r.on_result = partial(self._row_done, job, i)
        self._running.append(job)
        self._rows_in += len(job.rows)
        self.max_rows_seen = max(self.max_rows_seen, self._rows_in)
        return True

    def _row_done(self, job: Job, i: int, result: Result) -> None:
        self.recent.append(result)
        self._rows_in -= 1
        job.results[i] = result
        if all(r is not None for r in job.results):
            self.last_request_s = time.perf_counter() - job.t0
            self._running.remove(job)
            _resolve(job, results=[r for r in job.results if r is not None])

    def _next(self, block: bool) -> Job | None:
        """The next job not dropped: the held one first; None when there is none (or close() was seen)."""
        while True:
            if self._held is not None:
                job, self._held = self._held, None
            elif self._stopping:
                return None
            else:
                try:
                    got = self._q.get(block=block)
                except queue.Empty:
                    return None
                if got is None:
                    self._stopping = True
                    return None
                job = got
            if not job.dropped:
                return job

    def _more(self, free: int) -> list[Row]:
        """The decoder asks for work for ``free`` slots: whole jobs that fit (any one job when it is empty)."""
        rows: list[Row] = []
        while (job := self._next(block=False)) is not None:
            if len(rows) + len(job.rows) > free and (rows or free < self.max_batch):
                self._held = job
                break
            if self._take(job):
                rows += job.rows
        return rows

    def _work(self) -> None:
        while (first := self._next(block=True)) is not None:
            if not self._take(first):
                continue
            self.batches += 1
            try:
                self.lm.run(first.rows, more=self._more)
            except Exception as exc:  # a failing run fails the requests in it, not the server
                for j in self._running:
                    _resolve(j, exc=exc)
                self._running, self._rows_in = [], 0
        while True:  # shutting down: whatever is still queued is refused
            try:
                j = self._q.get_nowait()
            except queue.Empty:
                break
            if j is not None and self._take(j):
                self._running.remove(j)
                _resolve(j, exc=EngineClosed("the server is shutting down"))


def _resolve(job: Job, results: list[Result] | None = None, exc: BaseException | None = None) -> None:
    def done() -> None:
        if job.future.done():  # cancelled: nobody waits for it
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(results or [])

    with contextlib.suppress(RuntimeError):  # the event loop is gone (server stopped)
        job.loop.call_soon_threadsafe(done)


def threadsafe_callback(loop: asyncio.AbstractEventLoop, q: asyncio.Queue[Any], tag: Any) -> Any:
    """A Row.on_delta that hands each text piece to an asyncio queue from the worker thread."""

    def cb(text: str) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(q.put_nowait, (tag, text))

    return cb
