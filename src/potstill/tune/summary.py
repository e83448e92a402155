"""What a tune found: tune/summary.json, the line printed per trial, the winner and its promotion.

summary.json:
    {"study", "storage", "metric", "split": "validation", "direction", "constraints": [...], "target_trials",
     "objectives": [{"name", "direction"}] (two with a second objective), "front": [numbers] (two objectives: the
     feasible complete trials no other beats on both),
     "finished" (complete + pruned), "complete", "pruned", "failed",
     "trials": [{"number", "state", "params", "value" (complete trials: the metric), "values" (each objective),
                 "last_report" (the last value reported during training, on tune.report_rows rows), "feasible",
                 "latency_ms_p50", "parameters", "train_seconds", "seconds", "folder", "host", "pruned_at_pct",
                 "pruned_at_step" (max_steps: auto), "retry_of", "resumed_from_trial" (it continued that dead
                 trial's training from its checkpoint), "continued_in" (the reverse), "error"}],
     "best": {"number", "params", "value", "folder"} | null,
     "importances": {"values": {path: share}, "method"} | {"note": why they could not be computed},
     "confirm": null | [{"number", "value", "seeds": {seed: value}, "mean", "sd", "best_run" (its folder with the
                best validation score)}] (tune.confirm: the best trials trained again with other seeds, best mean
                first; the winner is the first, and its best_run's student is promoted)}
"""

from __future__ import annotations

import shutil
import warnings
from typing import Any

from ..config import JobSpec
from ..run_dir import RunDir, atomic_replace_dir
from .confirm import confirmed, feasible, means
from .pareto import best_on_front, pareto_front
from .study import shown_url


def _row(t: Any, metric: str) -> dict[str, Any]:
    a = {**t.user_attrs, **(t.user_attrs.get("measures") or {})}  # measures: one attribute since phase 2
    done = t.state.name == "COMPLETE"
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "params": dict(t.params),
        "value": t.values[0] if done else None,
        "values": list(t.values) if done else None,
        "last_report": t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None,
        "feasible": a.get("feasible"),
        "latency_ms_p50": a.get("latency_ms_p50"),
        "parameters": a.get("parameters"),
        "train_seconds": a.get("train_seconds"),
        "seconds": a.get("seconds"),
        "folder": a.get("folder"),
        "host": a.get("host"),
        "pruned_at_pct": a.get("pruned_at_pct"),
        "pruned_at_step": a.get("pruned_at_step"),  # max_steps: auto (no known length)
        "retry_of": t.user_attrs.get("retry_of"),
        "resumed_from_trial": a.get("resumed_from_trial"),  # its training continued that dead trial's
        "error": a.get("error"),
    }


def _senses(study: Any) -> list[str]:
    return ["max" if d.name == "MAXIMIZE" else "min" for d in study.directions]


def front(study: Any) -> list[Any]:
    """The feasible complete trials no other feasible one beats on every objective."""
    ok = feasible(study)
    return [ok[i] for i in pareto_front([t.values for t in ok], _senses(study))]


def best_trial(study: Any) -> Any | None:
    """The best complete trial that met every constraint, or None. One objective: the best value (ties: the
    earlier). Two: the Pareto front's best by the first objective (the task's metric; ties: the better second
    objective, then the earlier). With tune.confirm, once the best trials have their runs with other seeds: the
    best mean over them (tune/confirm.py)."""
    ok = feasible(study)
    i = best_on_front([t.values for t in ok], _senses(study))
    if i is None:
        return None
    return confirmed(study) or ok[i]


def summary(study: Any, spec: JobSpec, url: str, target: int) -> dict[str, Any]:
    assert spec.tune is not None
    metric = spec.tune.metric(spec.task_type)
    trials = [t for t in study.get_trials() if t.state.name != "WAITING"]
    states = [t.state.name for t in trials]
    best = best_trial(study)
    objectives = spec.tune.objective.objectives(spec.task_type)
    return {
        "study": study.study_name,
        "storage": shown_url(url),
        "metric": metric,
        "split": "validation",
        "direction": spec.tune.objective.direction,
        "constraints": spec.tune.objective.constraints,
        "objectives": [{"name": n, "direction": d} for n, d in objectives],
        "front": [t.number for t in front(study)] if len(objectives) > 1 else None,
        "target_trials": target,
        "finished": states.count("COMPLETE") + states.count("PRUNED"),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "trials": _continued([_row(t, metric) for t in trials]),
        "best": None
        if best is None
        else {
            "number": best.number,
            "params": best.params,
            "value": best.values[0],
            "values": list(best.values),
            "folder": best.user_attrs["folder"],
        },
        "importances": importances(study),
        "confirm": means(study),
    }


