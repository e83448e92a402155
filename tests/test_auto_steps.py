"""hyperparameters.max_steps: auto (train until the validation metric stops improving) and max_minutes (a time
cap): the loop on a tiny in-memory model with a scripted metric and a fake clock, then whole runs on tiny models."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import QUESTIONS, job_dict, run_cli
from test_train_loop import _row, _weights, tok  # noqa: F401 (tok is a fixture)
from test_tune import GOOD, LR, summary, tune_job

from potstill.config import validate_spec
from potstill.demo.tiny import tiny_llama
from potstill.errors import ConfigError
from potstill.run_dir import RunDir
from potstill.train import trainer
from potstill.train.advice import why_it_stopped
from potstill.train.trainer import FitConfig, fit
from potstill.tune import run_tune


class Scripted:
    """An on_validation hook returning the next of ``values`` as the metric; it keeps a copy of the weights it saw."""

    def __init__(self, values: list[float]) -> None:
        self.values, self.calls, self.weights = list(values), [], {}

    def __call__(self, step: int, total: int, val_loss: float, model: Any) -> float:
        self.calls.append((step, total))
        self.weights[step] = _weights(model).clone()
        return self.values[len(self.calls) - 1]


def _rows(tok):  # noqa: F811
    rows = [_row(tok, q, f"Answer: {a}") for q, a in QUESTIONS]  # 12 rows: an epoch is 3 steps of 4
    return rows, rows[:4]


def test_auto_stops_when_the_metric_stops_improving_and_keeps_its_best(tok, tmp_path: Path) -> None:  # noqa: F811
    rows, val = _rows(tok)
    model = tiny_llama(tok, hidden=16, layers=1, heads=2, seed=5)
    cfg = FitConfig(learning_rate=1e-2, batch_size=4, num_epochs=1, warmup_ratio=0, eval_every=3, until_plateau=True)
    hook = Scripted([0.1, 0.2, 0.4, 0.4, 0.3, 0.4, 0.9])  # best at the 3rd validation, then 3 without a better one
    events: list[tuple[str, dict]] = []
    log = lambda e, **k: events.append((e, k))  # noqa: E731
    res = fit(model, rows, val, cfg, tok.pad_token_id, tmp_path, log, on_validation=hook)
    assert res["stop_reason"] == "plateau" and res["stopped_early"]
    assert [s for s, _ in hook.calls] == [3, 6, 9, 12, 15, 18]  # past num_epochs (3 steps): auto has no horizon
    assert all(total == 0 for _, total in hook.calls)  # the hook is told the length is unknown
    assert res["steps"] == 18 and res["best_step"] == 9 and res["metric"] == 0.4
    assert torch.equal(_weights(model), hook.weights[9])  # the best metric's weights, not the last ones
    assert [h.get("metric") for h in res["history"] if "val_loss" in h] == [0.1, 0.2, 0.4, 0.4, 0.3, 0.4]
    assert ("plateau", {"step": 18, "best_step": 9, "best_metric": 0.4}) in events
    # resuming the finished training from its last checkpoint trains no more and keeps the verdict
    again = fit(tiny_llama(tok, hidden=16, layers=1, heads=2, seed=5), rows, val, cfg, tok.pad_token_id, tmp_path,
                on_validation=Scripted([1.0] * 10))  # fmt: skip
    assert again["resumed_from"] == 18 and again["steps"] == 18 and again["stop_reason"] == "plateau"


def test_auto_patience_is_early_stopping_patience(tok) -> None:  # noqa: F811
    rows, val = _rows(tok)
    cfg = FitConfig(batch_size=4, warmup_ratio=0, eval_every=1, until_plateau=True, early_stopping_patience=1)
    hook = Scripted([0.5, 0.6, 0.6, 0.9])
    model = tiny_llama(tok, hidden=16, layers=1, heads=2, seed=5)
    res = fit(model, rows, val, cfg, tok.pad_token_id, on_validation=hook)
    assert res["steps"] == 3 and res["best_step"] == 2 and res["stop_reason"] == "plateau"


def test_the_time_cap_stops_after_a_last_validation(tok, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A fake clock: 10 s per optimiser step. A 35 s cap ends the training at step 5, measured once more."""
    rows, val = _rows(tok)
    steps: list[int] = []
    monkeypatch.setattr(trainer, "clock", lambda: 10.0 * len(steps))

    def log(event: str, **k: Any) -> None:
        if event == "step":
            steps.append(k["step"])

    cfg = FitConfig(batch_size=4, warmup_ratio=0, eval_every=100, until_plateau=True, max_seconds=35)
    hook = Scripted([0.1 * i for i in range(1, 20)])  # always improving: only the cap can stop it
    res = fit(tiny_llama(tok, hidden=16, layers=1, heads=2, seed=5), rows, val, cfg, tok.pad_token_id, log=log,
              on_validation=hook)  # fmt: skip
    assert res["stop_reason"] == "time" and res["steps"] == 5
    assert [s for s, _ in hook.calls] == [3, 5]  # the end of the first epoch, then the last validation at the cap
    assert res["train_seconds"] == 50.0
    steps.clear()
    fixed = FitConfig(batch_size=4, warmup_ratio=0, num_epochs=100, max_seconds=35)  # a cap on a fixed budget too
    res = fit(tiny_llama(tok, hidden=16, layers=1, heads=2, seed=5), rows, val, fixed, tok.pad_token_id, log=log)
    assert res["stop_reason"] == "time" and res["steps"] == 5


