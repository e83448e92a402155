"""On-policy distillation in the train stage, on the tiny teacher/student pair: lmbda 0 is the dense-KD run bit
for bit, sampled steps train, the SFT warm-up, seq_kd, LoRA with gradient accumulation, and kill -9 then resume."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import job_dict, run_cli
from safetensors.torch import load_file

from potstill.config import validate_spec
from potstill.pipeline import run_pipeline
from potstill.run_dir import RunDir

OP = {"lmbda": 1.0, "max_new_tokens": 8, "temperature": 1.0}


def _prepared(tiny_models: dict, tmp_path: Path, **over: object) -> tuple[dict, Path]:
    """generate + validate done on the tiny pair; returns the job dict and the run dir."""
    d = job_dict(tiny_models, tmp_path / "data", **over)
    rd = tmp_path / "run"
    run_pipeline(validate_spec(d), rd, only=["generate", "validate"])
    return d, rd


def _train(d: dict, rd: Path, **hp: object) -> dict:
    d = {**d, "hyperparameters": {**d["hyperparameters"], **hp}}
    run_pipeline(validate_spec(d), rd, only=["train"])
    return json.loads((rd / "student" / "training_summary.json").read_text())


def _weights(rd: Path) -> dict[str, torch.Tensor]:
    return load_file(str(rd / "student" / "model.safetensors"))


def test_lmbda_zero_is_the_dense_kd_run_bit_for_bit(tiny_models: dict, tmp_path: Path) -> None:
    d, rd = _prepared(tiny_models, tmp_path)
    kd = {"source": "teacher", "loss": "jsd", "alpha": 0.5, "temperature": 2.0}
    dense = _train(d, rd, kd=kd, num_epochs=3, grad_accum_steps=2, batch_size=2)
    w_dense = _weights(rd)
    same = _train(d, rd, kd=kd, num_epochs=3, grad_accum_steps=2, batch_size=2, on_policy={"lmbda": 0.0})
    w_same = _weights(rd)
    assert same["steps"] == dense["steps"] > 0 and same["resumed_from"] is None
    keys = ("loss", "ce", "kd", "val_loss", "lr")
    for a, b in zip(dense["history"], same["history"], strict=True):
        assert {k: a.get(k) for k in keys} == {k: b.get(k) for k in keys}
        assert b["on_policy"] == 0 and "gkd" not in b
    assert w_dense.keys() == w_same.keys()
    assert all(torch.equal(w_dense[k], w_same[k]) for k in w_dense)


def test_student_sampled_steps_after_an_sft_warm_up(tiny_models: dict, tmp_path: Path) -> None:
    d, rd = _prepared(tiny_models, tmp_path)
    res = _train(d, rd, num_epochs=8, learning_rate=3e-3, on_policy={**OP, "after_steps": 3})
    steps = RunDir(rd).events("train", "step")
    assert res["steps"] == len(steps) == 24
    warm, sampled = steps[:3], steps[3:]
    assert all(s["on_policy"] == 0 and "gkd" not in s and "completion_tokens" not in s for s in warm)
    assert all(s["on_policy"] == 1 and s["loss"] == s["gkd"] for s in sampled)
    assert all(0 < s["completion_tokens"] <= 4 * 9 for s in sampled)  # 4 rows, 8 sampled tokens + end of turn
    gkd = [s["gkd"] for s in sampled]
    assert all(g >= 0 for g in gkd)
    assert sum(gkd[-4:]) < sum(gkd[:4])  # the student moves toward the teacher on its own samples


def test_seq_kd_trains_on_the_teachers_samples(tiny_models: dict, tmp_path: Path) -> None:
    d, rd = _prepared(tiny_models, tmp_path)
    _train(d, rd, num_epochs=1, on_policy={**OP, "lmbda": 0.0, "seq_kd": True, "temperature": 0.5})
    steps = RunDir(rd).events("train", "step")
    assert len(steps) == 3
    assert all(s["seq_kd"] == 1 and s["on_policy"] == 0 and s["gkd"] >= 0 for s in steps)


def test_lora_with_gradient_accumulation(tiny_models: dict, tmp_path: Path) -> None:
    """Batch 4 in one micro-batch and 2 × 2 accumulated sample the same completions and give the same steps."""
    d, rd = _prepared(tiny_models, tmp_path, student={"lora": {"r": 4, "dropout": 0.0}})
    op = {**OP, "lmbda": 0.5}
    one = _train(d, rd, num_epochs=2, batch_size=4, on_policy=op, learning_rate=1e-2)
    assert (rd / "student" / "adapter").is_dir()
    two = _train(d, rd, num_epochs=2, batch_size=2, grad_accum_steps=2, on_policy=op, learning_rate=1e-2)
    assert len(one["history"]) == len(two["history"]) == 6
    assert {h["on_policy"] for h in one["history"]} == {0, 1}  # both kinds of step happen
    for a, b in zip(one["history"], two["history"], strict=True):
        assert a["on_policy"] == b["on_policy"] and a.get("completion_tokens") == b.get("completion_tokens")
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
    assert one["val_loss"] == pytest.approx(two["val_loss"], rel=1e-4)
    assert one["history"][-1]["loss"] != pytest.approx(one["history"][0]["loss"], rel=1e-3)  # it trains


def _events(rd: Path) -> list[dict]:
    path = rd / "logs" / "events.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def test_kill_9_then_resume_gives_the_uninterrupted_run(tiny_models: dict, tmp_path: Path) -> None:
    hp = {"num_epochs": 40, "batch_size": 2, "save_every": 4, "on_policy": {**OP, "lmbda": 0.5}}
    _, rd = _prepared(tiny_models, tmp_path, hyperparameters=hp)
    straight = tmp_path / "straight"
    shutil.copytree(rd, straight)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "potstill", "train", str(rd)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if any(e["event"] == "checkpoint" and e["step"] >= 12 for e in _events(rd)):
                break
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.05)
        else:
            raise AssertionError("no checkpoint within 300 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (rd / "student" / "model.safetensors").exists()
    res = run_cli("train", str(rd))
    assert res.returncode == 0, res.stderr
    resumed = json.loads((rd / "student" / "training_summary.json").read_text())
    assert resumed["resumed_from"] is not None and resumed["resumed_from"] >= 12
    res = run_cli("train", str(straight))
    assert res.returncode == 0, res.stderr
    plain = json.loads((straight / "student" / "training_summary.json").read_text())
    assert plain["resumed_from"] is None and len(plain["history"]) == len(resumed["history"]) == 240
    assert {h["on_policy"] for h in plain["history"]} == {0, 1}
    fields = ("loss", "on_policy", "gkd", "completion_tokens", "val_loss")
    after = [h for h in plain["history"] if h["step"] > resumed["resumed_from"]]
    assert any(h["on_policy"] for h in after)  # sampled steps after the resume point are compared too
    for a, b in zip(plain["history"], resumed["history"], strict=True):
        assert {k: a.get(k) for k in fields} == {k: b.get(k) for k in fields}, a["step"]
    assert resumed["val_loss"] == plain["val_loss"]


@pytest.mark.slow
def test_two_processes_sample_and_train_like_one(tiny_models: dict, tmp_path: Path) -> None:
    """Each process samples its share of the rows with the rows' own seeds: 2 × batch 2 equals 1 × batch 4."""
    hp = {"batch_size": 2, "num_epochs": 2, "on_policy": {**OP, "lmbda": 0.5}}
    d, two = _prepared(tiny_models, tmp_path, hyperparameters=hp)
    one = tmp_path / "one"
    shutil.copytree(two, one)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "29531"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu"]
    res = subprocess.run(
        [*cmd, "-m", "potstill", "train", str(two)], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    _train(d, one, batch_size=4)
    steps_two, steps_one = RunDir(two).events("train", "step"), RunDir(one).events("train", "step")
    assert len(steps_two) == len(steps_one) == 6 and {s["on_policy"] for s in steps_one} == {0, 1}
    for a, b in zip(steps_two, steps_one, strict=True):
        assert a["on_policy"] == b["on_policy"] and a.get("completion_tokens") == b.get("completion_tokens")
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
