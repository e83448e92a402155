"""The async request engine: many servers, bounded adaptive concurrency, retries with back-off, per-row isolation.

    engine = Engine(servers=[Server(url, limit=32)], send=send, policy=RetryPolicy(max_retries=6))
    result = asyncio.run(engine.run(jobs, on_done=commit, on_event=log))     # -> EngineResult

One worker coroutine per slot (the sum of the servers' limits). A worker takes the next job, waits for the
least-loaded server that is not backing off, sends, and then:
    ok                      on_done(job, outcome) commits the answer; the server's limit grows back by 1 every
                            25 successes in a row (after a 429 cut it by a quarter). Rows in ``outcome.refused``
                            (a content filter's null answer) fail with that reason; the job's other rows stand
    retryable (408/409/429/5xx, timeout, connection error, malformed or empty response, and any exception that
              ``send`` raises: one request's surprise never stops the others)
                            the job waits out the back-off (Retry-After / retry-after-ms when the server sends
                            one, else base * 2^attempt with jitter) and prefers another server; a 429, or two
                            failures in a row, also pause that server alone
    permanent (400/404/...) the row fails with the server's message; other rows go on
    fatal (401/403)         every worker stops at once and run() raises TeacherError with the message
    budget                  a job whose worst-case cost does not fit is not sent; in-flight jobs finish, then
                            run() returns with ``stopped`` set (the caller raises, the cache keeps the rest)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import TeacherError

RETRY_STATUS = frozenset({408, 409, 429})
FATAL_STATUS = frozenset({401, 403})
MAX_RETRY_AFTER_S = 60.0


@dataclass
class Outcome:
    """What one attempt produced. ``kind``: ok | retry | fail | fatal."""

    kind: str
    answers: list[Any] = field(default_factory=list)
    status: int | None = None
    error: str = ""
    retry_after: float | None = None
    latency_s: float = 0.0
    refused: dict[int, str] = field(default_factory=dict)  # ok only: index in job.items -> why that row has no answer


@dataclass
class Job:
    """One HTTP request: ``items`` are the caller's rows it answers (several with server-side ``n``)."""

    items: list[Any]
    body: dict[str, Any]
    cost_bound: float = 0.0
    attempts: int = 0
    avoid: Server | None = None


@dataclass
class Server:
    url: str
    max_limit: int
    limit: float = 0.0
    in_flight: int = 0
    paused_until: float = 0.0
    ok_streak: int = 0
    fail_streak: int = 0
    sent: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        self.limit = float(self.max_limit)

    def has_slot(self, now: float) -> bool:
        return self.in_flight < max(1, int(self.limit)) and now >= self.paused_until

    def on_ok(self) -> None:
        self.fail_streak = 0
        self.ok_streak += 1
        if self.ok_streak >= 25 and self.limit < self.max_limit:
            self.limit, self.ok_streak = min(self.max_limit, self.limit + 1), 0

    def on_retry(self, status: int | None, retry_after: float | None, policy: RetryPolicy, now: float) -> None:
        """A retryable failure here: a 429 cuts the limit; a 429 or a second failure in a row pauses the server
        (for Retry-After, else for a back-off that grows with the failures in a row)."""
        self.failed += 1
        self.fail_streak += 1
        self.ok_streak = 0
        if status == 429:
            self.limit = max(1.0, self.limit * 0.75)
        if status == 429 or self.fail_streak >= 2:
            pause = policy.delay(self.fail_streak, retry_after)
            self.paused_until = max(self.paused_until, now + pause)


@dataclass
class RetryPolicy:
    max_retries: int = 6
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_RETRY_AFTER_S)
        base = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
        return base * (0.5 + random.random() / 2)


class Budget:
    """Money in USD: what is spent (committed) plus what in-flight jobs could cost at most stays within ``limit``."""

    def __init__(self, limit: float | None, spent: float = 0.0) -> None:
        self.limit, self.spent, self.reserved = limit, spent, 0.0

    def reserve(self, bound: float) -> bool:
        if self.limit is not None and self.spent + self.reserved + bound > self.limit:
            return False
        self.reserved += bound
        return True

    def settle(self, bound: float, cost: float) -> None:
        self.reserved -= bound
        self.spent += cost


@dataclass
class EngineResult:
    answered: int = 0
    failed: int = 0
    retries: int = 0
    stopped: str | None = None  # why dispatch stopped early (budget), or None
    failures: list[tuple[Job, str]] = field(default_factory=list)