def importances(study: Any) -> dict[str, Any]:
    """Optuna's parameter importances (its default evaluator, PED-ANOVA) over the complete trials, as
    ``{"values": {path: share}}``; ``{"note": why}`` when they cannot be computed (fewer than 2 complete trials,
    no setting that varied, too few trials for the evaluator)."""
    import optuna
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2:
        return {"note": f"they need at least 2 complete trials ({len(done)} so far)."}
    names = sorted({p for t in done for p in t.params})
    varying = [p for p in names if len({repr(t.params.get(p)) for t in done}) > 1]
    if not varying:
        return {"note": "every complete trial had the same settings, so none can be told apart."}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            values = optuna.importance.get_param_importances(study, params=varying)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            return {"note": f"Optuna could not compute them ({str(exc).splitlines()[0][:200]})."}
    if any("importances will be equal" in str(w.message) for w in caught):
        return {"note": f"too few complete trials ({len(done)}) for Optuna to tell which setting mattered."}
    return {"values": {k: round(float(v), 4) for k, v in values.items()}, "method": "PED-ANOVA (Optuna's default)"}


def _continued(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark each dead trial whose training a later trial continued (its folder became that trial's)."""
    by_origin = {r["resumed_from_trial"]: r["number"] for r in rows if r["resumed_from_trial"] is not None}
    for r in rows:
        r["continued_in"] = by_origin.get(r["number"])
    return rows


def trial_line(s: dict[str, Any], number: int, session_s: float, session_n: int) -> str:
    """``tune 3/20 #002 accuracy 0.833, best 0.917 #001, 1 pruned, 14 s, eta 4 min`` (fits 80 columns)."""
    t = next(r for r in s["trials"] if r["number"] == number)
    if t["state"] == "complete":
        outcome = ", ".join(f"{o['name']} {v:.3g}" for o, v in zip(s["objectives"], t["values"], strict=True))
    elif t["state"] == "pruned":
        at = f"step {t['pruned_at_step']}" if t.get("pruned_at_step") is not None else f"{t['pruned_at_pct']}%"
        outcome = f"pruned at {at}"
    else:
        outcome = f"{t['state']}: {t['error'] or 'see logs/events.jsonl'}"
    if t["state"] == "complete" and t["feasible"] is False:
        outcome += " (infeasible)"
    best = s["best"]
    parts = [f"tune {s['finished']}/{s['target_trials']} #{number:03d} {outcome}"]
    parts.append(f"best {best['value']:.3g} #{best['number']:03d}" if best else "no best yet")
    parts.append(f"{s['pruned']} pruned")
    if s["failed"]:
        parts.append(f"{s['failed']} failed")
    parts.append(f"{t['seconds'] or 0:.0f} s")
    left = s["target_trials"] - s["finished"]
    if left > 0 and session_n:
        eta = left * session_s / session_n
        parts.append(f"eta {eta:.0f} s" if eta < 90 else f"eta {eta / 60:.0f} min")
    return ", ".join(parts)


def trials_table(s: dict[str, Any]) -> tuple[list[str], list[list[str]], str]:
    """Header, rows and title of the console's table of trials (from summary.json)."""
    second = [o["name"] for o in s.get("objectives") or []][1:]
    extra = second[0] if second and second[0] != "latency_ms_p50" else None  # a second objective gets a column
    on_front = set(s.get("front") or [])
    rows = [
        [
            f"#{t['number']:03d}",
            t["state"]
            + (" (infeasible)" if t["feasible"] is False else "")
            + (" (front)" if t["number"] in on_front else "")
            + (f" at {t['pruned_at_pct']}%" if t["pruned_at_pct"] is not None else ""),
            ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in t["params"].items()),
            "–" if t["value"] is None else f"{t['value']:.4g}",
            "–" if t["latency_ms_p50"] is None else f"{t['latency_ms_p50']:.1f}",
            *([] if extra is None else ["–" if t.get(extra) is None else f"{t[extra]:.4g}"]),
        ]
        for t in s["trials"]
    ]
    best = f", best #{s['best']['number']:03d}" if s["best"] else ""
    header = ["trial", "state", "parameters", f"{s['metric']} (validation)", "latency p50 ms"]
    header += [extra] if extra else []
    return header, rows, f"tune: {s['finished']} of {s['target_trials']} trials finished{best}"


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v).rsplit("/", 1)[-1] if isinstance(v, str) else str(v)


def promote(rd: RunDir, trial_root: RunDir) -> bool:
    """Make the trial's student the run's (swapped in whole) and its train stage the run's; False when it already
    is (a re-run after the tune finished)."""
    if rd.stage("train") == trial_root.stage("train") and rd.student.exists():
        return False
    tmp = rd.root / ".student.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(trial_root.student, tmp)
    atomic_replace_dir(tmp, rd.student)
    rd.copy_stages(trial_root, ["train"])
    return True
