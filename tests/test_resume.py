"""Crash safety: kill -9 during training, run again: the teacher is not asked again and training completes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import job_dict, run_cli


def _events(rd: Path) -> list[dict]:
    path = rd / "logs" / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def test_kill_during_train_then_resume(tiny_models: dict, tmp_path: Path) -> None:
    d = job_dict(
        tiny_models,
        tmp_path / "data",
        hyperparameters={"num_epochs": 60, "batch_size": 2, "save_every": 5, "learning_rate": 1e-3},
    )
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(d))
    rd = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "potstill", "run", str(job), "--run-dir", str(rd)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if any(e["event"] == "checkpoint" and e["step"] >= 10 for e in _events(rd)):
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        else:
            raise AssertionError("no checkpoint within 300 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    state = json.loads((rd / "state.json").read_text())
    assert state["stages"]["train"]["status"] == "running"
    assert not (rd / "student" / "model.safetensors").exists()
    teacher_batches = sum(1 for e in _events(rd) if e["event"] == "teacher_batch")
    steps_before = max(e["step"] for e in _events(rd) if e["event"] == "step")

    res = run_cli("run", str(job), "--run-dir", str(rd))
    assert res.returncode == 0, res.stderr
    assert sum(1 for e in _events(rd) if e["event"] == "teacher_batch") == teacher_batches
    assert "generate: done earlier" in res.stderr
    resumes = [e for e in _events(rd) if e["event"] == "resume"]
    assert len(resumes) == 1 and 10 <= resumes[0]["step"] <= steps_before
    summary = json.loads((rd / "student" / "training_summary.json").read_text())
    assert summary["resumed_from"] == resumes[0]["step"]
    assert summary["steps"] == 6 * 60  # 12 rows / batch 2 × 60 epochs: the full schedule was completed
    assert (rd / "student" / "model.safetensors").exists()
    assert json.loads((rd / "state.json").read_text())["stages"]["report"]["status"] == "done"

    # the same job without the crash: the resumed run ends with the same validation loss
    straight = tmp_path / "straight"
    res = run_cli("run", str(job), "--run-dir", str(straight))
    assert res.returncode == 0, res.stderr
    plain = json.loads((straight / "student" / "training_summary.json").read_text())
    assert plain["resumed_from"] is None and plain["steps"] == summary["steps"]
    assert summary["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-3)
    assert summary["history"][-1]["loss"] == pytest.approx(plain["history"][-1]["loss"], rel=1e-3)
