"""OpenAI-compatible and Azure OpenAI teachers: the chat-completions protocol (wire.py) on top of the engine.

    failures = answer_remote(spec, rd, cache, requests, label="train")   # commits every answer to the cache

Works from inside a running event loop too (a Jupyter cell): the requests then run in a thread of their own.

Keys and tokens are read from the environment variables the spec names, sent only in headers, and scrubbed
from every message this module produces (events, errors, failure reasons).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..config import AzureOpenAITeacher, JobSpec, OpenAITeacher
from ..errors import TeacherError
from ..progress import progress
from ..run_dir import RunDir
from .cache import RequestCache, extra_fields
from .engine import Budget, Engine, Job, Outcome, RetryPolicy, Server, run_sync
from .wire import RemoteTeacher, classify, wire_body


# ---------------------------------------------------------------------------------------------- auth
def credentials(t: RemoteTeacher) -> tuple[dict[str, str], list[str]]:
    """(headers with secrets, the secret strings to scrub). TeacherError names a missing variable."""

    def env(var: str, what: str) -> str:
        val = os.environ.get(var, "")
        if not val:
            raise TeacherError(f"environment variable {var} is not set: export {var}=<{what}> (teacher: {t.kind})")
        return val

    headers, secrets = {}, []
    if isinstance(t, AzureOpenAITeacher) and t.ad_token_env:
        tok = env(t.ad_token_env, "Azure AD token")
        headers["Authorization"], secrets = f"Bearer {tok}", [tok]
    elif isinstance(t, AzureOpenAITeacher) and t.api_key_env:
        key = env(t.api_key_env, "Azure OpenAI key")
        headers["api-key"], secrets = key, [key]
    elif isinstance(t, OpenAITeacher) and t.api_key_env:
        key = env(t.api_key_env, "API key")
        headers["Authorization"], secrets = f"Bearer {key}", [key]
    for name, var in t.headers_env.items():
        headers[name] = env(var, f"value of header {name}")
        secrets.append(headers[name])
    return {**t.headers, **headers}, secrets


def key_variable(t: RemoteTeacher) -> str:
    if isinstance(t, AzureOpenAITeacher) and t.ad_token_env:
        return t.ad_token_env
    return t.api_key_env or "(none: set teacher.api_key_env to the NAME of the variable holding the key)"


def scrub(text: str, secrets: Sequence[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


# ---------------------------------------------------------------------------------------------- the driver
def cost_usd(t: RemoteTeacher, pt: int | None, ct: int | None) -> float | None:
    if t.input_price_per_mtok is None or t.output_price_per_mtok is None:
        return None
    return ((pt or 0) * t.input_price_per_mtok + (ct or 0) * t.output_price_per_mtok) / 1e6


def cost_bound(t: RemoteTeacher, body: dict[str, Any], n: int) -> float:
    """The most a request can cost: at most one token per prompt byte (+8 per message), max_tokens per answer."""
    msgs = body.get("messages", [])
    prompt = sum(len(str(m.get("content", "")).encode()) + 8 for m in msgs)
    return cost_usd(t, prompt, int(body.get("max_tokens") or 0) * n) or 0.0


def answer_remote(
    spec: JobSpec,
    rd: RunDir,
    cache: RequestCache,
    reqs: list[Any],
    label: str,
    stage: str = "generate",
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, str]:
    """Answer ``reqs`` (objects with .key, .body, .sample, .example) through the engine; return key -> failure."""
    t = spec.teacher
    assert isinstance(t, OpenAITeacher | AzureOpenAITeacher)
    headers, secrets = credentials(t)
    jobs = make_jobs(t, reqs)
    for j in jobs:
        j.cost_bound = cost_bound(t, j.body, len(j.items))
    limit = t.concurrency or spec.generation.concurrency
    servers = [Server(u, limit) for u in t.urls]
    # a named teacher (one of several) spends its own budget: only its calls count
    spent = ((cache.stats_by_teacher().get(t.name) or {}) if t.name else cache.stats()).get("cost_usd") or 0.0
    policy = RetryPolicy(t.max_retries, t.retry_backoff_s, t.max_backoff_s)
    engine = Engine(servers, policy=policy, budget=Budget(t.budget_usd, spent))
    res = engine.result

    with progress(f"teacher answers ({label})", len(reqs)) as bar:

        def on_done(job: Job, out: Outcome) -> float:
            rows, total = [], 0.0
            for i, (r, a) in enumerate(zip(job.items, out.answers, strict=True)):
                c = cost_usd(t, a.prompt_tokens, a.completion_tokens)
                total += c or 0.0  # a refused answer is paid for too, but not kept: the row fails (engine)
                if i in out.refused:
                    continue
                fields = {
                    "finish_reason": a.finish_reason,
                    "prompt_tokens": a.prompt_tokens,
                    "completion_tokens": a.completion_tokens,
                    "latency_s": out.latency_s,
                    "cost_usd": c,
                    "extra": extra_fields(a.logprobs if r.body.get("logprobs") else None, a.mean_logprob),
                }
                rows.append((r.key, r.body, a.text, fields))
            cache.put_many(rows)
            bar.advance(len(rows), retries=res.retries, failed=res.failed)
            return total

        def on_event(kind: str, job: Job | None = None, **fields: Any) -> None:
            fields = {k: scrub(v, secrets) if isinstance(v, str) else v for k, v in fields.items()}
            if job is not None:
                fields["rows"] = [{"id": getattr(r.example, "id", None), "sample": r.sample} for r in job.items]
                bar.advance(len(job.items), retries=res.retries, failed=res.failed)
            else:
                bar.advance(0, retries=res.retries, failed=res.failed)
            rd.event(stage, kind, split=label, **fields)

        async def main() -> Any:
            client = ChatClient(t, headers, secrets, transport)
            engine.send = client.send
            try:
                return await engine.run(jobs, on_done=on_done, on_event=on_event)
            finally:
                await client.aclose()

        run_sync(main)
    if res.stopped == "budget":
        raise TeacherError(
            f"budget reached: ${engine.budget.spent:.4f} spent of "
            f"{f'teacher {t.name!r}: ' if t.name else 'teacher.'}budget_usd=${t.budget_usd:g}; "
            f"{len(reqs) - res.answered - res.failed} rows not sent. Raise budget_usd and run again to resume "
            "(answered rows are cached)"
        )
    failures: dict[str, str] = {}
    for job, msg in res.failures:
        for r in job.items:
            failures[r.key] = scrub(msg, secrets)
    rd.event(stage, "teacher_done", split=label, answered=res.answered, failed=res.failed, retries=res.retries)
    return failures


class ChatClient:
    """POSTs chat-completions bodies. Each request in flight uses its own single-connection httpx client, reused
    (keep-alive) by later requests to the same server: httpx's shared pool scans all its connections on every
    request, which at 300 req/s costs more CPU than the requests themselves."""

    def __init__(
        self,
        t: RemoteTeacher,
        headers: dict[str, str],
        secrets: list[str],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.t, self.headers, self.secrets, self.transport = t, headers, secrets, transport
        self.var = key_variable(t)
        self.timeout = httpx.Timeout(t.timeout_s, connect=min(t.timeout_s, 30.0))
        self.ssl = httpx.create_ssl_context()  # one for all clients: loading the CA bundle costs ~40 ms each
        self.idle: dict[str, list[httpx.AsyncClient]] = {}
        self.clients: list[httpx.AsyncClient] = []

    def _take(self, url: str) -> httpx.AsyncClient:
        idle = self.idle.setdefault(url, [])
        if idle:
            return idle.pop()
        c = httpx.AsyncClient(
            headers=self.headers,
            timeout=self.timeout,
            transport=self.transport,
            verify=self.ssl,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        self.clients.append(c)
        return c

    async def send(self, srv: Server, job: Job) -> Outcome:
        """One request, never an exception: whatever comes back (or breaks) is an Outcome for this job alone."""
        client = self._take(srv.url)
        t0 = time.perf_counter()
        host = _host(srv)
        try:
            out = classify(await client.post(srv.url, json=job.body), len(job.items), self.var)
        except httpx.TimeoutException:
            out = Outcome("retry", error=f"no answer within timeout_s={self.t.timeout_s} from {host}")
        except httpx.TransportError as exc:  # refused, reset, or a body shorter than its Content-Length
            out = Outcome("retry", error=f"connection error with {host} ({type(exc).__name__}: {_said(exc)})")
        except httpx.DecodingError as exc:
            out = Outcome("retry", error=f"the body from {host} does not decode as its Content-Encoding says ({exc})")
        except Exception as exc:  # a response nobody foresaw: this request retries, the others go on
            out = Outcome("retry", error=f"unexpected {type(exc).__name__} with the answer of {host}: {_said(exc)}")
        finally:
            self.idle[srv.url].append(client)
        out.error = scrub(out.error, self.secrets)
        out.refused = {i: scrub(why, self.secrets) for i, why in out.refused.items()}
        out.latency_s = round(time.perf_counter() - t0, 4)
        return out

    async def aclose(self) -> None:
        for c in self.clients:
            await c.aclose()


def make_jobs(t: RemoteTeacher, reqs: list[Any]) -> list[Job]:
    """One job per request; with server_n, the samples of one prompt share a job (one request with ``n``)."""
    if not t.server_n:
        return [Job([r], wire_body(t, r.body)) for r in reqs]
    groups: dict[str, list[Any]] = {}
    for r in reqs:
        base = {k: v for k, v in r.body.items() if k != "sample"}
        groups.setdefault(repr(sorted(base.items(), key=lambda kv: kv[0])), []).append(r)
    jobs = []
    for items in groups.values():
        items.sort(key=lambda r: r.sample)
        jobs.append(Job(items, wire_body(t, {**items[0].body, "sample": 0}, n=len(items))))
    return jobs


def _host(srv: Server) -> str:
    return urlsplit(srv.url).netloc


def _said(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or "no details"
