"""From a sampled point of the search space to the spec of one trial.

    params = suggest(trial, spec.tune.space)        # {"hyperparameters.learning_rate": 3.1e-4, ...}
    trial_spec(spec, params, n_rows)                # the job with them applied, scored on validation only

A trial's spec differs from the job's only in the train stage's settings (the searched ones, and how often it
validates: ``tune.reports`` times per training) and in what it evaluates (the distilled student alone, on the
validation split): its generate and validate fingerprints are the job's, so it reads the job's data/ as is.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ..config import JobSpec
from ..config_errors import format_problems
from ..config_tune import Param, spec_field, with_params
from ..errors import ConfigError
from ..pipeline import fingerprints
from ..run_dir import file_digest, fingerprint


def suggest(trial: Any, space: dict[str, Param]) -> dict[str, Any]:
    """Ask the Optuna trial for a value of each searched path (its name in the study is the path)."""
    out: dict[str, Any] = {}
    for path, p in space.items():
        if p.choices is not None:
            out[path] = trial.suggest_categorical(path, p.choices)
            continue
        assert p.low is not None and p.high is not None
        if spec_field(path).kind == "int":
            out[path] = trial.suggest_int(path, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            out[path] = trial.suggest_float(path, float(p.low), float(p.high), step=p.step, log=p.log)
    return out


def trial_spec(spec: JobSpec, params: dict[str, Any], n_rows: int) -> JobSpec:
    """The job with ``params`` applied, validating ``tune.reports`` times during training, evaluating the
    distilled student alone on the validation split (the test split is for the winner only)."""
    from ..train.stage import fit_config

    assert spec.tune is not None
    d = with_params(spec.public_dict(), params)
    d.pop("tune")
    d["data"].pop("test", None)
    ev = d["evaluation"]
    ev.update(teacher=False, baseline=False, models=[])
    limits = {c.name for c in spec.tune.objective.parsed()}  # a constrained measure is always measured,
    limits |= {name for name, _ in spec.tune.objective.objectives(spec.task_type)}  # and an optimised one
    if limits & {"latency_ms_p50", "latency_ms_p95"} and "latency" not in ev["metrics"]:
        ev["metrics"].append("latency")
    if "peak_memory_mb" in limits and "memory" not in ev["metrics"]:
        ev["metrics"].append("memory")
    try:
        out = JobSpec.model_validate(d)
    except ValidationError as exc:  # values inside the checked bounds can still clash (the trial fails alone)
        raise ConfigError(format_problems(exc, JobSpec, "trial", {})) from None
    if out.hyperparameters.max_steps == "auto":  # no known length: it validates (and reports) as the job says
        return out
    rows = max(1, round(n_rows * (out.hyperparameters.data_share or 1.0)))  # a trial may train on a share
    every = max(1, fit_config(out).total_steps(rows) // spec.tune.reports)
    own = out.hyperparameters.eval_every
    out.hyperparameters.eval_every = min(own, every) if own else every
    return out


def study_fingerprint(spec: JobSpec) -> str:
    """What every trial of a study shares: the teacher data, the settings not searched, the objective. A study
    begun on other inputs cannot be continued (its trials would not compare)."""
    assert spec.tune is not None
    d = spec.public_dict()
    tune = d.pop("tune")
    for path in spec.tune.space:
        *parents, leaf = path.split(".")
        node = d
        for p in parents:
            node = node.get(p) or {}
        node.pop(leaf, None)
    return fingerprint(
        fingerprints(spec)["validate"],
        d["student"],
        d["hyperparameters"],
        d["evaluation"],
        file_digest(spec.data.validation),
        tune["objective"],
        tune["reports"],
        tune["report_rows"],
    )
