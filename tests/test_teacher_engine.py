"""The engine alone (no HTTP): back-off, Retry-After, adaptive concurrency, failure isolation, budget."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from potstill.errors import TeacherError
from potstill.teachers.engine import Budget, Engine, Job, Outcome, RetryPolicy, Server
from potstill.teachers.openai import classify, retry_after


def run(engine: Engine, jobs: list[Job]) -> list[Job]:
    done: list[Job] = []
    asyncio.run(engine.run(jobs, on_done=lambda j, o: done.append(j) or 0.0))
    return done


def test_retry_after_is_honoured_and_the_row_is_answered() -> None:
    starts: list[float] = []

    async def send(srv: Server, job: Job) -> Outcome:
        starts.append(time.monotonic())
        if len(starts) == 1:
            return Outcome("retry", status=429, error="slow down", retry_after=0.2)
        return Outcome("ok", answers=["a"])

    eng = Engine([Server("s", 4)], send, RetryPolicy(max_retries=3, backoff_s=0.001))
    done = run(eng, [Job(["row"], {})])
    assert len(done) == 1 and eng.result.retries == 1 and eng.result.answered == 1
    assert starts[1] - starts[0] >= 0.2


def test_429_cuts_the_limit_and_successes_grow_it_back() -> None:
    srv = Server("s", 8)
    srv.on_retry(429, None, RetryPolicy(backoff_s=0.001), time.monotonic())
    assert srv.limit == 6
    for _ in range(25):
        srv.on_ok()
    assert srv.limit == 7
    for _ in range(100):
        srv.on_ok()
    assert srv.limit == 8  # never above the configured limit


def test_concurrency_never_exceeds_the_limit_and_failures_stay_per_row() -> None:
    in_flight, peak = 0, 0

    async def send(srv: Server, job: Job) -> Outcome:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        if job.items[0] % 10 == 3:
            return Outcome("fail", status=400, error="bad row")
        if job.items[0] % 10 == 5 and job.attempts == 0:
            return Outcome("retry", status=500, error="oops")
        return Outcome("ok", answers=["a"])

    eng = Engine([Server("a", 3), Server("b", 2)], send, RetryPolicy(max_retries=2, backoff_s=0.001))
    done = run(eng, [Job([i], {}) for i in range(100)])
    assert peak <= 5
    assert sorted(j.items[0] for j in done) == [i for i in range(100) if i % 10 != 3]
    assert sorted(j.items[0] for j, _ in eng.result.failures) == list(range(3, 100, 10))
    assert eng.result.retries == 10


def test_fatal_stops_everything() -> None:
    calls = 0

    async def send(srv: Server, job: Job) -> Outcome:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return Outcome("fatal", status=401, error="check FAKE_KEY")

    with pytest.raises(TeacherError, match="check FAKE_KEY"):
        run(Engine([Server("s", 4)], send), [Job([i], {}) for i in range(50)])
    assert calls <= 4


def test_budget_never_overspends() -> None:
    async def send(srv: Server, job: Job) -> Outcome:
        await asyncio.sleep(0)
        return Outcome("ok", answers=["a"])

    eng = Engine([Server("s", 4)], send, budget=Budget(1.0, spent=0.25))
    done: list[Job] = []
    asyncio.run(eng.run([Job([i], {}, cost_bound=0.1) for i in range(20)], on_done=lambda j, o: done.append(j) or 0.1))
    assert eng.result.stopped == "budget" and len(done) == 7 and eng.budget.spent <= 1.0


def test_http_classification() -> None:
    req = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    r = httpx.Response(429, headers={"retry-after-ms": "250"}, json={"error": {"message": "rate"}}, request=req)
    assert retry_after(r) == 0.25
    assert retry_after(httpx.Response(503, headers={"retry-after": "3"}, request=req)) == 3.0
    out = classify(r, 1, "K")
    assert out.kind == "retry" and out.retry_after == 0.25 and "rate" in out.error
    assert (
        classify(httpx.Response(404, json={"error": {"message": "no such model"}}, request=req), 1, "K").kind == "fail"
    )
    assert classify(httpx.Response(409, request=req), 1, "K").kind == "retry"
    fatal = classify(httpx.Response(403, request=req), 1, "MY_VAR")
    assert fatal.kind == "fatal" and "MY_VAR" in fatal.error
    ok = {"choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "length"}], "usage": {}}
    out = classify(httpx.Response(200, json=ok, request=req), 1, "K")
    assert out.kind == "ok" and out.answers[0].text == "hi" and out.answers[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("teacher", "generation", "message"),
    [
        ({"budget_usd": 5}, {}, "teacher: budget_usd needs input_price_per_mtok"),
        ({"base_url": "api.example.com/v1"}, {}, "teacher.base_url: base_url must start with http"),
        ({"api_key_env": "sk-abc123"}, {}, "teacher.api_key_env: String should match pattern"),
        ({}, {"logprobs": 21}, "generation.logprobs: Input should be less than or equal to 20"),
        ({"timeot_s": 3}, {}, "teacher.timeot_s: unknown field 'timeot_s'; did you mean 'timeout_s'?"),
    ],
)
def test_remote_teacher_spec_errors(teacher: dict, generation: dict, message: str) -> None:
    from potstill.config import validate_spec
    from potstill.errors import ConfigError

    d = {
        "name": "x",
        "task_type": "qa",
        "teacher": {"kind": "openai", "model": "m", **teacher},
        "student": "s",
        "data": {"training": "a", "validation": "b"},
        "generation": generation,
    }
    with pytest.raises(ConfigError) as err:
        validate_spec(d)
    assert message in str(err.value)
