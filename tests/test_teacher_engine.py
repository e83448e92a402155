"""The engine alone (no HTTP): back-off, Retry-After, adaptive concurrency, failure isolation, budget."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from potstill.errors import TeacherError
from potstill.teachers.engine import Budget, Engine, Job, Outcome, RetryPolicy, Server
from potstill.teachers.wire import classify, retry_after


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


def test_an_exception_in_one_request_retries_that_job_only() -> None:
    """Whatever send raises (a decoder, a KeyError in a parser) is a retry for its job; the others go on."""
    calls: dict[int, int] = {}

    async def send(srv: Server, job: Job) -> Outcome:
        i = job.items[0]
        calls[i] = calls.get(i, 0) + 1
        await asyncio.sleep(0.001)
        if i == 3:
            raise KeyError("logprob")  # every time: gives up with the reason
        if i == 5 and calls[i] == 1:
            raise httpx.DecodingError("Error -3 while decompressing data")
        if i == 7 and calls[i] == 1:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return Outcome("ok", answers=["a"])

    eng = Engine([Server("s", 4)], send, RetryPolicy(max_retries=2, backoff_s=0.001))
    done = run(eng, [Job([i], {}) for i in range(10)])
    assert sorted(j.items[0] for j in done) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    ((job, why),) = eng.result.failures
    assert job.items == [3] and calls[3] == 3
    assert why == "unexpected KeyError from s: 'logprob' (gave up after 3 attempts)"
    assert eng.result.retries == 4 and (calls[5], calls[7]) == (2, 2)


def test_refused_rows_fail_alone_and_the_rest_of_the_job_is_kept() -> None:
    async def send(srv: Server, job: Job) -> Outcome:
        return Outcome("ok", answers=["a", "", "c"], refused={1: "blocked by the content filter"})

    events: list[tuple[str, dict]] = []
    eng = Engine([Server("s", 2)], send)
    done: list[Job] = []
    asyncio.run(
        eng.run([Job(["r0", "r1", "r2"], {})], lambda j, o: done.append(j) or 0.0, lambda k, **f: events.append((k, f)))
    )
    assert len(done) == 1 and (eng.result.answered, eng.result.failed, eng.result.retries) == (2, 1, 0)
    ((job, why),) = eng.result.failures
    assert job.items == ["r1"] and why == "blocked by the content filter"
    assert [(k, f["job"].items) for k, f in events] == [("row_failed", ["r1"])]


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "1.5s"}, 1.5),
        ({"retry-after": " 3 S "}, 3.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "-5"}, None),
        ({"retry-after": "Wed, 99 Foo 2015 25:61:00 GMT"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past: go now
        ({"retry-after-ms": "oops", "retry-after": "4"}, 4.0),
        ({"retry-after-ms": "250ms"}, 0.25),
        ({}, None),
    ],
)
def test_retry_after_never_raises(headers: dict[str, str], seconds: float | None) -> None:
    req = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    assert retry_after(httpx.Response(429, headers=headers, request=req)) == seconds


def test_retry_after_in_the_future_is_a_wait() -> None:
    from email.utils import formatdate

    req = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    r = httpx.Response(503, headers={"retry-after": formatdate(time.time() + 30, usegmt=True)}, request=req)
    assert 20 < (retry_after(r) or 0) <= 30


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([{"choices": []}], "the body is a JSON array, not an object"),
        ({"choices": "none"}, "\"choices\" is text ('none'), not a list"),
        ({"choices": [None]}, "a choice is missing, not an object"),
        ({"choices": [{"message": "hi"}]}, "choice 0: \"message\" is text ('hi')"),
        ({"choices": [{"message": {"content": 7}}]}, '"content" is a number (7), not text'),
        ({"error": {"message": "overloaded"}}, "HTTP 200 carrying an error: overloaded"),
        ({"choices": [{"message": {"content": "x"}, "logprobs": [1]}]}, "logprobs is a JSON array"),
        (
            {"choices": [{"message": {"content": "x"}, "logprobs": {"content": [{"top_logprobs": [{"token": "x"}]}]}}]},
            'choice 0: logprobs entry 0: top_logprobs[0] has no "logprob"',
        ),
        (
            {"choices": [{"message": {"content": "x"}, "logprobs": {"content": [{"token": 5}]}}]},
            '"token" is a number (5), not text',
        ),
    ],
)
def test_a_200_of_the_wrong_shape_is_a_retry_with_a_reason(body: object, says: str) -> None:
    req = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    out = classify(httpx.Response(200, json=body, request=req), 1, "K")
    assert out.kind == "retry" and out.status == 200 and says in out.error, out.error


def test_a_200_that_is_usable_despite_odd_fields() -> None:
    req = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    choices = [
        {"index": "1", "message": {"content": [{"type": "text", "text": "parts"}]}, "finish_reason": None},
        {"index": 1, "message": {"content": None, "refusal": "I can't help"}, "finish_reason": "stop"},
    ]
    body = {"choices": choices, "usage": {"prompt_tokens": "many", "completion_tokens": 4}}
    out = classify(httpx.Response(200, json=body, request=req), 2, "K")
    assert out.kind == "ok" and [a.text for a in out.answers] == ["parts", ""]
    assert out.answers[0].finish_reason == "stop" and out.answers[0].prompt_tokens is None
    assert [a.completion_tokens for a in out.answers] == [2, 2]
    assert out.refused == {1: 'the teacher returned no content (finish_reason "stop"): I can\'t help'}
    lone = httpx.Response(200, content=b'{"choices": [{"message": {"content": "a\\ud800b"}}]}', request=req)
    assert classify(lone, 1, "K").answers[0].text == "a\ufffdb"  # storable: the cache is UTF-8


def test_an_html_error_page_becomes_its_title() -> None:
    req = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502</h1><hr>nginx</body></html>"
    out = classify(httpx.Response(502, content=page, headers={"content-type": "text/html"}, request=req), 1, "K")
    assert out.kind == "retry" and out.error == "HTTP 502 from 127.0.0.1:1: 502 Bad Gateway"
    bad = httpx.Response(200, content=b'{"choices": "\xff"}', request=req)
    assert "not valid UTF-8 (byte 0xff at offset 13)" in classify(bad, 1, "K").error


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
