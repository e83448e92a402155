"""One worker thread owns the model; requests queue up and are decoded together in micro-batches.

    engine = Engine(lm, max_batch=8, max_queue=64); engine.start()
    job = engine.submit([Row(...), Row(...)])   # from any asyncio task; EngineBusy when max_queue requests wait
    results = await job.future                  # rows of one request stay together
    engine.cancel(job)                          # client gone or too slow: its rows stop at the next step
    engine.close()                              # finishes queued work, then stops the worker

The model is never touched by two threads at once, so concurrent requests cannot corrupt each other; requests
that arrive while a batch runs wait for the next one. A batch takes whole requests, up to ``max_batch`` rows
(a request bigger than that runs alone). At most ``max_queue`` requests wait (the batch being decoded does not
count); a cancelled request that has not started frees its place at once and is never decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from .backends import LoadedModel
from .decode import Result, Row


class EngineClosed(RuntimeError):
    """The server is shutting down and takes no new work."""


class EngineBusy(RuntimeError):
    """``max_queue`` requests are already waiting; the caller should try again later."""


@dataclass
class Job:
    rows: list[Row]
    future: asyncio.Future[list[Result]]
    loop: asyncio.AbstractEventLoop
    taken: bool = False  # the worker put it in a batch
    dropped: bool = False  # cancelled before that: the worker skips it


class Engine:
    def __init__(self, lm: LoadedModel, max_batch: int = 8, max_queue: int = 64) -> None:
        self.lm = lm
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._q: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="potstill-engine", daemon=True)
        self._lock = threading.Lock()
        self._waiting = 0  # submitted, neither taken into a batch nor dropped
        self._closed = False
        self._held: Job | None = None  # a job that did not fit in the last batch: it opens the next one
        self.batches = 0  # batches run so far (for /health and tests)
        self.max_rows_seen = 0
        self.last_batch_s = 0.0  # how long the last batch took (the Retry-After hint)
        self.recent: deque[Result] = deque(maxlen=256)  # the last rows decoded, newest last (tests, debugging)

    def start(self) -> None:
        self._thread.start()

    @property
    def pending(self) -> int:
        """Requests waiting for a batch."""
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

    def _take(self, job: Job) -> bool:
        with self._lock:
            if job.dropped:
                return False
            job.taken = True
            self._waiting -= 1
            return True

    def _next_batch(self, first: Job) -> tuple[list[Job], bool]:
        jobs, rows, stop = [first], len(first.rows), False
        while rows < self.max_batch:
            try:
                nxt = self._q.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                stop = True
                break
            if nxt.dropped:
                continue
            if rows + len(nxt.rows) > self.max_batch:
                self._held = nxt
                break
            if self._take(nxt):
                jobs.append(nxt)
                rows += len(nxt.rows)
        return jobs, stop

    def _work(self) -> None:
        stop = False
        while True:
            if self._held is not None:
                first, self._held = self._held, None
            elif stop:
                break
            else:
                got = self._q.get()
                if got is None:
                    break
                first = got
            if not self._take(first):
                continue
            jobs, saw_stop = self._next_batch(first)
            stop = stop or saw_stop
            rows = [r for j in jobs for r in j.rows]
            self.batches += 1
            self.max_rows_seen = max(self.max_rows_seen, len(rows))
            t0 = time.perf_counter()
            try:
                results = self.lm.run(rows)
            except Exception as exc:  # one bad batch fails its requests, not the server
                for j in jobs:
                    _resolve(j, exc=exc)
                continue
            finally:
                self.last_batch_s = time.perf_counter() - t0
            self.recent.extend(results)
            k = 0
            for j in jobs:
                _resolve(j, results=results[k : k + len(j.rows)])
                k += len(j.rows)
        while True:  # shutting down: whatever is still queued is refused
            try:
                j = self._q.get_nowait()
            except queue.Empty:
                break
            if j is not None and self._take(j):
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
