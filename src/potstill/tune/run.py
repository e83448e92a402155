"""potstill tune: search the train stage's settings on the validation split, then promote and test the winner.

    run_tune(spec, "runs/support-bot", trials=20)      # ≡ potstill tune job.yaml --trials 20

1. generate and validate run once, as in `potstill run` (the request cache: no teacher call is ever repeated);
2. trials (tune/trials/NNN/, each an ordinary train -> evaluate run on the shared data/) until ``trials`` of
   them finished (complete or pruned) or ``timeout`` seconds passed; each is scored on the validation split;
3. with ``tune.confirm``, the best trials are trained again with other seeds and the best mean wins
   (tune/confirm.py);
4. the best feasible trial's student is promoted to student/, then evaluate (the test split, touched here
   only) and report run as usual. tune/summary.json lists every trial and the winner.

Re-running continues the same study (tune/study.sqlite): finished trials are kept, a trial killed mid-way is run
again, and only complete and pruned trials count toward ``trials``.

Several workers (the same command with one ``--storage postgresql://...`` on several machines): each counts the
finished and running trials and starts the next one under the study's ``CreationLock``, so the study ends with
exactly ``trials`` finished trials; a worker whose remaining budget is held by other workers' running trials
waits for them (and takes over one that fails or whose worker dies). The winner may have been trained on another
machine: its settings are then trained again here (tune/trials/NNN-winner/) and that student is promoted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..config import JobSpec
from ..data.jsonl import read_examples
from ..errors import ConfigError, DataError, PotstillError, TrainingError
from ..pipeline import run_lock, run_pipeline
from ..run_dir import RunDir, read_jsonl
from .confirm import best_run, confirm, means
from .study import CreationLock, default_storage, finished, finished_and_running, open_study
from .summary import best_trial, promote, summary, trial_line
from .trial import Trial, is_here, retrain
from .workers import no_live_workers, run_workers

MAX_FAILS_IN_A_ROW = 3
POLL_S = 2.0  # how often a worker waiting for other workers' trials looks again


def run_tune(
    spec: JobSpec,
    run_dir: str | os.PathLike[str],
    trials: int | None = None,
    storage: str | None = None,
    timeout: float | None = None,
    log: Callable[[str], None] | None = None,
    workers: int = 1,
) -> RunDir:
    """Tune, promote the winner to ``run_dir``/student and evaluate it; returns the run folder. ``workers``: that
    many processes on this machine share the study (tune/workers.py)."""
    if spec.tune is None:
        raise ConfigError("the job has no tune: section; add one with the space to search (see docs/tuning.md)")
    say = log or (lambda msg: None)
    target = spec.tune.trials if trials is None else trials
    if target < 1:
        raise ConfigError(f"--trials must be at least 1 (got {target})")
    limit = spec.tune.timeout_s if timeout is None else timeout
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {workers})")
    _check_references(spec)
    rd = RunDir(Path(run_dir))
    with run_lock(rd):
        run_pipeline(spec, rd.root, only=["generate", "validate"], log=say)
        n_rows = sum(1 for _ in read_jsonl(rd.data / "train.jsonl"))
        url = storage or default_storage(rd)
        with no_live_workers(rd):  # an earlier tune's workers are gone before its RUNNING trials are failed
            study = open_study(spec, rd, storage)
        if workers == 1:
            _search(study, Trial(spec, rd, n_rows, say), spec, rd, url, target, limit, say)
        else:
            if (done := finished(study)) > 0:
                say(f"tune: continuing the study {study.study_name!r}: {done} of {target} trials finished earlier")
            for i, code in enumerate(run_workers(spec, rd, url, target, limit, workers, say)):
                if code != 0:
                    say(f"tune: worker {i + 1} ended with exit status {code} (its lines above say why)")
            rd.write_json(rd.root / "tune" / "summary.json", summary(study, spec, url, target))
        if spec.tune.confirm is not None:
            confirm(study, spec, rd, n_rows, say)
            rd.write_json(rd.root / "tune" / "summary.json", summary(study, spec, url, target))
        best = best_trial(study)
        if best is None:
            raise TrainingError(_no_winner(study, spec))
        run = best_run(study, best.number)  # tune.confirm: the winning recipe's best run on validation
        if run is not None and (rd.root / run).is_dir():
            winner = RunDir(rd.root / run)
        elif is_here(rd, best.user_attrs):
            winner = RunDir(rd.root / best.user_attrs["folder"])
        else:
            say(
                f"tune: #{best.number:03d} wins; it was trained by another worker "
                f"({best.user_attrs.get('host')}:{best.user_attrs.get('run_dir')}): training it again here"
            )
            winner = retrain(spec, rd, n_rows, best.number, dict(best.params))
            rd.event("tune", "retrained", trial=best.number, folder=str(winner.root.relative_to(rd.root)))
        final = winner_spec(spec, winner)
        promoted = promote(rd, winner)
        if promoted:
            folder = str(winner.root.relative_to(rd.root))
            rd.event("tune", "promoted", trial=best.number, folder=folder, params=best.params, value=best.values[0])
            say(_promoted_line(study, spec, best, folder))
        run_pipeline(final, rd.root, only=["evaluate", "report"], force=promoted, log=say)
    return rd


def _search(
    study: Any,
    objective: Trial,
    spec: JobSpec,
    rd: RunDir,
    url: str,
    target: int,
    limit: float | None,
    say: Callable[[str], None],
) -> None:
    from optuna.trial import TrialState

    t0 = time.monotonic()
    ran = fails = 0
    last_error = "see logs/events.jsonl"
    if (done := finished(study)) > 0:
        say(f"tune: continuing the study {study.study_name!r}: {done} of {target} trials finished earlier")
    lock = CreationLock(url, study.study_name)
    objective.started = lock.release  # the trial exists: other workers may count it now
    waiting = False
    try:
        while True:
            if limit is not None and time.monotonic() - t0 >= limit:
                say(f"tune: {limit:g} s passed; no new trial started ({finished(study)} of {target} finished)")
                break
            if fails >= MAX_FAILS_IN_A_ROW:
                raise TrainingError(f"{fails} trials in a row failed; the last: {last_error}")
            with lock.held():  # count, then start the next trial, with no other worker in between
                done, busy = finished_and_running(study)  # one read: see its docstring
                if done >= target:
                    break
                if done + busy >= target:  # the rest of the budget is held by trials running elsewhere
                    if not waiting:
                        say(f"tune: {done} of {target} finished; waiting for {busy} trial(s) of other workers")
                    waiting = True
                    number = None
                else:
                    waiting = False
                    number = _one_trial(study, objective)
            if waiting:
                time.sleep(POLL_S)  # outside the lock; a trial that fails or whose worker dies is taken over
                continue
            ran += 1
            s = summary(study, spec, url, target)
            rd.write_json(rd.root / "tune" / "summary.json", s)
            if number is None:
                continue
            t = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
            fails = fails + 1 if t.state == TrialState.FAIL else 0
            last_error = t.user_attrs.get("error", last_error)
            say(trial_line(s, number, time.monotonic() - t0, ran))
    finally:
        lock.close()
    rd.write_json(rd.root / "tune" / "summary.json", summary(study, spec, url, target))


def _one_trial(study: Any, objective: Trial) -> int | None:
    """Run one trial (called holding the creation lock, which the objective releases as soon as its trial
    exists); its number, or None when it failed before it began."""
    objective.number = None
    try:
        study.optimize(objective, n_trials=1, catch=(PotstillError,))  # no gc.collect: 0.2-0.5 s a trial
    except KeyboardInterrupt:
        if objective.number is not None:
            _requeue(study, objective.number)
        raise
    return objective.number


def _requeue(study: Any, number: int) -> None:
    """An interrupted trial (Ctrl-C) runs again when the tune is re-run."""
    t = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    if t.params:
        study.enqueue_trial(dict(t.params), user_attrs={"retry_of": number})


def _promoted_line(study: Any, spec: JobSpec, best: Any, folder: str) -> str:
    assert spec.tune is not None
    metric = spec.tune.metric(spec.task_type)
    row = next((r for r in means(study) or [] if r["number"] == best.number), None)
    if row is not None:  # tune.confirm: the recipe by its mean, the student by its run
        own = folder == best.user_attrs.get("folder")
        score = row["value"] if own else row["seeds"].get(folder.rsplit("seed", 1)[-1], row["value"])
        return (
            f"tune: #{best.number:03d} wins on its mean {metric} over {1 + len(row['seeds'])} seeds "
            f"({row['mean']:.3g} on validation); its run {folder} ({score:.3g}) promoted to student/"
        )
    on = "of the Pareto front " if len(best.values) > 1 else ""
    return f"tune: #{best.number:03d} wins {on}({metric} {best.values[0]:.3g} on validation), promoted to student/"


def _check_references(spec: JobSpec) -> None:
    path = spec.data.validation
    if not any(ex.reference is not None for ex in read_examples(path, "validation", spec.prompts.template)):
        raise DataError(
            f"{path}: no validation row has an answer; tune scores every trial on the validation split against "
            'them: add answers (e.g. {"prompt": ..., "answer": ...} or an assistant turn)'
        )


def _no_winner(study: Any, spec: JobSpec) -> str:
    assert spec.tune is not None
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "no trials"
    if "complete" in states and spec.tune.objective.constraints:
        return f"no trial met the constraints ({'; '.join(spec.tune.objective.constraints)}): {counts}"
    return f"no trial completed ({counts}); see tune/summary.json"


def winner_spec(spec: JobSpec, winner: RunDir) -> JobSpec:
    """The job as the winning trial trained it (its student and hyperparameters), evaluated as the job says."""
    d = yaml.safe_load(winner.job_yaml.read_text())
    own = spec.public_dict()
    d.update(data=own["data"], evaluation=own["evaluation"], tune=own["tune"])
    return JobSpec.model_validate(d)