@pytest.mark.parametrize("eval_every", [1, 2, 100])
def test_validation_and_checkpoints_do_not_count_toward_the_time_cap(
    tok,  # noqa: F811
    tmp_path: Path,
    eval_every: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fake clock: 10 s per optimiser step, 100 s per validation (its metric check), 50 s per checkpoint. A 35 s
    cap trains 5 steps however often the run validates and saves; the rest is reported, not counted. (With
    them counted, a tune trial that reports to the pruner trained fewer steps than the fixed recipe it is
    compared with, inside the same cap.)"""
    rows, val = _rows(tok)
    spent = {"train": 0.0, "other": 0.0}
    monkeypatch.setattr(trainer, "clock", lambda: spent["train"] + spent["other"])
    save = trainer.save_checkpoint

    def slow_save(*a: Any, **k: Any) -> Any:
        spent["other"] += 50.0
        return save(*a, **k)

    monkeypatch.setattr(trainer, "save_checkpoint", slow_save)

    def log(event: str, **k: Any) -> None:
        if event == "step":
            spent["train"] += 10.0

    def hook(step: int, total: int, val_loss: float, model: Any) -> float:
        spent["other"] += 100.0
        return 0.5

    cfg = FitConfig(batch_size=4, warmup_ratio=0, num_epochs=100, max_seconds=35, eval_every=eval_every, save_every=1)
    model = tiny_llama(tok, hidden=16, layers=1, heads=2, seed=5)
    res = fit(model, rows, val, cfg, tok.pad_token_id, tmp_path / str(eval_every), log, on_validation=hook)
    assert res["stop_reason"] == "time" and res["steps"] == 5
    assert res["train_seconds"] == 50.0 and res["paused_seconds"] == spent["other"] > 5 * 50.0


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_time_cap_ends_the_learning_rate_schedule_with_it(
    tok,  # noqa: F811
    schedule: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10 s per step, a 35 s cap on a budget of hundreds of steps: the rate decays with the clock, to 0 when the
    cap is reached (the step count alone would leave it at its peak); without a cap it does not move."""
    rows, val = _rows(tok)
    lrs: list[float] = []
    monkeypatch.setattr(trainer, "clock", lambda: 10.0 * len(lrs))

    def log(event: str, **k: Any) -> None:
        if event == "step":
            lrs.append(k["lr"])

    cfg = FitConfig(batch_size=4, warmup_ratio=0, num_epochs=100, max_seconds=35, lr_schedule=schedule)
    res = fit(tiny_llama(tok, hidden=16, layers=1, heads=2, seed=5), rows, val, cfg, tok.pad_token_id, log=log)
    assert res["stop_reason"] == "time" and res["steps"] == 5
    peak = cfg.learning_rate
    assert all(a > b for a, b in itertools.pairwise(lrs)) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert lrs[1] == pytest.approx(
        peak * (1 - 10 / 35) if schedule == "linear" else peak * 0.5 * (1 + math.cos(math.pi * 10 / 35))
    )
    uncapped = trainer.lr_lambda(FitConfig(warmup_ratio=0, lr_schedule=schedule), 300)  # the same budget, no cap
    assert uncapped(5) > 0.95


def test_the_time_cap_counts_the_training_before_a_resume(
    tok,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Crash at step 3 (step 2's checkpoint holds 20 s of training), resume: the 35 s cap ends it at step 5, not 7."""
    rows, val = _rows(tok)
    steps: list[int] = []
    monkeypatch.setattr(trainer, "clock", lambda: 10.0 * len(steps))

    def crash_at_3(event: str, **k: Any) -> None:
        if event == "step":
            steps.append(k["step"])
            if k["step"] == 3 and len(steps) == 3:
                raise RuntimeError("killed")

    cfg = FitConfig(batch_size=4, warmup_ratio=0, num_epochs=100, max_seconds=35, save_every=1)
    first = tiny_llama(tok, hidden=16, layers=1, heads=2, seed=5)
    with pytest.raises(RuntimeError, match="killed"):
        fit(first, rows, val, cfg, tok.pad_token_id, tmp_path, crash_at_3)
    model = tiny_llama(tok, hidden=16, layers=1, heads=2, seed=5)
    res = fit(model, rows, val, cfg, tok.pad_token_id, tmp_path, crash_at_3)
    assert res["resumed_from"] == 2 and res["stop_reason"] == "time" and res["steps"] == 5


def test_auto_warms_up_over_part_of_an_epoch_then_keeps_the_peak_rate() -> None:
    from potstill.train.trainer import lr_lambda

    f = lr_lambda(FitConfig(until_plateau=True, warmup_ratio=0.5, lr_schedule="cosine"), trainer.UNBOUNDED, 10)
    assert [round(f(s), 3) for s in range(7)] == [0.167, 0.333, 0.5, 0.667, 0.833, 1.0, 1.0]
    assert f(10**6) == 1.0  # no decay: the end is unknown


def test_the_probe_scores_against_the_teachers_answers_when_validation_has_none(
    tiny_models: dict, tmp_path: Path
) -> None:
    from potstill.train.probe import MetricProbe
    from potstill.train.stage import fit_config

    auto = {"max_steps": "auto", "max_minutes": 1}
    d = job_dict(tiny_models, tmp_path / "data", task_type="math", hyperparameters=auto)
    spec = validate_spec(d)
    assert fit_config(spec).eval_every == 200 and fit_config(spec).until_plateau
    with_refs = MetricProbe(spec, "accuracy", rows=4)
    assert with_refs.against == "reference" and with_refs.refs == [f"Answer: {a}" for _, a in QUESTIONS[:4]]
    val = tmp_path / "data" / "val.jsonl"
    val.write_text("".join(json.dumps({"prompt": q}) + "\n" for q, _ in QUESTIONS[:6]))
    kept = tmp_path / "kept.jsonl"
    kept.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"Answer: {a}"}]})
            + "\n"
            for q, a in QUESTIONS[:3]
        )
    )
    probe = MetricProbe(spec, "accuracy", rows=10, kept=kept)
    assert probe.against == "teacher" and probe.refs == [f"Answer: {a}" for _, a in QUESTIONS[:3]]
    assert probe.convs[0] == [{"role": "user", "content": QUESTIONS[0][0]}]
    assert MetricProbe(spec, "accuracy", rows=10).convs == []  # no answers and no kept rows: nothing to score


