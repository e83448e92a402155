"""One trial: an ordinary train -> evaluate run in runs/<name>/tune/trials/NNN/, on the job's teacher data.

    value = Trial(spec, rd, metric, n_rows, log)(optuna_trial)     # the Optuna objective

The trial folder's data/ is a link to the job's data/ and its state.json starts from the job's finished
generate and validate stages, so the ordinary pipeline trains and evaluates there as in any run (and the folder
can be inspected, reported or exported like one). Its checkpoints are removed when it ends: student/ holds the
result. What it measured goes into the trial's user attributes, which summary.json and the constraints read,
with the host and run folder that trained it (with several workers the winner may live on another machine:
``retrain`` trains it again here, in tune/trials/NNN-winner/, with the same settings and seed).

A trial that runs again the values of one whose process died (kill -9, a lost worker, Ctrl-C) continues its
training: when the dead trial's folder is here and holds checkpoints, it becomes the new trial's folder
(renamed to the new number) and the train stage resumes from its newest checkpoint; the values it reported to
the pruner are reported again. The dead trial stays failed (it never counts), the new one counts once.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import JobSpec
from ..config_tune import MEASURES
from ..errors import EvaluationError, PotstillError
from ..pipeline import run_pipeline
from ..run_dir import RunDir
from ..train.stage import on_validation
from .pruning import Reporter, metric_of
from .space import suggest, trial_spec


def trial_dir(rd: RunDir, number: int) -> Path:
    return rd.root / "tune" / "trials" / f"{number:03d}"


def where(rd: RunDir) -> dict[str, str]:
    """The machine and run folder a trial is trained in (user attributes ``host`` and ``run_dir``)."""
    return {"host": socket.gethostname(), "run_dir": str(rd.root.resolve())}


def is_here(rd: RunDir, attrs: dict[str, Any]) -> bool:
    """Whether a trial with these user attributes was trained in this run folder on this machine (a trial from
    before hosts were recorded is taken as this folder's)."""
    here = where(rd)
    return all(attrs.get(k, v) == v for k, v in here.items())


def retrain(spec: JobSpec, rd: RunDir, n_rows: int, number: int, params: dict[str, Any]) -> RunDir:
    """Train trial ``number``'s settings again in tune/trials/NNN-winner/ (not a trial of the study): the winner
    of a study shared by several workers when another machine trained it. Done once: a re-run finds it there."""
    folder = trial_dir(rd, number).with_name(f"{number:03d}-winner")
    prepare(folder, rd)
    try:
        run_pipeline(trial_spec(spec, params, n_rows), folder, only=["train", "evaluate"])
    finally:
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return RunDir(folder)


def prepare(folder: Path, rd: RunDir) -> None:
    """A run folder that reads ``rd``'s data/ and starts after its validate stage."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "data"
    if not link.is_symlink():
        shutil.rmtree(link, ignore_errors=True)
        link.symlink_to(os.path.relpath(rd.data, folder), target_is_directory=True)
    RunDir(folder).copy_stages(rd, ["generate", "validate"])


def origin_of(trial: Any) -> Any | None:
    """The failed trial this one runs again, or None: the last of Optuna's ``retry_history`` (a heartbeat retry,
    which also copies the dead trial's user attributes), else ``retry_of`` (queued by a re-run or a Ctrl-C)."""
    trials = {t.number: t for t in trial.study.get_trials(deepcopy=False)}
    history = trials[trial.number].system_attrs.get("retry_history") or []
    number = history[-1] if history else trial.user_attrs.get("retry_of")
    return None if number is None else trials.get(number)


def take_over(trial: Any, rd: RunDir, folder: Path) -> Any | None:
    """Move the folder of the dead trial this one runs again to ``folder`` when its checkpoints are here; the
    dead trial (None when there is nothing to continue)."""
    origin = origin_of(trial)
    if origin is None or folder.exists() or not is_here(rd, origin.user_attrs):
        return None
    old = trial_dir(rd, origin.number)
    if not any((old / "checkpoints").glob("step-*")):
        return None
    old.rename(folder)
    return origin


def measures(folder: Path, metric: str) -> dict[str, Any]:
    """The distilled student's numbers in a finished trial: the metric, every task metric, speed and size."""
    results = json.loads((folder / "eval" / "results.json").read_text())
    row = next(r for r in results["models"] if r["role"] == "distilled")
    lat, mem = row.get("latency") or {}, row.get("memory") or {}
    out: dict[str, Any] = {name: metric_of(row, name) for name in row.get("metrics") or {}}
    out.update(
        latency_ms_p50=lat.get("p50_ms"),
        latency_ms_p95=lat.get("p95_ms"),
        parameters=row.get("parameters"),
        size_on_disk_mb=row.get("size_on_disk_mb"),
        peak_memory_mb=mem.get("peak_tensor_mb"),
        train_seconds=RunDir(folder).stage("train").get("elapsed_s"),
    )
    if out.get(metric) is None:
        raise EvaluationError(f"{folder}: the validation split gave no {metric} (do its rows have answers?)")
    return out


class Trial:
    """The objective Optuna calls: apply the trial's parameters, train and evaluate, return the metric."""

    def __init__(self, spec: JobSpec, rd: RunDir, n_rows: int, log: Callable[[str], None]) -> None:
        assert spec.tune is not None
        self.spec, self.rd, self.n_rows, self.log = spec, rd, n_rows, log
        self.metric = spec.tune.metric(spec.task_type)
        self.objectives = [name for name, _ in spec.tune.objective.objectives(spec.task_type)]
        self.limits = spec.tune.objective.parsed()
        self.number: int | None = None  # the trial running now (for an interrupt)
        self.started: Callable[[], None] = lambda: None  # called once the trial exists (releases CreationLock)

    def __call__(self, trial: Any) -> float | tuple[float, ...]:
        tune = self.spec.tune
        assert tune is not None
        self.number = trial.number
        self.started()
        params = suggest(trial, tune.space)
        folder = trial_dir(self.rd, trial.number)
        trial.set_user_attr("folder", str(folder.relative_to(self.rd.root)))
        for key, value in where(self.rd).items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("pid", os.getpid())  # the process that ran it (--workers K)
        spec = trial_spec(self.spec, params, self.n_rows)
        origin = take_over(trial, self.rd, folder)
        if origin is not None:
            trial.set_user_attr("resumed_from_trial", origin.number)
            self.log(f"tune: #{trial.number:03d} continues the training of #{origin.number:03d} from its checkpoint")
        prepare(folder, self.rd)
        t0 = time.monotonic()
        interrupted = False
        try:
            if len(self.objectives) == 1:  # Optuna prunes single-objective studies only: no reports otherwise
                reporter = Reporter(trial, spec, self.metric, tune.reports, tune.report_rows)
                if origin is not None:
                    reporter.replay(origin.intermediate_values)
                with on_validation(reporter):
                    run_pipeline(spec, folder, only=["train", "evaluate"])
            else:
                run_pipeline(spec, folder, only=["train", "evaluate"])
            got = measures(folder, self.metric)
            missing = [name for name in self.objectives if got.get(name) is None]
            if missing:
                raise EvaluationError(f"{folder}: the trial did not measure {missing[0]}")
        except PotstillError as exc:
            trial.set_user_attr("error", str(exc).splitlines()[0][:300])
            raise
        except KeyboardInterrupt:
            interrupted = True  # its checkpoints stay: the trial that runs it again continues from them
            raise
        finally:
            trial.set_user_attr("seconds", round(time.monotonic() - t0, 2))
            if not interrupted:
                shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        trial.set_user_attr("measures", {name: got.get(name) for name in (self.metric, *MEASURES)})  # one write
        violations = [c.violation(float(got[c.name])) if got.get(c.name) is not None else 1.0 for c in self.limits]
        trial.set_user_attr("violations", violations)
        trial.set_user_attr("feasible", all(v <= 0 for v in violations))
        values = tuple(float(got[name]) for name in self.objectives)
        return values if len(values) > 1 else values[0]
