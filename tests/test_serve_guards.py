"""potstill serve under pressure: a bounded queue (503 + Retry-After), a per-request timeout (504), decoding that
stops when the client leaves, a 413 a client can read after sending 20 MB, and no keyless non-loopback host."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from _serving import Gated, Stalling, running, wait_until
from conftest import QUESTIONS

KEY = "sk-guards-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def lm(tiny_models: dict[str, Path]) -> Any:
    from potstill.server.backends import load_model

    return load_model(tiny_models["teacher"], device="cpu")


def serving(model: Any, **kw: Any) -> Any:
    from potstill.server.app import create_app
    from potstill.server.protocol import Limits

    kw.setdefault("limits", Limits(max_body_bytes=4096, max_tokens=64))
    return create_app(model, "tiny", api_key=KEY, **kw)


def body(stream: bool = False, max_tokens: int = 8) -> dict[str, Any]:
    msgs = [{"role": "user", "content": QUESTIONS[0][0]}]
    return {"messages": msgs, "max_tokens": max_tokens, "temperature": 0, "stream": stream}


def post(url: str, payload: dict[str, Any], out: list[httpx.Response] | None = None) -> httpx.Response:
    r = httpx.post(f"{url}/chat/completions", json=payload, headers=AUTH, timeout=120)
    if out is not None:
        out.append(r)
    return r


def in_thread(url: str, payload: dict[str, Any], out: list[httpx.Response]) -> threading.Thread:
    t = threading.Thread(target=post, args=(url, payload, out), daemon=True)
    t.start()
    return t


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if code is not None:
        assert err["code"] == code
    return err


def test_a_full_queue_answers_503_with_retry_after(lm: Any) -> None:
    gated = Gated(lm)
    app = serving(gated, max_batch=1, max_queue=1)
    engine = app.state.engine
    with running(app) as url:
        done: list[httpx.Response] = []
        first = in_thread(url, body(), done)
        wait_until(lambda: len(gated.batches) == 1, "the first request to be decoding")
        second = in_thread(url, body(), done)
        wait_until(lambda: engine.pending == 1, "the second request to be waiting")
        for stream in (False, True):  # a stream is refused before its 200, with the same 503
            r = post(url, body(stream=stream))
            assert_error(r, 503, "queue_full")
            assert int(r.headers["retry-after"]) >= 1
        assert httpx.get(url.removesuffix("/v1") + "/health").json()["queued"] == 1
        gated.gate.set()
        first.join(60)
        second.join(60)
        assert [r.status_code for r in done] == [200, 200]
        assert all(r.json()["choices"][0]["message"]["content"].startswith("Answer") for r in done)
        assert post(url, body()).status_code == 200  # room again
        assert engine.pending == 0


def test_timeout_answers_504_and_a_waiting_request_is_never_decoded(lm: Any) -> None:
    gated = Gated(lm)
    app = serving(gated, max_batch=1, request_timeout=0.5)
    engine = app.state.engine
    with running(app) as url:
        done: list[httpx.Response] = []
        first = in_thread(url, body(), done)
        wait_until(lambda: len(gated.batches) == 1, "the first request to be decoding")
        second = in_thread(url, body(), done)
        first.join(60)
        second.join(60)
        for r in done:  # one timed out while decoding, the other while waiting for the model
            assert_error(r, 504, "timeout")
        assert engine.pending == 0  # the waiting one gave up its place
        gated.gate.set()
        wait_until(lambda: len(engine.recent) == 1, "the held batch to end")
        assert engine.recent[0].finish_reason == "cancelled" and engine.recent[0].completion_tokens == 0
        engine.close()  # the worker has now seen everything queued
        assert len(gated.batches) == 1  # the request that timed out while waiting never reached the model


@pytest.mark.parametrize("stream", [False, True])
def test_timeout_stops_a_row_mid_decoding(lm: Any, stream: bool) -> None:
    stalling = Stalling(lm, after=4)
    app = serving(stalling, request_timeout=0.5)
    engine = app.state.engine
    with running(app) as url:
        r = post(url, body(stream=stream, max_tokens=64))
        if stream:  # the 200 went out with the first chunk: the error comes as the stream's last event
            assert r.status_code == 200
            events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            assert json.loads(events[-2])["error"]["code"] == "timeout"
        else:
            assert_error(r, 504, "timeout")
        wait_until(lambda: len(engine.recent) == 1, "the row to end")
    row = engine.recent[0]
    assert row.finish_reason == "cancelled" and row.completion_tokens <= stalling.after + 1 < 64


def _raw_post(url: str, payload: dict[str, Any]) -> socket.socket:
    data = json.dumps(payload).encode()
    u = urlparse(url)
    s = socket.create_connection((u.hostname, u.port))
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {u.netloc}\r\nAuthorization: Bearer {KEY}\r\n"
    s.sendall(f"{head}Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_disconnects_stops_its_row(lm: Any, stream: bool) -> None:
    stalling = Stalling(lm, after=4)
    app = serving(stalling, request_timeout=None)
    engine = app.state.engine
    with running(app) as url:
        if stream:
            with (
                httpx.Client(timeout=60) as c,
                c.stream("POST", f"{url}/chat/completions", json=body(True, 64), headers=AUTH) as r,
            ):
                assert r.status_code == 200
                lines: Iterator[str] = r.iter_lines()
                assert next(lines).startswith("data: ")  # the stream has begun
                wait_until(stalling.stalled.is_set, "decoding to reach the stall")
        else:
            s = _raw_post(url, body(False, 64))
            wait_until(stalling.stalled.is_set, "decoding to reach the stall")
            s.close()
        wait_until(lambda: len(engine.recent) == 1, "the row to end")
    row = engine.recent[0]
    assert row.finish_reason == "cancelled" and row.completion_tokens <= stalling.after + 1 < 64


def _post_big(url: str, client: str, content: Any, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    if client == "httpx":
        r = httpx.post(f"{url}/chat/completions", content=content, headers=headers, timeout=120)
        return r.status_code, r.json()
    # urllib sends the whole body, then reads, with "Connection: close": a server that answers early and closes
    # with the body unread resets the connection before the client reads the answer
    req = urllib.request.Request(f"{url}/chat/completions", data=content, headers=headers, method="POST")
    if not isinstance(content, bytes):
        req.add_header("Transfer-Encoding", "chunked")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("client", ["httpx", "urllib"])
@pytest.mark.parametrize(("chunked", "key"), [(False, KEY), (True, KEY), (False, "sk-wrong")])
def test_a_20_mb_body_gets_a_readable_error(lm: Any, client: str, chunked: bool, key: str) -> None:
    big = b"x" * (20 << 20)
    content: Any = (big[i : i + (1 << 20)] for i in range(0, len(big), 1 << 20)) if chunked else big
    with running(serving(lm)) as url:
        h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        status, data = _post_big(url, client, content, h)
        if key == KEY:
            assert status == 413 and data["error"]["type"] == "invalid_request_error" and data["error"]["message"]
        else:  # refused before the body is read: the reply still reaches the client
            assert status == 401 and data["error"]["code"] == "invalid_api_key"
        assert post(url, body()).status_code == 200  # and the server is fine


@pytest.mark.parametrize(
    ("host", "key_env", "insecure", "ok"),
    [
        ("127.0.0.1", None, False, True),
        ("127.3.2.1", None, False, True),
        ("::1", None, False, True),
        ("[::1]", None, False, True),
        ("localhost", None, False, True),
        ("0.0.0.0", None, False, False),
        ("::", None, False, False),
        ("192.168.1.5", None, False, False),
        ("myhost.example", None, False, False),
        ("0.0.0.0", "SOME_KEY_VAR", False, True),
        ("0.0.0.0", None, True, True),
    ],
)
def test_a_non_loopback_host_needs_a_key(host: str, key_env: str | None, insecure: bool, ok: bool) -> None:
    from potstill.errors import ConfigError
    from potstill.server import check_host

    if ok:
        check_host(host, key_env, insecure)
    else:
        with pytest.raises(ConfigError, match="--insecure"):
            check_host(host, key_env, insecure)


def test_serve_checks_the_host_before_loading_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    import potstill.server as server
    from potstill.errors import ConfigError

    class Loaded(Exception):
        pass

    def fake_build_app(*args: Any, **kw: Any) -> Any:
        raise Loaded

    monkeypatch.setattr(server, "build_app", fake_build_app)
    with pytest.raises(ConfigError, match="--api-key-env"):
        server.serve("no/such/model", host="0.0.0.0")
    with pytest.raises(Loaded):
        server.serve("no/such/model", host="0.0.0.0", insecure=True)


def test_cli_passes_the_guards_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import potstill.server as server
    from potstill.cli import app

    seen: dict[str, Any] = {}
    monkeypatch.setattr(server, "serve", lambda path, **kw: seen.update(kw))
    args = ["serve", "m", "--max-queue", "3", "--request-timeout", "2.5", "--insecure", "--host", "0.0.0.0"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (seen["max_queue"], seen["request_timeout"], seen["insecure"], seen["host"]) == (3, 2.5, True, "0.0.0.0")


def test_cli_refuses_a_keyless_public_host(tmp_path: Path) -> None:
    from conftest import run_cli

    # a folder with no model: refused for the host before anything loads (a server that did start fails fast)
    r = run_cli("serve", str(tmp_path / "no-model"), "--host", "0.0.0.0", "--port", "1", timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--api-key-env" in lines[0], r.stderr
