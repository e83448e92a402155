"""Test helpers: a tiny run folder on disk, a real uvicorn server on 127.0.0.1 in a background thread, and two
stand-ins for a served model that let a test hold the engine still (Gated) or keep a row decoding (Stalling)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from conftest import QUESTIONS, job_dict, write_jsonl


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port; yields the base URL (…/v1); stops it on exit."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(30)


def make_run(tiny_models: dict[str, Path], root: Path, student: Path | None = None) -> Path:
    """A run folder as the pipeline leaves it: job.yaml, data/, student/ (the trained tiny teacher by default,
    so answers are text), training summary, filter report and eval results in the documented schemas."""
    from potstill.config import validate_spec

    spec = validate_spec(job_dict(tiny_models, root / "inputs"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "job.yaml").write_text(yaml.safe_dump(spec.public_dict(), sort_keys=False))
    shutil.copytree(student or tiny_models["teacher"], root / "student")
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"Answer: {a}"}]}
        for q, a in QUESTIONS
    ]
    write_jsonl(root / "data" / "train.jsonl", rows[:8])
    write_jsonl(root / "data" / "validation.jsonl", rows[8:])
    split = {"rows_in": 12, "kept": 8, "rejected": 4, "rejected_by_filter": {"nonempty": 4}, "reasons": {"empty": 4}}
    val = {"rows_in": 4, "kept": 4, "rejected": 0, "rejected_by_filter": {}, "reasons": {}}
    (root / "data" / "filter_report.json").write_text(json.dumps({"splits": {"train": split, "validation": val}}))
    (root / "student" / "training_summary.json").write_text(json.dumps({"steps": 6, "train_loss": 0.5}))
    models = [
        {"name": "teacher", "model": "t", "parameters": 30000, "accuracy": 0.75, "latency": {"p50_ms": 9.0}},
        {"name": "distilled", "model": "s", "parameters": 9000, "accuracy": 0.5, "latency": {"p50_ms": 4.0}},
    ]
    results = {"split": "test", "rows": 6, "scored_against": "reference", "models": models, "comparison": {}}
    (root / "eval").mkdir(exist_ok=True)
    (root / "eval" / "results.json").write_text(json.dumps(results))
    return root


def wait_until(cond: Any, what: str, limit: float = 30.0) -> None:
    """Poll ``cond()`` until true; fail after ``limit`` seconds (a hang guard, not a timing assertion)."""
    deadline = time.time() + limit
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


class Gated:
    """A LoadedModel whose ``run`` waits until ``gate`` is set; ``batches`` lists the rows each decoder run began with
    (rows that join a running decoder through ``more`` start no new entry)."""

    def __init__(self, lm: Any) -> None:
        self.lm, self.gate, self.batches = lm, threading.Event(), []

    def run(self, rows: list[Any], more: Any = None) -> Any:
        self.batches.append(rows)
        if not self.gate.wait(60):
            raise RuntimeError("the test never opened the gate")
        return self.lm.run(rows, more)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.lm, name)


class Stalling:
    """A LoadedModel that never stops by itself (a decoder with no stop tokens) and, after ``after`` decode steps,
    holds each step until every live row is cancelled (60 s at most, then it runs on to max_tokens). So a row that
    the server cancels ends with finish_reason "cancelled" and about ``after`` tokens, deterministically."""

    def __init__(self, lm: Any, after: int = 4) -> None:
        from potstill.decode.engine import Engine

        self.lm, self.after, self.stalled, self.steps = lm, after, threading.Event(), 0
        self.decoder = Engine(lm.backend.model, [], slots=lm.decoder.slots, pad_id=lm.pad_id)
        self.decoder.on_step = self._hold

    def _hold(self, live: list[Any]) -> None:
        self.steps += 1
        if self.steps > self.after:
            self.stalled.set()
            deadline = time.time() + 60
            while not all(r.cancelled for r in live) and time.time() < deadline:
                time.sleep(0.005)

    def run(self, rows: list[Any], more: Any = None) -> Any:
        from potstill.decode.text import generate_text

        return generate_text(self.decoder, self.lm.tokenizer, rows, more)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.lm, name)
