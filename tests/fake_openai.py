"""A fake OpenAI-compatible chat-completions server: real HTTP on 127.0.0.1, deterministic answers, faults on demand.

    with FakeOpenAI(api_key="sk-test", delay_s=0.0) as srv:      # a thread with its own event loop
        srv.base_url                                              # http://127.0.0.1:<port>/v1
        srv.inject("429", "500", "reset")                         # the next three requests fail this way
        srv.fault_fn = lambda body, attempt: "503" if attempt == 0 else None   # per-request rule
        srv.log                                                   # one Entry per request, in arrival order

    python tests/fake_openai.py --delay 0.1                       # standalone (benchmarks): prints its port

Answers: "Answer: <8 hex of sha256(last user message, seed)>", so a request always gets the same answer (or
``srv.answer_fn(body)``'s text; ``srv.logprob_fn(body)``: every token's logprob). Usage
counts whitespace-separated words. `logprobs`/`top_logprobs` and `n` are honoured. Azure paths
(/openai/deployments/<name>/chat/completions?api-version=...) are served too, with the key in `api-key`.

Scoring (vLLM's /v1/completions with ``prompt_logprobs``): only with ``score_fn(ids, k)`` set, which returns per
prompt position None or {token id: logprob} (``decode_fn(id)`` adds each entry's decoded_token); without it
/v1/completions gets a chat answer (no prompt_logprobs), like a server that cannot score given tokens.

Faults (names for `inject` and `fault_fn`): "429" (with Retry-After: retry_after_s), "500", "503", "400", "401",
"timeout" (answers after hang_s), "reset" (closes the connection without a response), "malformed" (200 with
broken JSON), "empty_choices" (200 with "choices": []), "length" (200, finish_reason "length").

Responses that are not what the API promises (MALFORMED; written byte by byte, so headers may lie):
    "retry_after_word"  429 with Retry-After: soon           "retry_after_unit"  429 with Retry-After: <retry_after_s>s
    "html_502"          502 with an nginx HTML page          "choices_not_list"  200, "choices": {"0": {...}}
    "no_message"        200, a choice without "message"      "content_filter"    200, content null, "content_filter"
    "null_content"      200, content null, "stop"            "json_array"        200, a top-level JSON array
    "bad_utf8"          200, invalid UTF-8 in the answer      "lying_gzip"        Content-Encoding: gzip, plain body
    "short_body"        Content-Length 100 bytes too long, then the connection closes
    "logprob_missing"   a logprobs entry without "logprob"   "logprob_types"     "logprob": "high", top_logprobs a dict
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MALFORMED = (
    "retry_after_word",
    "retry_after_unit",
    "html_502",
    "choices_not_list",
    "no_message",
    "content_filter",
    "null_content",
    "json_array",
    "bad_utf8",
    "lying_gzip",
    "short_body",
    "logprob_missing",
    "logprob_types",
)
FAULTS = ("429", "500", "503", "400", "401", "timeout", "reset", "malformed", "empty_choices", "length", *MALFORMED)
HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
    b"<hr><center>nginx/1.25.3</center>\r\n</body>\r\n</html>\r\n"
)


@dataclass
class Entry:
    """One request as the server saw it. ``row`` identifies the prompt+sample: (last user message, seed)."""

    ts: float
    path: str
    body: dict[str, Any]
    row: str
    attempt: int
    outcome: str  # "ok" or a fault name
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)


def answer_text(body: dict[str, Any]) -> str:
    user = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
    h = hashlib.sha256(f"{user}|{body.get('seed')}".encode()).hexdigest()[:8]
    return f"Answer: {h}"


def row_id(body: dict[str, Any]) -> str:
    user = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
    return f"{user}|{body.get('seed')}"


@dataclass
class Raw:
    """A response written exactly as given (status line, headers, body); the connection closes after it."""

    data: bytes


def _raw(status: str, headers: dict[str, str], payload: bytes, length: int | None = None) -> Raw:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(payload) if length is None else length}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return Raw("\r\n".join([*head, "", ""]).encode() + payload)


def _logprobs(text: str, k: int, lp: float | None = None) -> dict[str, Any]:
    content = []
    for i, tok in enumerate(text.split(" ")):
        piece = tok if i == 0 else " " + tok
        top = [{"token": piece, "logprob": -0.01 * (i + 1) if lp is None else lp}]
        top += [{"token": f"<alt{j}>", "logprob": -1.0 - j - 0.1 * i} for j in range(1, k)]
        content.append({"token": piece, "logprob": top[0]["logprob"], "top_logprobs": top[:k]})
    return {"content": content}


Reply = tuple[int, dict[str, str], bytes] | Raw | None


class FakeOpenAI:
    def __init__(
        self,
        api_key: str | None = None,
        delay_s: float = 0.0,
        retry_after_s: float = 0.05,
        hang_s: float = 5.0,
        model: str | None = None,
        score_fn: Callable[[list[int], int], list[dict[int, float] | None]] | None = None,
        decode_fn: Callable[[int], str] | None = None,
    ) -> None:
        self.score_fn, self.decode_fn = score_fn, decode_fn
        self.api_key, self.delay_s, self.retry_after_s, self.hang_s, self.model = (
            api_key,
            delay_s,
            retry_after_s,
            hang_s,
            model,
        )
        self.log: list[Entry] = []
        self.queue: collections.deque[str] = collections.deque()
        self.fault_fn: Callable[[dict[str, Any], int], str | None] | None = None
        # scripted answers: body -> the answer's text (default answer_text), body -> each token's logprob
        self.answer_fn: Callable[[dict[str, Any]], str] | None = None
        self.logprob_fn: Callable[[dict[str, Any]], float] | None = None
        self.attempts: collections.Counter[str] = collections.Counter()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------------ control
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inject(self, *faults: str) -> None:
        for f in faults:
            assert f in FAULTS, f
        self.queue.extend(faults)

    def completed_rows(self) -> list[str]:
        return [e.row for e in self.log if e.outcome in ("ok", "length")]

    def start(self) -> FakeOpenAI:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop and self._server:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)
        if self._loop:
            self._loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    # ------------------------------------------------------------------ HTTP
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                reply = await self._handle(target, headers, raw)
                if reply is None:  # "reset": drop the connection without answering
                    writer.transport.abort()
                    return
                if isinstance(reply, Raw):  # byte-exact: may promise more than it sends, so close after it
                    writer.write(reply.data)
                    await writer.drain()
                    return
                status, extra, payload = reply
                reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many"}
                out = [f"HTTP/1.1 {status} {reason.get(status, 'Error')}", f"Content-Length: {len(payload)}"]
                out += ["Content-Type: application/json", *(f"{k}: {v}" for k, v in extra.items()), "", ""]
                writer.write("\r\n".join(out).encode() + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, target: str, headers: dict[str, str], raw: bytes) -> Reply:
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return 400, {}, _error("request body is not JSON")
        row = row_id(body)
        attempt = self.attempts[row]
        self.attempts[row] += 1
        given = headers.get("api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        fault = self.queue.popleft() if self.queue else (self.fault_fn(body, attempt) if self.fault_fn else None)
        if fault is None and self.api_key is not None and given != self.api_key:
            fault = "401"
        entry = Entry(time.time(), target, body, row, attempt, fault or "ok", None, _safe(headers))
        self.log.append(entry)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        scoring = self.score_fn is not None and target.endswith("/v1/completions") and "prompt_logprobs" in body
        reply = self._score(body) if scoring and fault is None else self._reply(fault, body, given)
        entry.status = int(reply.data.split(b" ", 2)[1]) if isinstance(reply, Raw) else reply[0] if reply else None
        if fault == "timeout":
            await asyncio.sleep(self.hang_s)
        return reply

    def _reply(self, fault: str | None, body: dict[str, Any], key: str) -> Reply:
        if fault in MALFORMED:
            return self._malformed(fault, body)
        match fault:
            case "reset":
                return None
            case "429":
                return 429, {"Retry-After": str(self.retry_after_s)}, _error("Rate limit reached, retry later")
            case "500" | "503":
                return int(fault), {}, _error("The server had an error while processing your request")
            case "400":
                return 400, {}, _error(f"This model's maximum context length is 8 tokens (fake; key {key or '-'})")
            case "401":
                return 401, {}, _error(f"Incorrect API key provided: {key}. Find your API key in your account")
            case "malformed":
                return 200, {}, b'{"id": "x", "choices": [{"message": '
            case "empty_choices":
                return 200, {}, json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode()
        answer = self.answer_fn or answer_text
        text = answer(body)
        finish = "stop"
        if fault == "length":
            text, finish = text.split(" ")[0], "length"
        n = int(body.get("n") or 1)
        choices = []
        for i in range(n):
            t = text if i == 0 else answer({**body, "seed": f"{body.get('seed')}/{i}"})
            ch: dict[str, Any] = {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish}
            if body.get("logprobs"):
                lp = self.logprob_fn(body) if self.logprob_fn else None
                ch["logprobs"] = _logprobs(t, int(body.get("top_logprobs") or 1), lp)
            choices.append(ch)
        prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        completion = sum(len(c["message"]["content"].split()) for c in choices)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        out = {"id": "chatcmpl-fake", "object": "chat.completion", "model": body.get("model"), "choices": choices}
        return 200, {}, json.dumps({**out, "usage": usage}).encode()

    def _score(self, body: dict[str, Any]) -> Reply:
        assert self.score_fn is not None
        ids = [int(i) for i in body["prompt"]]
        entries: list[dict[str, Any] | None] = []
        for row in self.score_fn(ids, int(body["prompt_logprobs"])):
            if row is None:
                entries.append(None)
                continue
            ranked = sorted(row.items(), key=lambda kv: -kv[1])
            entry = {str(i): {"logprob": lp, "rank": n + 1} for n, (i, lp) in enumerate(ranked)}
            if self.decode_fn is not None:
                for i, e in entry.items():
                    e["decoded_token"] = self.decode_fn(int(i))
            entries.append(entry)
        choice = {"index": 0, "text": "x", "finish_reason": "length", "prompt_logprobs": entries}
        usage = {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1}
        out = {"id": "cmpl-fake", "object": "text_completion", "model": body.get("model"), "choices": [choice]}
        return 200, {}, json.dumps({**out, "usage": usage}).encode()

    def _malformed(self, fault: str, body: dict[str, Any]) -> Reply:
        good = self._reply(None, body, "")
        assert isinstance(good, tuple)
        answer = json.loads(good[2])
        choice = answer["choices"][0]
        match fault:
            case "retry_after_word":
                return 429, {"Retry-After": "soon"}, _error("Rate limit reached, retry later")
            case "retry_after_unit":
                return 429, {"Retry-After": f"{self.retry_after_s}s"}, _error("Rate limit reached, retry later")
            case "html_502":
                return _raw("502 Bad Gateway", {"Content-Type": "text/html", "Server": "nginx"}, HTML_502)
            case "choices_not_list":
                answer["choices"] = {"0": choice}
            case "no_message":
                del choice["message"]
            case "content_filter" | "null_content":
                choice["message"]["content"] = None
                choice["finish_reason"] = "content_filter" if fault == "content_filter" else "stop"
            case "json_array":
                answer = [answer]
            case "bad_utf8":
                payload = json.dumps(answer).encode().replace(b"Answer: ", b"Answer: \xff\xfe", 1)
                return _raw("200 OK", {"Content-Type": "application/json"}, payload)
            case "lying_gzip":
                headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
                return _raw("200 OK", headers, json.dumps(answer).encode())
            case "short_body":
                payload = json.dumps(answer).encode()
                return _raw("200 OK", {"Content-Type": "application/json"}, payload, length=len(payload) + 100)
            case "logprob_missing" | "logprob_types":
                content = _logprobs(choice["message"]["content"], int(body.get("top_logprobs") or 2))["content"]
                if fault == "logprob_missing":
                    del content[0]["top_logprobs"][0]["logprob"]
                else:
                    content[0]["top_logprobs"][0]["logprob"] = "high"
                    content[-1]["top_logprobs"] = {"token": "x"}
                choice["logprobs"] = {"content": content}
        return 200, {}, json.dumps(answer).encode()


def _error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "fake", "code": None}}).encode()


def _safe(headers: dict[str, str]) -> dict[str, str]:
    return {k: ("<redacted>" if k in ("authorization", "api-key") else v) for k, v in headers.items()}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="serve the fake chat-completions API until killed")
    ap.add_argument("--delay", type=float, default=0.0, help="service latency per request, seconds")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    srv = FakeOpenAI(delay_s=args.delay)
    srv.port = args.port
    srv.start()
    print(srv.port, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
