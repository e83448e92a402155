"""Test helpers: a tiny run folder on disk, and a real uvicorn server on 127.0.0.1 in a background thread."""

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
