"""potstill tune --workers K: K worker processes on this machine share one study (SQLite in the run folder)."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
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
    threads = max(1, (os.cpu_count() or 1) // 2)  # each worker: an equal share of the cores
    assert f"worker 1: started, {threads} torch thread(s)" in res.stderr
    assert f"worker 2: started, {threads} torch thread(s)" in res.stderr

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{rd / 'tune' / 'study.sqlite'}")
    trials = study.get_trials()
    told = [(t.number, t.state.name, t.params, t.user_attrs) for t in trials]  # what went wrong, if anything
    assert sorted(t.number for t in trials) == [0, 1, 2, 3], f"{told}\n{res.stderr}"  # exactly 4, none run twice
    assert all(t.state.name == "COMPLETE" for t in trials), told
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


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() outside optimize
def test_each_worker_samples_its_own_values(tiny_models: dict, tmp_path: Path) -> None:
    """Workers opening the study at the same moment would draw the same values with one seed; the salt differs."""
    from potstill.config import validate_spec
    from potstill.tune.study import open_study
    from potstill.tune.workers import SEED_SALT

    spec = validate_spec(tune_job(tiny_models, tmp_path, space={LR: {"low": 1e-4, "high": 1e-1, "log": True}}))
    rd = RunDir(tmp_path / "run")

    def first_draw(name: str, salt: int) -> float:
        study = open_study(spec, rd, f"sqlite:///{tmp_path / name}", salt=salt)
        return float(study.ask().suggest_float(LR, 1e-4, 1e-1, log=True))

    assert first_draw("a.sqlite", 0) == first_draw("b.sqlite", 0)  # one seed, one draw
    assert first_draw("c.sqlite", SEED_SALT) != first_draw("d.sqlite", 0)


def test_a_trial_finished_during_the_count_is_still_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker counts finished + running trials before it starts one. Another worker's trial that finishes while
    it counts must be counted once, as running or as finished: counted as neither, one trial too many ran (seen in
    CI: 5 trials of 4)."""
    from potstill.tune.study import finished_and_running

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.sqlite'}")
    other = study.ask()  # another worker's trial, running
    read = study.get_trials

    def read_then_the_other_finishes(*args, **kwargs):  # type: ignore[no-untyped-def]
        trials = read(*args, **kwargs)
        if not any(t.state.is_finished() for t in read(deepcopy=False)):
            study.tell(other, 1.0)
        return trials

    monkeypatch.setattr(study, "get_trials", read_then_the_other_finishes)
    done, busy = finished_and_running(study)
    assert done + busy == 1
    assert finished_and_running(study) == (1, 0)
