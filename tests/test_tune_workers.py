"""potstill tune --workers K: K worker processes on this machine share one study (SQLite in the run folder)."""

from __future__ import annotations

from pathlib import Path

import optuna
from conftest import run_cli
from test_tune import BAD, GOOD, LR, summary, tune_job, write_job

from potstill.run_dir import RunDir


def test_two_workers_run_each_trial_once_and_exactly_n(tiny_models: dict, tmp_path: Path) -> None:
    d = tune_job(tiny_models, tmp_path, trials=4, start_with=[{LR: BAD}, {LR: GOOD}, {LR: BAD}, {LR: GOOD}])
    d["hyperparameters"]["max_steps"] = 60  # trials long enough that both workers take some
    job, rd = write_job(d, tmp_path / "job.yaml"), tmp_path / "run"
    res = run_cli("tune", str(job), "--run-dir", str(rd), "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert "2 workers on this machine" in res.stderr
    assert "worker 1: tune " in res.stderr and "worker 2: tune " in res.stderr

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{rd / 'tune' / 'study.sqlite'}")
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # exactly 4, none lost, none run twice
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert sorted(t.params[LR] for t in trials) == sorted([BAD, GOOD, BAD, GOOD])  # the queue, each row once
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # two processes trained them
    for t in trials:
        folder = rd / t.user_attrs["folder"]
        assert (folder / "student" / "model.safetensors").exists()
        assert len(RunDir(folder).events("train", "start")) == 1  # trained once
        assert len(RunDir(folder).events("evaluate", "stage_done")) == 1  # and scored once
    s = summary(rd)
    assert s["finished"] == 4 and s["best"]["params"] == {LR: GOOD}
    assert (rd / "student" / "model.safetensors").exists() and (rd / "report" / "report.html").exists()
    assert not list((rd / "tune" / "trials").glob("*-winner"))  # the winner was trained here: no retraining
