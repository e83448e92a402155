"""The FastAPI app: /health, /v1/models, /v1/chat/completions (streaming and not), OpenAI-style errors.

    app = create_app(lm, model_id="support-bot", api_key="...", limits=Limits())   # then run it with uvicorn

Every request goes through one Engine (a worker thread and a bounded queue) that decodes with continuous
batching: a request joins those already decoding at the next step; a full queue answers 503 with Retry-After.
The body is read with a hard size cap before any JSON parsing (and the rest of a refused body is drained, so the
client reads its 413). A request that runs past ``request_timeout`` seconds (queueing included) gets a 504, and
a client that disconnects stops its rows: in both cases decoding of that request's rows stops at the next step,
while the other requests decoding beside them go on. The API key is compared in constant time and never logged
or echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..decode.text import Result, Row
from .asgi import DrainUnreadBody, Receive, wait_for_disconnect
from .backends import LoadedModel
from .engine import Engine, EngineBusy, EngineClosed, Job, threadsafe_callback
from .protocol import ApiError, ChatRequest, Limits, chunk, completion_body, new_id, parse_request, usage


def create_app(
    lm: LoadedModel,
    model_id: str,
    api_key: str | None = None,
    limits: Limits | None = None,
    max_batch: int = 8,
    max_queue: int = 64,
    request_timeout: float | None = 300.0,
) -> FastAPI:
    """``max_queue``: requests that may wait for the model (more get 503); ``request_timeout``: seconds, None = none."""
    lim = limits or Limits()
    engine = Engine(lm, max_batch=max_batch, max_queue=max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        await asyncio.to_thread(engine.close)  # uvicorn has drained open requests by now

    app = FastAPI(title="potstill", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(DrainUnreadBody)
    app.state.engine = engine
    started = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer", **exc.headers} if exc.status == 401 else exc.headers
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(ApiError(422, str(exc.errors()[:1])).body(), status_code=422)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "incorrect API key provided", code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > lim.max_body_bytes:
            raise ApiError(413, f"request body is {declared} bytes; the limit is {lim.max_body_bytes}")
        buf = bytearray()
        async for part in request.stream():
            buf += part
            if len(buf) > lim.max_body_bytes:
                raise ApiError(413, f"request body is over the {lim.max_body_bytes}-byte limit")
        return bytes(buf)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, "backend": lm.kind, "queued": engine.pending}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [_model_card(model_id, started)]}

    @app.get("/v1/models/{name}")
    async def model(name: str, request: Request) -> dict[str, Any]:
        authorize(request)
        if name != model_id:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {model_id!r}", "model")
        return _model_card(model_id, started)

    def submit(rows: list[Row]) -> Job:
        try:
            return engine.submit(rows)
        except EngineBusy as exc:
            wait = str(max(1, math.ceil(engine.last_request_s)))  # about when a running request ends, freeing slots
            raise ApiError(503, str(exc), code="queue_full", headers={"Retry-After": wait}) from None
        except EngineClosed as exc:
            raise ApiError(503, str(exc), code="shutting_down") from None

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Any:
        deadline = time.monotonic() + request_timeout if request_timeout else None
        authorize(request)
        raw = await read_body(request)
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        req = parse_request(data, lim)
        if req.model is not None and req.model != model_id:
            raise ApiError(404, f"the model {req.model!r} does not exist; this server serves {model_id!r}", "model")
        rows = _rows(lm, req, lim)
        cid = new_id()
        if req.stream:
            q: asyncio.Queue[Any] = asyncio.Queue()
            for i, r in enumerate(rows):
                r.on_delta = threadsafe_callback(asyncio.get_running_loop(), q, i)
            job = submit(rows)  # before the 200 goes out, so a full queue is a real 503
            body = _stream(engine, job, q, req, cid, model_id, deadline, request_timeout)
            # the task runs after the stream ends however it ends (even if it never started): cancel leftovers
            after = BackgroundTask(_cancel_unfinished, engine, job)
            return StreamingResponse(body, media_type="text/event-stream", background=after)
        results = await _wait(engine, submit(rows), request.receive, deadline, request_timeout)
        if results is None:  # the client went away: nobody reads this
            return Response(status_code=499)
        return completion_body(cid, model_id, results)

    return app


def _timeout_error(request_timeout: float | None) -> ApiError:
    limit = f"{request_timeout:g} s" if request_timeout else "time"
    return ApiError(504, f"the request ran past this server's {limit} limit (--request-timeout)", code="timeout")


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


async def _cancel_unfinished(engine: Engine, job: Job) -> None:
    if not job.future.done():
        engine.cancel(job)


async def _wait(
    engine: Engine, job: Job, receive: Receive, deadline: float | None, request_timeout: float | None
) -> list[Result] | None:
    """The job's results; None if the client disconnected first; ApiError 504 past the deadline."""
    gone = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        done, _ = await asyncio.wait({job.future, gone}, timeout=_left(deadline), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this task was cancelled (server stopping): stop the rows too
        engine.cancel(job)
        raise
    finally:
        gone.cancel()
    if job.future in done:
        exc = job.future.exception()
        if isinstance(exc, EngineClosed):
            raise ApiError(503, str(exc), code="shutting_down")
        if exc is not None:
            raise ApiError(500, f"generation failed: {type(exc).__name__}") from exc
        return job.future.result()
    engine.cancel(job)
    if gone in done:
        return None
    raise _timeout_error(request_timeout)


def _model_card(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "potstill"}


def _rows(lm: LoadedModel, req: ChatRequest, lim: Limits) -> list[Row]:
    prompt = lm.encode([m.plain() for m in req.messages])
    max_new = req.max_completion_tokens or req.max_tokens or lim.max_tokens
    ctx = lim.max_prompt_tokens or ((lm.max_positions - max_new) if lm.max_positions else None)
    if ctx is not None and len(prompt) > ctx:
        raise ApiError(
            400,
            f"the prompt is {len(prompt)} tokens; with max_tokens {max_new} this model takes at most {ctx}",
            "messages",
            "context_length_exceeded",
        )
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    base = req.seed if req.seed is not None else secrets.randbits(63)  # no seed: a fresh sample each time
    return [
        Row(
            prompt,
            max_new_tokens=max_new,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=base + i,
            stop=req.stops,
            logprobs=logprobs,
        )
        for i in range(req.n)
    ]


async def _stream(
    engine: Engine,
    job: Job,
    q: asyncio.Queue[Any],
    req: ChatRequest,
    cid: str,
    model_id: str,
    deadline: float | None,
    request_timeout: float | None,
) -> AsyncIterator[str]:
    created = int(time.time())
    fut = job.future

    def sse(obj: dict[str, Any]) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    def piece(tag: int, text: str) -> str:
        return sse(chunk(cid, model_id, created, [{"index": tag, "delta": {"content": text}, "finish_reason": None}]))

    fut.add_done_callback(lambda f: q.put_nowait(("done", None)))
    try:
        for i in range(len(job.rows)):
            delta = {"role": "assistant", "content": ""}
            yield sse(chunk(cid, model_id, created, [{"index": i, "delta": delta, "finish_reason": None}]))
        while True:
            try:
                tag, text = await asyncio.wait_for(q.get(), _left(deadline))
            except TimeoutError:
                engine.cancel(job)
                yield sse(_timeout_error(request_timeout).body())
                yield "data: [DONE]\n\n"
                return
            if tag == "done":
                break
            yield piece(tag, text)
        while not q.empty():  # pieces that raced the done signal
            tag, text = q.get_nowait()
            if tag != "done":
                yield piece(tag, text)
        if fut.cancelled() or fut.exception() is not None:
            closed = fut.cancelled() or isinstance(fut.exception(), EngineClosed)
            yield sse(ApiError(503 if closed else 500, "generation failed").body())
            yield "data: [DONE]\n\n"
            return
        results = fut.result()
        for i, r in enumerate(results):
            lp = {"content": r.logprobs, "refusal": None} if r.logprobs is not None else None
            choice = {"index": i, "delta": {}, "logprobs": lp, "finish_reason": r.finish_reason}
            yield sse(chunk(cid, model_id, created, [choice]))
        if req.stream_options and req.stream_options.include_usage:
            yield sse(chunk(cid, model_id, created, [], usage=usage(results)))
        yield "data: [DONE]\n\n"
    finally:
        if not fut.done():  # the client went away: stop its rows at the next step
            engine.cancel(job)
