"""One worker thread owns the model; requests queue up and are decoded together in micro-batches.

    engine = Engine(lm, max_batch=8); engine.start()
    results = await engine.submit([Row(...), Row(...)])      # from any asyncio task; rows of one request stay together
    engine.close()                                            # finishes queued work, then stops the worker

The model is never touched by two threads at once, so concurrent requests cannot corrupt each other; requests
that arrive while a batch runs wait for the next one. A batch takes whole requests, up to ``max_batch`` rows
(a request bigger than that runs alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from dataclasses import dataclass
from typing import Any

from .backends import LoadedModel
from .decode import Result, Row


class EngineClosed(RuntimeError):
    """The server is shutting down and takes no new work."""


@dataclass
class _Job:
    rows: list[Row]
    future: asyncio.Future[list[Result]]
    loop: asyncio.AbstractEventLoop


class Engine:
    def __init__(self, lm: LoadedModel, max_batch: int = 8) -> None:
        self.lm = lm
        self.max_batch = max_batch
        self._q: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="potstill-engine", daemon=True)
        self._closed = False
        self._held: _Job | None = None  # a job that did not fit in the last batch: it opens the next one
        self.batches = 0  # batches run so far (for /health and tests)
        self.max_rows_seen = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._q.qsize()

    def submit(self, rows: list[Row]) -> asyncio.Future[list[Result]]:
        if self._closed:
            raise EngineClosed("the server is shutting down")
        loop = asyncio.get_running_loop()
        job = _Job(rows, loop.create_future(), loop)
        self._q.put(job)
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Take no new work, finish what is queued, stop the worker."""
        if self._closed:
            return
        self._closed = True
        self._q.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _next_batch(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, rows, stop = [first], len(first.rows), False
        while rows < self.max_batch:
            try:
                nxt = self._q.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                stop = True
                break
            if rows + len(nxt.rows) > self.max_batch:
                self._held = nxt
                break
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
                first = self._q.get()
                if first is None:
                    break
            jobs, saw_stop = self._next_batch(first)
            stop = stop or saw_stop
            rows = [r for j in jobs for r in j.rows]
            self.batches += 1
            self.max_rows_seen = max(self.max_rows_seen, len(rows))
            try:
                results = self.lm.run(rows)
            except Exception as exc:  # one bad batch fails its requests, not the server
                for j in jobs:
                    _resolve(j, exc=exc)
                continue
            k = 0
            for j in jobs:
                _resolve(j, results=results[k : k + len(j.rows)])
                k += len(j.rows)
        while True:  # shutting down: whatever is still queued is refused
            try:
                j = self._q.get_nowait()
            except queue.Empty:
                break
            if j is not None:
                _resolve(j, exc=EngineClosed("the server is shutting down"))


def _resolve(job: _Job, results: list[Result] | None = None, exc: BaseException | None = None) -> None:
    def done() -> None:
        if job.future.done():
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
