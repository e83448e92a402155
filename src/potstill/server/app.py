"""The FastAPI app: /health, /v1/models, /v1/chat/completions (streaming and not), OpenAI-style errors.

    app = create_app(lm, model_id="support-bot", api_key="...", limits=Limits())   # then run it with uvicorn

Every request goes through one Engine (a worker thread and a queue), so the model serves one micro-batch at a
time. The body is read with a hard size cap before any JSON parsing. The API key is compared in constant time
and never logged or echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .backends import LoadedModel
from .decode import Row
from .engine import Engine, EngineClosed, threadsafe_callback
from .protocol import ApiError, ChatRequest, Limits, chunk, completion_body, new_id, parse_request, usage


def create_app(
    lm: LoadedModel, model_id: str, api_key: str | None = None, limits: Limits | None = None, max_batch: int = 8
) -> FastAPI:
    lim = limits or Limits()
    engine = Engine(lm, max_batch=max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        await asyncio.to_thread(engine.close)  # uvicorn has drained open requests by now

    app = FastAPI(title="potstill", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    started = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

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

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Any:
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
            return StreamingResponse(_stream(engine, rows, req, cid, model_id, request), media_type="text/event-stream")
        try:
            results = await engine.submit(rows)
        except EngineClosed as exc:
            raise ApiError(503, str(exc)) from None
        except asyncio.CancelledError:
            for r in rows:
                r.cancelled = True
            raise
        return completion_body(cid, model_id, results)

    return app


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
    return [
        Row(
            prompt,
            max_new_tokens=max_new,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=None if req.seed is None else req.seed + i,
            stop=req.stops,
            logprobs=logprobs,
        )
        for i in range(req.n)
    ]


async def _stream(
    engine: Engine, rows: list[Row], req: ChatRequest, cid: str, model_id: str, request: Request
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[Any] = asyncio.Queue()
    for i, r in enumerate(rows):
        r.on_delta = threadsafe_callback(loop, q, i)
    created = int(time.time())

    def sse(obj: dict[str, Any]) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    try:
        fut = engine.submit(rows)
    except EngineClosed as exc:
        yield sse(ApiError(503, str(exc)).body())
        yield "data: [DONE]\n\n"
        return
    fut.add_done_callback(lambda f: q.put_nowait(("done", None)))
    try:
        for i in range(len(rows)):
            delta = {"role": "assistant", "content": ""}
            yield sse(chunk(cid, model_id, created, [{"index": i, "delta": delta, "finish_reason": None}]))
        while True:
            tag, text = await q.get()
            if tag == "done":
                break
            yield sse(
                chunk(cid, model_id, created, [{"index": tag, "delta": {"content": text}, "finish_reason": None}])
            )
        while not q.empty():  # pieces that raced the done signal
            tag, text = q.get_nowait()
            if tag != "done":
                yield sse(
                    chunk(cid, model_id, created, [{"index": tag, "delta": {"content": text}, "finish_reason": None}])
                )
        if fut.exception() is not None:
            yield sse(
                ApiError(500 if not isinstance(fut.exception(), EngineClosed) else 503, "generation failed").body()
            )
            yield "data: [DONE]\n\n"
            return
        results = fut.result()
        for i, r in enumerate(results):
            lp = {"content": r.logprobs, "refusal": None} if r.logprobs is not None else None
            yield sse(
                chunk(
                    cid,
                    model_id,
                    created,
                    [{"index": i, "delta": {}, "logprobs": lp, "finish_reason": r.finish_reason}],
                )
            )
        if req.stream_options and req.stream_options.include_usage:
            yield sse(chunk(cid, model_id, created, [], usage=usage(results)))
        yield "data: [DONE]\n\n"
    finally:
        if not fut.done():  # the client went away: stop its rows at the next step
            for r in rows:
                r.cancelled = True
