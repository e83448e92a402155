"""Several `potstill tune` workers share one study on a real PostgreSQL server (tests/_postgres.py starts one).

Two worker processes, two run folders (two "machines"), one job, ``--storage postgresql://...``, 4 trials: every
trial runs exactly once, in one worker; none is lost; the study ends with 4 trials; both workers promote the same
winner (the one that did not train it trains it again). The exact-N rule itself is also tested without a server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from _postgres import postgres_server
from test_tune import BAD, GOOD, LR, summary, tune_job, write_job

from potstill.config import validate_spec
from potstill.run_dir import RunDir
from potstill.tune import run as tune_run
from potstill.tune.study import engine_url, open_study


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


def test_two_workers_share_one_study_and_run_each_trial_once(tiny_models: dict, tmp_path: Path, pg_url: str) -> None:
    import optuna

    d = tune_job(tiny_models, tmp_path, trials=4, start_with=[{LR: BAD}, {LR: GOOD}, {LR: BAD}, {LR: BAD}])
    job = write_job(d, tmp_path / "job.yaml")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    runs = [tmp_path / "machine-a" / "run", tmp_path / "machine-b" / "run"]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = []
    for rd, log in zip(runs, logs, strict=True):
        with open(log, "w") as out:
            cmd = [sys.executable, "-m", "potstill", "tune", str(job), "--run-dir", str(rd), "--storage", pg_url]
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env))
    try:
        for p in procs:
            p.wait(timeout=400)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    texts = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], "\n-----\n".join(texts)

    study = optuna.load_study(study_name=d["name"], storage=engine_url(pg_url))
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3], [(t.number, t.state) for t in trials]
    assert all(t.state.name == "COMPLETE" for t in trials)
    owners = {t.number: Path(t.user_attrs["run_dir"]) for t in trials}

    # every trial ran in exactly one worker, in that worker's folder; together they cover the study
    folders = [{f.name for f in (rd / "tune" / "trials").iterdir() if "-" not in f.name} for rd in runs]
    assert not folders[0] & folders[1], folders
    assert folders[0] | folders[1] == {"000", "001", "002", "003"}
    for n, owner in owners.items():
        assert (owner / "tune" / "trials" / f"{n:03d}" / "student" / "model.safetensors").exists()
        assert owner in {rd.resolve() for rd in runs}

    # both promote the winner, #001 (the only learning rate that learns); the worker without it trained it again
    for rd, text in zip(runs, texts, strict=True):
        s = summary(rd)
        assert s["finished"] == 4 and s["best"]["number"] == 1 and s["best"]["params"] == {LR: GOOD}
        assert yaml.safe_load((rd / "job.yaml").read_text())["hyperparameters"]["learning_rate"] == GOOD
        assert (rd / "student" / "model.safetensors").exists()
        retrained = rd / "tune" / "trials" / "001-winner"
        assert retrained.exists() == (owners[1] != rd.resolve()), text
        if retrained.exists():
            assert "trained by another worker" in text
            assert [e for e in RunDir(rd).events() if e["event"] == "retrained"]


# --------------------------------------------------------------------------------------------- exact N
class _Instant:
    """A stand-in objective: every trial completes at once with the value 1."""

    def __init__(self) -> None:
        self.number: int | None = None
        self.started: Any = lambda: None

    def __call__(self, trial: Any) -> float:
        self.number = trial.number
        self.started()
        trial.set_user_attr("folder", f"tune/trials/{trial.number:03d}")
        return 1.0


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the stand-in worker's trial comes from study.ask()
@pytest.mark.parametrize("other_ends", ["COMPLETE", "FAIL"])
def test_a_worker_waits_for_trials_running_elsewhere_and_never_runs_one_too_many(
    tiny_models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other_ends: str
) -> None:
    """Target 2, one trial running in "another worker": this worker runs one, then waits; when the other trial
    completes the study has exactly 2, and when it fails this worker takes its place."""
    from optuna.trial import TrialState

    monkeypatch.setattr(tune_run, "POLL_S", 0.05)
    spec = validate_spec(tune_job(tiny_models, tmp_path, trials=2))
    rd = RunDir(tmp_path / "run")
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    study = open_study(spec, rd, url)
    elsewhere = study.ask()  # another worker's trial, running
    lines: list[str] = []

    def other_worker() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
            "waiting for 1 trial(s) of other workers" in line for line in lines
        ):
            time.sleep(0.02)
        study.tell(elsewhere, 0.5 if other_ends == "COMPLETE" else None, state=TrialState[other_ends])

    t = threading.Thread(target=other_worker, daemon=True)
    t.start()
    tune_run._search(study, _Instant(), spec, rd, url, 2, 60, lines.append)  # type: ignore[arg-type]
    t.join()
    states = [t.state.name for t in study.get_trials()]
    if other_ends == "COMPLETE":
        assert states == ["COMPLETE", "COMPLETE"]
    else:
        assert states == ["FAIL", "COMPLETE", "COMPLETE"]
