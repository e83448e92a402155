"""Shared fixtures: tiny local models (random-init Llama + a tokenizer trained here) and tiny jobs. No network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

torch.set_num_threads(1)

QUESTIONS = [
    (f"What is {a} plus {b}?", str(a + b))
    for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 9), (4, 4), (6, 1), (8, 3), (9, 9), (5, 5), (3, 7), (1, 8)]
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny teacher that has memorised QUESTIONS (so its answers are text), and a smaller random student."""
    from potstill.demo.tiny import build_tokenizer, save_model, tiny_llama
    from potstill.train.data import encode_chat
    from potstill.train.trainer import FitConfig, fit

    root = tmp_path_factory.mktemp("models")
    texts = [f"{q} Answer: {a}" for q, a in QUESTIONS] * 20
    tok = build_tokenizer(texts, vocab_size=400)
    teacher = tiny_llama(tok, hidden=32, layers=2, heads=2, seed=0)
    rows = [
        encode_chat(
            tok, [*system, {"role": "user", "content": q}, {"role": "assistant", "content": f"Answer: {a}"}], 64
        )
        for q, a in QUESTIONS
        for system in ([], [{"role": "system", "content": "Answer."}])  # tiny jobs send system "Answer."
    ]
    fit(
        teacher,
        rows,
        [],
        FitConfig(learning_rate=1e-2, batch_size=12, num_epochs=200, max_steps=150, warmup_ratio=0.0, save_every=10**9),
        tok.pad_token_id,
    )
    student = tiny_llama(tok, hidden=16, layers=1, heads=2, seed=1)
    return {
        "teacher": save_model(teacher, tok, root / "teacher"),
        "student": save_model(student, tok, root / "student"),
    }


def job_dict(tiny_models: dict[str, Path], data_dir: Path, **over: Any) -> dict[str, Any]:
    train = write_jsonl(data_dir / "train.jsonl", [{"prompt": q} for q, _ in QUESTIONS])
    val = write_jsonl(data_dir / "val.jsonl", [{"prompt": q, "answer": f"Answer: {a}"} for q, a in QUESTIONS[:6]])
    test = write_jsonl(
        data_dir / "test.jsonl",
        [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"Answer: {a}"}]}
            for q, a in QUESTIONS[6:]
        ],
    )
    d: dict[str, Any] = {
        "name": "tiny",
        "task_type": "qa",
        "teacher": {"kind": "hf", "model": str(tiny_models["teacher"]), "batch_size": 8},
        "student": {"model": str(tiny_models["student"])},
        "data": {"training": str(train), "validation": str(val), "test": str(test)},
        "prompts": {"system": "Answer."},
        "generation": {"temperature": 0.0, "max_tokens": 8},
        "filters": ["nonempty"],
        "hyperparameters": {"learning_rate": 1e-3, "batch_size": 4, "num_epochs": 2, "save_every": 2},
        "evaluation": {"max_new_tokens": 8, "latency_samples": 2, "batch_size": 8},
    }
    for k, v in over.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) and isinstance(d.get(k), dict) else v
    return d


@pytest.fixture
def tiny_job(tiny_models: dict[str, Path], tmp_path: Path) -> Path:
    """A job.yaml on the tiny models, in tmp_path."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_dict(tiny_models, tmp_path / "data")))
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "potstill", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


@pytest.fixture
def fake_openai() -> Any:
    """Start fake OpenAI-compatible servers on 127.0.0.1 (see tests/fake_openai.py): ``srv = fake_openai(**kw)``.

    Every server started is stopped at the end of the test.
    """
    from fake_openai import FakeOpenAI

    servers: list[FakeOpenAI] = []

    def start(**kw: Any) -> FakeOpenAI:
        srv = FakeOpenAI(**kw).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def api_job_dict(data_dir: Path, teacher: dict[str, Any], n_train: int = 12, **over: Any) -> dict[str, Any]:
    """A job whose teacher is an HTTP server (generation only: the student is never loaded by that stage)."""
    train = write_jsonl(
        data_dir / "train.jsonl", [{"prompt": f"Question {i}: what is {i} plus 1?"} for i in range(n_train)]
    )
    val = write_jsonl(data_dir / "val.jsonl", [{"prompt": f"Check {i}?", "answer": str(i)} for i in range(4)])
    d: dict[str, Any] = {
        "name": "api",
        "task_type": "qa",
        "teacher": {"kind": "openai", "model": "fake-model", "retry_backoff_s": 0.01, "max_backoff_s": 0.05, **teacher},
        "student": {"model": "unused-student"},
        "data": {"training": str(train), "validation": str(val)},
        "generation": {"temperature": 0.7, "max_tokens": 16, "concurrency": 4},
        "filters": ["nonempty"],
    }
    for k, v in over.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) and isinstance(d.get(k), dict) else v
    return d


@pytest.fixture(scope="session")
def tiny_run(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny run (every stage, plus an extra model row "gold-only"), shared read-only by tests."""
    from potstill.config import load_spec
    from potstill.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("tiny_run")
    extra = [{"name": "gold-only", "model": str(tiny_models["student"])}]
    d = job_dict(tiny_models, root / "data", evaluation={"models": extra})
    (root / "job.yaml").write_text(yaml.safe_dump(d))
    return run_pipeline(load_spec(root / "job.yaml"), root / "run").root
