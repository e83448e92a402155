"""potstill serve over real HTTP: the official openai client, abuse cases, concurrency, graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from _serving import free_port, running
from conftest import QUESTIONS

KEY_ENV = "POTSTILL_TEST_SERVE_KEY"
KEY = "sk-test-0123456789"
MODEL = "tiny-student"


@pytest.fixture(scope="module")
def server(tiny_models: dict[str, Path]) -> Any:
    from potstill.server import build_app

    os.environ[KEY_ENV] = KEY
    app = build_app(
        tiny_models["teacher"],
        model_name=MODEL,
        api_key_env=KEY_ENV,
        max_tokens=32,
        max_messages=4,
        max_body_bytes=4096,
        max_batch=8,
    )
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def expected(tiny_models: dict[str, Path]) -> dict[str, str]:
    """Greedy answers of the served model computed by Hugging Face generate(), one prompt at a time."""
    from potstill.teachers.hf import LocalModel

    lm = LocalModel.load(tiny_models["teacher"])
    return {q: lm.generate([[{"role": "user", "content": q}]], max_new_tokens=16)[0].text for q, _ in QUESTIONS}


def client(url: str, key: str = KEY) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=url, api_key=key, max_retries=0)


def ask(c: Any, q: str, **kw: Any) -> Any:
    return c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": q}], max_tokens=16, temperature=0, **kw
    )


def test_completion_with_the_openai_client(server: Any, expected: dict[str, str]) -> None:
    url, _ = server
    q = QUESTIONS[0][0]
    r = ask(client(url), q)
    assert r.object == "chat.completion" and r.model == MODEL
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip() == expected[q] and expected[q].startswith("Answer:")
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    models = client(url).models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_streaming_gives_the_same_text(server: Any) -> None:
    url, _ = server
    q = QUESTIONS[3][0]
    whole = ask(client(url), q).choices[0].message.content
    chunks = list(ask(client(url), q, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really incremental
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_length_stop_logprobs_and_n(server: Any) -> None:
    url, _ = server
    c = client(url)
    q = QUESTIONS[1][0]
    r = ask(c, q, logprobs=True, top_logprobs=3, n=2)
    assert len(r.choices) == 2 and r.choices[0].message.content == r.choices[1].message.content
    lp = r.choices[0].logprobs.content
    assert len(lp) == r.usage.completion_tokens // 2
    for tok in lp:
        assert len(tok.top_logprobs) == 3 and tok.logprob <= 0
        assert tok.top_logprobs[0].logprob >= tok.top_logprobs[1].logprob >= tok.top_logprobs[2].logprob
        assert tok.logprob == pytest.approx(tok.top_logprobs[0].logprob)  # greedy picks the most likely
    short = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": q}], max_tokens=2, temperature=0
    )
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    stop = ask(c, q, stop=[":"])
    assert stop.choices[0].message.content == "Answer" and stop.choices[0].finish_reason == "stop"


def test_keys_are_enforced(server: Any) -> None:
    from openai import AuthenticationError

    url, _ = server
    with pytest.raises(AuthenticationError) as err:
        ask(client(url, key="sk-wrong"), "hi")
    assert err.value.status_code == 401 and KEY not in str(err.value.body)
    r = httpx.post(f"{url}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/models").status_code == 401
    assert httpx.get(url.removesuffix("/v1") + "/health").json()["status"] == "ok"


def _post(url: str, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})}
    return httpx.post(f"{url}/chat/completions", content=content, headers=h)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b'{"messages": [', 400, None),  # malformed JSON
        (b"[1, 2]", 400, None),  # JSON, not an object
        (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 33}).encode(), 400, "max_tokens"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}] * 5}).encode(), 400, "messages"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": 9}).encode(), 400, "n"),
        (json.dumps({"messages": "hello"}).encode(), 422, "messages"),
        (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}).encode(), 422, "messages.0.role"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}).encode(), 422, "temperature"),
        (json.dumps({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}).encode(), 404, "model"),
        (json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]}).encode(), 413, None),
    ],
)
def test_bad_requests_get_openai_style_errors(server: Any, body: bytes, status: int, param: str | None) -> None:
    url, _ = server
    r = _post(url, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] in ("invalid_request_error", "not_found_error")
    assert err["param"] == param


def test_oversized_chunked_body_is_cut_off(server: Any) -> None:
    url, _ = server

    def parts() -> Any:
        for _ in range(100):
            yield b" " * 100  # no Content-Length: the server counts as it reads

    r = httpx.post(f"{url}/chat/completions", content=parts(), headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 413


def test_fifty_concurrent_requests_are_answered_correctly(server: Any, expected: dict[str, str]) -> None:
    url, app = server
    c = client(url)
    engine = app.state.engine
    before = engine.batches
    qs = [QUESTIONS[i % len(QUESTIONS)][0] for i in range(50)]

    def one(i: int) -> tuple[str, str]:
        stream = i % 5 == 0
        if stream:
            text = "".join(ch.choices[0].delta.content or "" for ch in ask(c, qs[i], stream=True) if ch.choices)
        else:
            text = ask(c, qs[i]).choices[0].message.content
        return qs[i], text

    with ThreadPoolExecutor(50) as pool:
        got = list(pool.map(one, range(50)))
    assert [t.strip() for _, t in got] == [expected[q] for q, _ in got]
    assert engine.batches - before < 50 and engine.max_rows_seen > 1  # requests really were batched
    assert ask(c, QUESTIONS[0][0]).choices[0].message.content.strip() == expected[QUESTIONS[0][0]]


def test_cli_serve_shuts_down_gracefully(tiny_models: dict[str, Path]) -> None:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", KEY_ENV: KEY}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "potstill",
            "serve",
            str(tiny_models["teacher"]),
            "--port",
            str(port),
            "--api-key-env",
            KEY_ENV,
            "--model-name",
            MODEL,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
        c = client(f"{base}/v1")
        with ThreadPoolExecutor(16) as pool:
            futs = [pool.submit(ask, c, QUESTIONS[i % 12][0]) for i in range(16)]
            time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            outcomes = []
            for f in futs:
                try:
                    outcomes.append(f.result().choices[0].message.content)
                except Exception as exc:  # refused after shutdown began: allowed, but never a broken answer
                    outcomes.append(type(exc).__name__)
        assert proc.wait(60) == 0
        answered = [o for o in outcomes if o.startswith("Answer")]
        assert answered, outcomes
        assert all(o.startswith("Answer") or o == "APIConnectionError" for o in outcomes), outcomes
        assert KEY not in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_serve_refuses_a_missing_key_variable(tiny_models: dict[str, Path]) -> None:
    from conftest import run_cli

    r = run_cli("serve", str(tiny_models["teacher"]), "--api-key-env", "POTSTILL_NO_SUCH_VAR_XYZ")
    assert r.returncode == 2 and "POTSTILL_NO_SUCH_VAR_XYZ" in r.stderr
