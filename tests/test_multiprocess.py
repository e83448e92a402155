"""Two processes on CPU: `accelerate launch --num_processes 2 --cpu -m potstill train RUN_DIR` (gloo)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import job_dict
from safetensors.torch import load_file

from potstill.config import validate_spec
from potstill.pipeline import run_pipeline
from potstill.run_dir import RunDir


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tiny_models: dict, tmp_path: Path) -> None:
    d = job_dict(tiny_models, tmp_path / "data", hyperparameters={"batch_size": 2, "num_epochs": 2, "eval_every": 2})
    two = tmp_path / "two"
    run_pipeline(validate_spec(d), two, only=["generate", "validate"])
    one = tmp_path / "one"
    shutil.copytree(two, one)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "29517"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu"]
    res = subprocess.run(
        [*cmd, "-m", "potstill", "train", str(two)], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]

    # one process with batch 4 sees the same global batches (2 × 2 rows) in the same order
    d1 = {**d, "hyperparameters": {**d["hyperparameters"], "batch_size": 4}}
    run_pipeline(validate_spec(d1), one, only=["train"])

    starts = RunDir(two).events("train", "start")
    assert len(starts) == 1 and starts[0]["processes"] == 2  # rank 1 wrote nothing
    steps_two = RunDir(two).events("train", "step")
    steps_one = RunDir(one).events("train", "step")
    assert len(steps_two) == len(steps_one) == 6  # 12 rows / (2 × 2) × 2 epochs
    for a, b in zip(steps_two, steps_one, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a.get("val_loss") == pytest.approx(b.get("val_loss"), abs=1e-4)
    w2 = load_file(two / "student" / "model.safetensors")
    w1 = load_file(one / "student" / "model.safetensors")
    assert w2.keys() == w1.keys() and all(torch.allclose(w2[k], w1[k], atol=1e-5) for k in w1)
    assert not list((two / "student").glob(".tmp*")) and not list((two / "checkpoints").glob(".tmp*"))