SendFn = Callable[[Server, Job], Awaitable[Outcome]]
T = TypeVar("T")


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """asyncio.run(make()), also from code already inside a running event loop (a Jupyter cell), where
    asyncio.run refuses: there the coroutine runs to the end in a thread of its own, with a loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="potstill-loop") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


class Engine:
    def __init__(
        self,
        servers: list[Server],
        send: SendFn | None = None,
        policy: RetryPolicy | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.servers, self.send = servers, send
        self.policy = policy or RetryPolicy()
        self.budget = budget or Budget(None)
        self.result = EngineResult()

    async def run(
        self,
        jobs: list[Job],
        on_done: Callable[[Job, Outcome], float],
        on_event: Callable[..., None] = lambda *a, **k: None,
    ) -> EngineResult:
        """Answer every job. ``on_done`` commits one answered job and returns its cost in USD."""
        self._ready = list(reversed(jobs))  # pop() from the end keeps the input order
        self._delayed: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._cond = asyncio.Condition()
        self._res = self.result
        self._on_done, self._on_event = on_done, on_event
        workers = sum(s.max_limit for s in self.servers)
        # answers are committed (on_done) by one writer thread, so a commit never stalls the event loop and the
        # other requests in flight; a job counts as answered only once its commit has returned
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="potstill-commit")
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(min(workers, max(1, len(jobs)))):
                    tg.create_task(self._worker())
        except BaseExceptionGroup as eg:
            fatal = next((e for e in _leaves(eg) if isinstance(e, TeacherError)), None)
            raise (fatal or eg) from None
        finally:
            self._writer.shutdown(wait=True)
        return self._res

    # ------------------------------------------------------------------ workers
    async def _next_job(self) -> Job | None:
        while True:
            if self._res.stopped:
                return None
            if self._delayed and self._delayed[0][0] <= time.monotonic():
                return heapq.heappop(self._delayed)[2]
            if self._ready:
                return self._ready.pop()
            if not self._delayed:
                return None
            await asyncio.sleep(min(0.05, max(0.0, self._delayed[0][0] - time.monotonic())))

    def _pick(self, job: Job, now: float) -> Server | None:
        free = [s for s in self.servers if s.has_slot(now)]
        if len(free) > 1 and job.avoid in free:
            free.remove(job.avoid)
        return min(free, key=lambda s: s.in_flight / max(1.0, s.limit), default=None)

    async def _acquire(self, job: Job) -> Server:
        async with self._cond:
            while (srv := self._pick(job, time.monotonic())) is None:
                now = time.monotonic()
                waits = [s.paused_until - now for s in self.servers if s.paused_until > now]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._cond.wait(), timeout=max(0.001, min(waits)) if waits else None)
            srv.in_flight += 1
            srv.sent += 1
            return srv

    async def _release(self, srv: Server) -> None:
        async with self._cond:
            srv.in_flight -= 1
            self._cond.notify_all()

    async def _worker(self) -> None:
        while (job := await self._next_job()) is not None:
            if not self.budget.reserve(job.cost_bound):
                self._res.stopped = "budget"
                self._ready.append(job)
                return
            srv = await self._acquire(job)
            try:
                assert self.send is not None
                out = await self.send(srv, job)
            except Exception as exc:  # whatever one request meets is that request's problem: it retries, then fails
                out = Outcome("retry", error=f"unexpected {type(exc).__name__} from {srv.url}: {str(exc)[:300]}")
            finally:
                await self._release(srv)
            cost = 0.0
            try:
                if out.kind == "ok":
                    loop = asyncio.get_running_loop()
                    cost = await loop.run_in_executor(self._writer, self._on_done, job, out)
                self._settle(srv, job, out)
            finally:
                self.budget.settle(job.cost_bound, cost)

    def _settle(self, srv: Server, job: Job, out: Outcome) -> None:
        if out.kind == "ok":  # already committed by on_done, all but the refused rows
            srv.on_ok()
            self._res.answered += len(job.items) - len(out.refused)
            for i, why in sorted(out.refused.items()):
                part = Job([job.items[i]], job.body, attempts=job.attempts + 1)
                self._res.failed += 1
                self._res.failures.append((part, why))
                self._on_event("row_failed", job=part, server=srv.url, status=out.status, error=why)
            return
        if out.kind == "fatal":
            self._res.stopped = "fatal"
            raise TeacherError(out.error)
        job.attempts += 1
        if out.kind == "retry" and job.attempts <= self.policy.max_retries:
            delay = self.policy.delay(job.attempts, out.retry_after)
            srv.on_retry(out.status, out.retry_after, self.policy, time.monotonic())
            job.avoid = srv
            self._res.retries += 1
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._seq), job))
            self._on_event(
                "retry", server=srv.url, status=out.status, error=out.error, attempt=job.attempts, delay_s=delay
            )
            return
        if out.kind == "retry":
            srv.on_retry(out.status, out.retry_after, self.policy, time.monotonic())
        msg = out.error if out.kind == "fail" else f"{out.error} (gave up after {job.attempts} attempts)"
        self._res.failed += len(job.items)
        self._res.failures.append((job, msg))
        self._on_event("row_failed", job=job, server=srv.url, status=out.status, error=msg)


def _leaves(eg: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for e in eg.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out
