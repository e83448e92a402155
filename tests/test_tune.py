"""potstill tune on tiny models: spec errors, a search end to end, pruning, and resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import job_dict, run_cli

from potstill import DistillationJob
from potstill.config import load_spec, validate_spec
from potstill.errors import ConfigError, DataError
from potstill.run_dir import RunDir
from potstill.tune import run_tune

LR = "hyperparameters.learning_rate"
BAD, GOOD = 1e-9, 3e-2  # a student that does not move, and one that learns to answer "Answer: 11" (2 of 6)


def tune_job(tiny_models: dict[str, Path], tmp_path: Path, **tune: Any) -> dict[str, Any]:
    """The tiny job as a math task (its answers parse as numbers), 40 steps a trial, with a tune: section."""
    return job_dict(
        tiny_models,
        tmp_path / "data",
        task_type="math",
        hyperparameters={
            "learning_rate": 1e-2,
            "max_steps": 40,
            "num_epochs": 100,
            "batch_size": 4,
            "warmup_ratio": 0.0,
        },
        tune={"space": {LR: {"choices": [BAD, GOOD]}}, "trials": 3, "pruner": "none", **tune},
    )


def write_job(d: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def summary(rd: Path) -> dict[str, Any]:
    return json.loads((rd / "tune" / "summary.json").read_text())


# --------------------------------------------------------------------------------------------- the spec
def _problems(tiny_models: dict[str, Path], tmp_path: Path, **tune: Any) -> str:
    path = write_job(tune_job(tiny_models, tmp_path, **tune), tmp_path / "job.yaml")
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    return str(err.value)


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"hyperparameters.learnin_rate": {"low": 1e-4, "high": 1e-2}}, "did you mean 'hyperparameters.learning_rate'"),
        ({LR: {"low": 1e-2, "high": 1e-4}}, "low (0.01) is above high (0.0001)"),
        ({"hyperparameters.max_steps": {"low": 10, "high": 20.5}}, "high must be one"),
        ({"student.lora.r": {"choices": [4, "big"]}}, "choices[1]: Input should be a valid integer"),
        ({LR: {"choices": ["fast"]}}, "choices[0]: Input should be a valid number"),
        ({LR: {"low": 0, "high": 1e-2}}, "low: Input should be greater than 0"),
        ({"generation.temperature": {"low": 0, "high": 1}}, "tune searches the train stage's settings"),
        ({"hyperparameters.lr_schedule": {"low": 1, "high": 2}}, "list its values as choices"),
        ({LR: {"low": 1e-4}}, "needs low and high"),
    ],
)
def test_each_space_error_names_its_line(tiny_models: dict, tmp_path: Path, space: dict, expected: str) -> None:
    msg = _problems(tiny_models, tmp_path, space=space)
    assert expected in msg
    key = next(iter(space))
    line = next(i for i, text in enumerate((tmp_path / "job.yaml").read_text().splitlines(), 1) if key in text)
    assert f"job.yaml:{line}: tune.space.{key}" in msg


def test_objective_pruner_and_start_with_errors(tiny_models: dict, tmp_path: Path) -> None:
    msg = _problems(
        tiny_models, tmp_path, objective={"metric": "bleu", "constraints": ["latency_ms_p50 < 30"]}, pruner="medain"
    )
    assert "constraint 'latency_ms_p50 < 30' must read" in msg and "'median', 'hyperband' or 'none'" in msg
    assert "2 problem(s)" in msg  # both at once
    assert "math runs do not measure 'bleu'" in _problems(tiny_models, tmp_path, objective={"metric": "bleu"})
    assert "outside its space" in _problems(tiny_models, tmp_path, start_with=[{LR: 0.5}])


def test_cli_reports_every_problem_and_writes_nothing(tiny_models: dict, tmp_path: Path) -> None:
    d = tune_job(tiny_models, tmp_path, space={"hyperparameters.learnin_rate": {"low": 1e-4, "high": 1e-2}})
    d["tune"]["space"][LR] = {"low": 1e-2, "high": 1e-4}
    d["tune"]["space"]["student.lora.r"] = {"choices": [4, "big"]}
    job = write_job(d, tmp_path / "job.yaml")
    res = run_cli("tune", str(job), "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 2, res.stderr
    assert "3 problem(s) in the job spec" in res.stderr
    assert res.stderr.count("job.yaml:") == 3
    assert not (tmp_path / "run").exists()

    del d["tune"]
    res = run_cli("tune", str(write_job(d, job)), "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 2 and "no tune: section" in res.stderr
    assert not (tmp_path / "run").exists()


def test_validation_without_answers_is_refused_before_anything_runs(tiny_models: dict, tmp_path: Path) -> None:
    d = tune_job(tiny_models, tmp_path)
    val = tmp_path / "data" / "val.jsonl"
    val.write_text(
        "".join(json.dumps({"prompt": json.loads(r)["prompt"]}) + "\n" for r in val.read_text().splitlines())
    )
    with pytest.raises(DataError, match="no validation row has an answer") as err:
        run_tune(validate_spec(d), tmp_path / "run")
    assert err.value.exit_code == 2
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------- a tune
def test_three_trials_promote_the_best_feasible_and_generate_once(tiny_models: dict, tmp_path: Path) -> None:
    from potstill.demo.tiny import save_model, tiny_llama
    from potstill.teachers.hf import load_tokenizer

    tok = load_tokenizer(str(tiny_models["student"]))
    wide = save_model(tiny_llama(tok, hidden=32, layers=2, heads=2, seed=2), tok, tmp_path / "wide")
    small = str(tiny_models["student"])
    d = tune_job(
        tiny_models,
        tmp_path,
        space={LR: {"choices": [BAD, GOOD]}, "student.model": {"choices": [small, str(wide)]}},
        objective={"constraints": ["parameters <= 20000"]},  # the wide student (about 40K) is not allowed to win
        start_with=[
            {LR: BAD, "student.model": small},
            {LR: GOOD, "student.model": str(wide)},
            {LR: GOOD, "student.model": small},
        ],
    )
    job, rd = write_job(d, tmp_path / "job.yaml"), tmp_path / "run"
    res = run_cli("tune", str(job), "--run-dir", str(rd))
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("/3 #00") == 3 and "tune 3/3 #002" in res.stderr

    s = summary(rd)
    assert [t["state"] for t in s["trials"]] == ["complete"] * 3
    assert [t["params"][LR] for t in s["trials"]] == [BAD, GOOD, GOOD]
    for t in s["trials"]:
        folder = rd / t["folder"]
        results = json.loads((folder / "eval" / "results.json").read_text())
        assert results["split"] == "validation" and [m["name"] for m in results["models"]] == ["distilled"]
        assert (folder / "data").is_symlink() and (folder / "student" / "model.safetensors").exists()
        assert not (folder / "checkpoints").exists()
        assert t["latency_ms_p50"] > 0 and t["parameters"] > 0 and t["train_seconds"] > 0
    bad, wide_t, good = s["trials"]
    assert bad["value"] == 0.0 < good["value"]
    assert wide_t["feasible"] is False and wide_t["parameters"] > 20000
    assert s["best"]["number"] == 2

    # the winner's student is the run's, tested once on the test split, beside the teacher and the baseline
    assert (rd / "student" / "model.safetensors").read_bytes() == (
        rd / good["folder"] / "student" / "model.safetensors"
    ).read_bytes()
    results = json.loads((rd / "eval" / "results.json").read_text())
    assert results["split"] == "test" and [m["name"] for m in results["models"]] == ["teacher", "baseline", "distilled"]
    assert yaml.safe_load((rd / "job.yaml").read_text())["hyperparameters"]["learning_rate"] == GOOD
    # the report's Tuning section: every trial, its state and parameters, the winner named
    md = (rd / "report" / "report.md").read_text()
    assert "## Tuning" in md and "3 of 3 trials finished, best #002" in md
    assert all(f"| #00{n} | complete" in md for n in range(3)) and "complete (infeasible)" in md
    html = (rd / "report" / "report.html").read_text()
    assert '<table class="tuning">' in html
    for plot in ("tune_history", "tune_latency", "tune_parameters"):  # the Tuning plots, from summary.json
        assert f'data-plot="{plot}"' in html and (rd / "report" / f"{plot}.png").exists()
    assert set(s["importances"]["values"]) <= {LR, "student.model"} or "note" in s["importances"]

    # generation ran once: the teacher's batches are in the run's log only, and a re-run asks nothing again
    events = RunDir(rd).events()
    batches = [e for e in events if e["event"] == "teacher_batch"]
    assert batches and len([e for e in events if e["stage"] == "generate" and e["event"] == "stage_start"]) == 1
    for t in s["trials"]:
        assert not [e for e in RunDir(rd / t["folder"]).events() if e["event"] == "teacher_batch"]
    again = run_cli("tune", str(job), "--run-dir", str(rd))
    assert again.returncode == 0, again.stderr
    assert "3 of 3 trials finished earlier" in again.stderr and "/3 #00" not in again.stderr
    assert len([e for e in RunDir(rd).events() if e["event"] == "teacher_batch"]) == len(batches)
    assert len(summary(rd)["trials"]) == 3


def test_median_pruner_stops_a_student_that_does_not_learn(tiny_models: dict, tmp_path: Path) -> None:
    d = tune_job(
        tiny_models,
        tmp_path,
        pruner={"kind": "median", "startup_trials": 2, "noise_margin": False},  # 6 rows: 0/6 vs 2/6 is noise
        start_with=[{LR: GOOD}, {LR: GOOD}, {LR: BAD}],
    )
    lines: list[str] = []
    result = DistillationJob(spec=validate_spec(d)).tune(tmp_path / "run", log=lines.append)  # the Python API
    rd = result.run_dir
    assert result.distilled is not None and result.distilled.accuracy is not None  # tested, as usual
    s = summary(rd)
    assert [t["state"] for t in s["trials"]] == ["complete", "complete", "pruned"]
    pruned = s["trials"][2]
    assert 0 < pruned["pruned_at_pct"] < 100
    assert any(f"pruned at {pruned['pruned_at_pct']}%" in line for line in lines)
    steps = [e["step"] for e in RunDir(rd / pruned["folder"]).events("train", "step")]
    assert steps and max(steps) < 40  # its training stopped early
    assert s["best"]["number"] in (0, 1)


def _pruned(pruner: Any, done: list[float], value: float, rows: int, step: int = 20) -> bool:
    """Would ``pruner`` stop a trial reporting ``value`` at ``step`` after complete trials that reported ``done``
    there (accuracy, maximised; the trial's reports scored ``rows`` rows)?"""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for v in done:
        t = study.ask()
        t.report(v, step)
        study.tell(t, v)
    t = study.ask()
    t.set_user_attr("report_rows", rows)
    t.report(value, step)
    return t.should_prune()


def test_the_median_pruner_keeps_a_trial_within_the_noise_of_the_median() -> None:
    from potstill.tune.pruning import noise_aware_median

    plain = optuna.pruners.MedianPruner(n_startup_trials=3)
    aware = noise_aware_median(64, startup_trials=3, warmup_pct=0)
    # at the first report every student is near 0 (the demo's: 0-5 % on 64 rows): 0/64 against a median of 1/64
    near_zero = [0.0, 1 / 64, 2 / 64]
    assert _pruned(plain, near_zero, 0.0, 64)  # Optuna's rule stops it on one row's difference
    assert not _pruned(aware, near_zero, 0.0, 64)
    # later the others climbed: far below them is pruned by both
    climbed = [0.30, 0.35, 0.40]
    assert _pruned(plain, climbed, 0.05, 64) and _pruned(aware, climbed, 0.05, 64)
    assert not _pruned(aware, climbed, 0.30, 64)  # 0.30 against 0.35: within 1.96 standard errors on 64 rows
    assert _pruned(aware, climbed, 0.30, 2000)  # the same gap on 2,000 rows is not noise
    assert not _pruned(aware, [1 / 3, 1 / 3, 1 / 3], 0.0, 6)  # 0/6 against 2/6 on the tiny split: noise


def test_the_pruner_follows_the_spec(tiny_models: dict, tmp_path: Path) -> None:
    from potstill.tune.study import _pruner

    def kind(task: str, **pruner: Any) -> str:
        d = tune_job(tiny_models, tmp_path, pruner={"kind": "median", **pruner})
        d["task_type"] = task
        if task == "conversation":
            d["filters"] = ["nonempty"]
        return type(_pruner(validate_spec(d))).__name__

    assert kind("math") == "NoiseAwareMedianPruner"  # accuracy: a share, binomial noise
    assert kind("math", noise_margin=False) == "MedianPruner"
    assert kind("conversation") == "MedianPruner"  # BLEU: no known noise per report


# --------------------------------------------------------------------------------------------- resume
def test_kill_9_mid_trial_then_resume_finishes_exactly_n_trials(tiny_models: dict, tmp_path: Path) -> None:
    d = tune_job(tiny_models, tmp_path, start_with=[{LR: GOOD}, {LR: BAD}, {LR: GOOD}])
    d["hyperparameters"]["max_steps"] = 150  # long enough to be caught mid-way
    job, rd = write_job(d, tmp_path / "job.yaml"), tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "potstill", "tune", str(job), "--run-dir", str(rd)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    events = rd / "tune" / "trials" / "001" / "logs" / "events.jsonl"
    deadline = time.monotonic() + 240
    while not (events.exists() and '"event": "step"' in events.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the tune ended before its second trial trained"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    res = run_cli("tune", str(job), "--run-dir", str(rd))
    assert res.returncode == 0, res.stderr
    assert "1 of 3 trials finished earlier" in res.stderr
    s = summary(rd)
    states = [t["state"] for t in s["trials"]]
    assert states.count("complete") + states.count("pruned") == 3 == s["finished"]
    assert s["trials"][1]["state"] == "fail" and s["trials"][1]["params"] == {LR: BAD}
    retry = [t for t in s["trials"] if t["retry_of"] == 1]
    assert len(retry) == 1 and retry[0]["params"] == {LR: BAD} and retry[0]["state"] == "complete"
    assert "running" not in states and len(s["trials"]) == 4
