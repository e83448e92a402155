"""`potstill serve MODEL_DIR|RUN_DIR`: an OpenAI-compatible server for a distilled student.

    serve("runs/support-bot")                          # the run's student/, on http://127.0.0.1:8000/v1
    serve("runs/support-bot", format="onnx-int8")      # its ONNX int8 export (run `potstill export` first)
    serve("models/x", host="0.0.0.0", port=9000, api_key_env="STUDENT_KEY")   # off loopback: a key, or insecure=True

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions (stream or not). Ctrl-C / SIGTERM stops
taking connections, lets running requests finish, then exits. Guards: at most ``max_queue`` requests wait (more
get 503 + Retry-After), a request past ``request_timeout`` seconds gets 504, a client that disconnects stops its
decoding, and an over-large body gets a readable 413.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PotstillError

SERVE_FORMATS = ("auto", "hf", "onnx", "onnx-int8", "gguf", "gguf-q8_0", "gguf-q4_k_m")


def resolve_model_dir(path: str | os.PathLike[str], format: str = "auto") -> tuple[Path, str]:
    """(model folder, default model id) for a model folder or a run folder (its student/ or export/<format>/)."""
    p = Path(path)
    if format not in SERVE_FORMATS:
        raise ConfigError(f"unknown format {format!r}; choose from {', '.join(SERVE_FORMATS)}")
    if (p / "job.yaml").is_file():
        name = p.name
        if format == "auto":
            folder = p / "student"
        else:
            folder = p / "export" / format
            if not folder.is_dir():
                raise PotstillError(f"{folder} does not exist; run `potstill export {p} --format {format}` first")
        return folder, name
    return p, p.name


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: interfaces no other machine can reach."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, api_key_env: str | None, insecure: bool = False) -> None:
    """ConfigError for a non-loopback host without an API key, unless ``insecure``."""
    if is_loopback(host) or api_key_env or insecure:
        return
    raise ConfigError(
        f"--host {host} exposes the server beyond this machine without a key; "
        "set --api-key-env NAME (the variable holding the key), or pass --insecure to serve without one"
    )


def load_api_key(api_key_env: str | None) -> str | None:
    if api_key_env is None:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise ConfigError(f"--api-key-env {api_key_env}: that environment variable is not set or empty")
    return key


def build_app(
    path: str | os.PathLike[str],
    format: str = "auto",
    model_name: str | None = None,
    api_key_env: str | None = None,
    device: str = "auto",
    max_tokens: int = 512,
    max_messages: int = 64,
    max_body_bytes: int = 1 << 20,
    max_batch: int = 8,
    max_queue: int = 64,
    request_timeout: float | None = 300.0,
) -> Any:
    """The FastAPI app serve() runs (for embedding in another ASGI server).

    ``max_queue``: requests that may wait for the model (more get 503 with Retry-After); ``request_timeout``:
    seconds from arrival to the last token (queueing included) before a 504; 0 or None: no limit.
    """
    from .app import create_app
    from .backends import load_model
    from .protocol import Limits

    if min(max_tokens, max_messages, max_body_bytes, max_batch, max_queue) < 1:
        raise ConfigError("max_tokens, max_messages, max_body_bytes, max_batch and max_queue must be >= 1")
    if request_timeout is not None and request_timeout < 0:
        raise ConfigError(f"request_timeout is {request_timeout}; give seconds > 0, or 0 for no limit")
    key = load_api_key(api_key_env)
    folder, default_id = resolve_model_dir(path, format)
    lm = load_model(folder, device=device)
    limits = Limits(max_body_bytes=max_body_bytes, max_messages=max_messages, max_tokens=max_tokens)
    return create_app(
        lm,
        model_name or default_id,
        api_key=key,
        limits=limits,
        max_batch=max_batch,
        max_queue=max_queue,
        request_timeout=request_timeout or None,
    )


def serve(
    path: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    format: str = "auto",
    model_name: str | None = None,
    api_key_env: str | None = None,
    device: str = "auto",
    max_tokens: int = 512,
    max_messages: int = 64,
    max_body_bytes: int = 1 << 20,
    max_batch: int = 8,
    max_queue: int = 64,
    request_timeout: float | None = 300.0,
    insecure: bool = False,
    log: Callable[[str], None] | None = None,
) -> None:
    """Serve a student over HTTP until interrupted (blocks). Binds 127.0.0.1 unless ``host`` says otherwise;
    a host other than loopback needs ``api_key_env`` (or ``insecure=True``)."""
    import uvicorn

    check_host(host, api_key_env, insecure)
    app = build_app(
        path,
        format,
        model_name,
        api_key_env,
        device,
        max_tokens,
        max_messages,
        max_body_bytes,
        max_batch,
        max_queue,
        request_timeout,
    )
    if log:
        auth = f", key from ${api_key_env}" if api_key_env else ", no key"
        if not api_key_env and not is_loopback(host):
            auth += " (--insecure: anyone who can reach this port can use it)"
        log(f"serving {app.state.engine.lm.path} ({app.state.engine.lm.kind}) at http://{host}:{port}/v1{auth}")
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)
    _server_class()(config).run()
    if log:
        log("stopped: running requests finished, no new ones taken")


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but SIGINT/SIGTERM end with exit 0 after the graceful drain (uvicorn re-raises them)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            def stop(sig: int, frame: Any) -> None:
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True  # a second Ctrl-C: stop waiting for running requests
                self.should_exit = True

            old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

    return Server
