"""A killed tune's running trial continues from its checkpoint when the tune runs again (kill -9 of a real
process, with one worker and with --workers 2; Ctrl-C); it is never counted twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import run_cli
from test_tune import BAD, GOOD, LR, summary, tune_job, write_job

from potstill.run_dir import RunDir


def _checkpoints(rd: Path) -> dict[str, int]:
    """Trial folder name -> its newest checkpoint's step."""
    out: dict[str, int] = {}
    for ck in (rd / "tune" / "trials").glob("*/checkpoints/step-*"):
        out[ck.parent.parent.name] = max(out.get(ck.parent.parent.name, 0), int(ck.name.split("-")[1]))
    return out


@pytest.mark.parametrize(("sig", "workers"), [(signal.SIGKILL, 1), (signal.SIGKILL, 2), (signal.SIGINT, 1)])
def test_a_killed_trial_continues_from_its_checkpoint(
    tiny_models: dict, tmp_path: Path, sig: signal.Signals, workers: int
) -> None:
    d = tune_job(tiny_models, tmp_path, start_with=[{LR: GOOD}, {LR: BAD}, {LR: GOOD}])
    d["hyperparameters"].update(max_steps=300, save_every=10)
    job, rd = write_job(d, tmp_path / "job.yaml"), tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "potstill", "tune", str(job), "--run-dir", str(rd), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while not any(step >= 40 for step in _checkpoints(rd).values()):  # past its first report (10 %: step 30)
        assert proc.poll() is None and time.monotonic() < deadline, "the tune ended before a checkpoint was written"
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    assert proc.wait(timeout=60) == (-9 if sig == signal.SIGKILL else 130)  # Ctrl-C: "interrupted", status 130
    time.sleep(1.0)  # the workers end themselves (they watch the tune)
    at_kill = _checkpoints(rd)

    res = run_cli("tune", str(job), "--run-dir", str(rd), "--workers", str(workers))
    assert res.returncode == 0, res.stderr
    s = summary(rd)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{rd / 'tune' / 'study.sqlite'}")
    reported = {t.number: t.intermediate_values for t in study.trials}
    states = [t["state"] for t in s["trials"]]
    assert s["finished"] == 3 == states.count("complete") and "running" not in states
    dead = [t for t in s["trials"] if t["state"] == "fail"]
    assert any(f"{t['number']:03d}" in at_kill for t in dead), "no killed trial had a checkpoint"
    for t in dead:
        retries = [r for r in s["trials"] if r["retry_of"] == t["number"]]
        assert len(retries) == 1 and retries[0]["state"] == "complete"  # run again once, counted once
        retry = retries[0]
        assert retry["params"] == t["params"]
        name = f"{t['number']:03d}"
        if name not in at_kill:  # killed before its first checkpoint: trained from the start
            assert retry["resumed_from_trial"] is None
            continue
        assert retry["resumed_from_trial"] == t["number"] and t["continued_in"] == retry["number"]
        assert not (rd / "tune" / "trials" / name).exists()  # its folder became the retry's
        assert f"#{retry['number']:03d} continues the training of #{name}" in res.stderr
        events = RunDir(rd / retry["folder"]).events("train")
        resumes = [e for e in events if e["event"] == "resume"]
        assert len(resumes) == 1 and 10 <= resumes[0]["step"] <= at_kill[name]
        after = [e["step"] for e in events[events.index(resumes[0]) :] if e["event"] == "step"]
        assert after[0] == resumes[0]["step"] + 1 and after[-1] == 300  # continued, not restarted
        if resumes[0]["step"] >= 30:  # its pruning reports before the kill are the retry's too
            assert reported[t["number"]] and reported[t["number"]].items() <= reported[retry["number"]].items()