def test_auto_needs_validation_rows_and_a_cap(tok, tiny_models: dict, tmp_path: Path) -> None:  # noqa: F811
    from potstill.errors import TrainingError

    rows, _ = _rows(tok)
    with pytest.raises(TrainingError, match="no validation rows"):
        fit(tiny_llama(tok, hidden=16, layers=1, heads=2), rows, [], FitConfig(until_plateau=True), tok.pad_token_id)
    d = job_dict(tiny_models, tmp_path / "data", hyperparameters={"max_steps": "auto"})
    with pytest.raises(ConfigError, match="give max_minutes too"):
        validate_spec(d)
    d["hyperparameters"]["max_steps"] = 0
    with pytest.raises(ConfigError, match=r"hyperparameters.max_steps: a whole number of optimiser steps"):
        validate_spec(d)


# --------------------------------------------------------------------------------------------- whole runs
def _auto_job(tiny_models: dict, tmp_path: Path, **hp: Any) -> Path:
    d = job_dict(tiny_models, tmp_path / "data", task_type="math")
    d["hyperparameters"] = {"learning_rate": 3e-2, "batch_size": 4, "warmup_ratio": 0.0, "max_steps": "auto", **hp}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_a_run_with_auto_steps_stops_on_a_plateau_and_says_so(tiny_models: dict, tmp_path: Path) -> None:
    job = _auto_job(tiny_models, tmp_path, max_minutes=10, eval_every=4, early_stopping_patience=15)
    res = run_cli("run", str(job), "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    rd = RunDir(tmp_path / "run")
    counts = rd.stage("train")["counts"]
    assert counts["stop_reason"] == "plateau" and counts["metric"] is not None
    ts = json.loads((rd.student / "training_summary.json").read_text())
    assert ts["metric_name"] == "accuracy" and ts["stop_reason"] == "plateau"
    measured = [h for h in ts["history"] if "metric" in h]
    assert measured  # each epoch's end (3 steps) and every 4 steps
    best = max(h["metric"] for h in measured)
    assert ts["metric"] == best and ts["best_step"] == next(h["step"] for h in measured if h["metric"] == best)
    later = [h["metric"] for h in measured if h["step"] > ts["best_step"]]
    assert len(later) == 15 and all(m <= best for m in later) and best > 0  # it learnt, then 15 without better
    assert [e for e in rd.events("train", "plateau")]
    assert why_it_stopped(ts) in " ".join(res.stdout.split())
    assert "the validation accuracy had stopped improving" in why_it_stopped(ts)


def test_a_tiny_time_cap_stops_after_the_first_step(tiny_models: dict, tmp_path: Path) -> None:
    from potstill.pipeline import run_pipeline

    job = _auto_job(tiny_models, tmp_path, max_minutes=1e-9)
    rd = run_pipeline(validate_spec(yaml.safe_load(job.read_text())), tmp_path / "run", only=None)
    ts = json.loads((rd.student / "training_summary.json").read_text())
    assert ts["stop_reason"] == "time" and ts["steps"] == 1
    assert [h["step"] for h in ts["history"] if "metric" in h] == [1]  # measured once, at the cap
    assert "training stopped at its time cap" in why_it_stopped(ts)


def test_a_tune_trial_with_auto_steps_reports_at_each_validation(tiny_models: dict, tmp_path: Path) -> None:
    d = tune_job(tiny_models, tmp_path, space={LR: {"choices": [GOOD]}}, trials=1, pruner="median")
    d["hyperparameters"].update(max_steps="auto", max_minutes=10, eval_every=4, early_stopping_patience=2)
    rd = run_tune(validate_spec(d), tmp_path / "run").root
    s = summary(rd)
    trial = s["trials"][0]
    assert trial["state"] == "complete" and trial["last_report"] is not None
    ts = json.loads((rd / trial["folder"] / "student" / "training_summary.json").read_text())
    assert ts["stop_reason"] == "plateau"
    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{rd / 'tune' / 'study.sqlite'}")
    reported = study.trials[0].intermediate_values  # at optimiser steps, the values auto stopped on
    assert reported == {h["step"]: h["metric"] for h in ts["history"] if "metric" in h}


def test_max_steps_auto_is_a_searchable_choice(tiny_models: dict, tmp_path: Path) -> None:
    space = {"hyperparameters.max_steps": {"choices": ["auto", 40]}}
    d = tune_job(tiny_models, tmp_path, space=space)
    with pytest.raises(ConfigError, match=r"hyperparameters.max_steps = 'auto' makes the job invalid.*max_minutes"):
        validate_spec(d)
    d["hyperparameters"]["max_minutes"] = 5
    spec = validate_spec(d)
    assert spec.tune is not None and spec.tune.space["hyperparameters.max_steps"].choices == ["auto", 40]
    with pytest.raises(ConfigError, match=r"max_steps: low: Input should be greater than or equal to 1"):
        validate_spec(tune_job(tiny_models, tmp_path, space={"hyperparameters.max_steps": {"low": 0, "high": 40}}))
