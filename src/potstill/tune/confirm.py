"""Confirming the winner: the best trials trained again with other seeds; the best mean wins.

    confirm(study, spec, rd, n_rows, log)     # tune.confirm: {top: 3, seeds: 2}, after the search
    confirmed(study)                          # the winner by the mean (best_trial uses it), or None

Every trial trains once, with the job's seed. On a small student one recipe's metric moves with the seed (the
data order, sampling, the share of the data) by more than good recipes differ, so the best single trial is
often the luckiest, and its test score falls back. With ``confirm``, each of the ``top`` best feasible complete
trials is trained ``seeds`` more times (seeds: the job's + 1, + 2, ...), in tune/trials/NNN-seedS/, each scored on
the validation split as a trial is. The winner is the best mean over a trial and its runs, among the top trials
and any confirmed earlier (a study that goes on keeps what it measured): the recipe is chosen by its mean, and
the student promoted is its run with the best validation score (``best_run``; the trial's own on a tie). The
scores go into the study (its user attribute ``confirm``), so a re-run, a continued study or a worker on
another machine trains none twice.
"""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Callable
from typing import Any

from ..config import JobSpec
from ..pipeline import run_pipeline
from ..run_dir import RunDir
from .space import trial_spec
from .trial import measures, prepare, trial_dir

ATTR = "confirm"  # the study's user attribute: {"top": K, "seeds": [...], "scores": {"7": {"43": 0.61}}}


def feasible(study: Any) -> list[Any]:
    """The complete trials that met every constraint."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs.get("feasible", True)]


def _maximize(study: Any) -> bool:
    return bool(study.directions[0].name == "MAXIMIZE")


def candidates(study: Any, top: int, ok: list[Any] | None = None) -> list[Any]:
    """The ``top`` best feasible complete trials by their value (ties: the earlier); ``ok``: feasible(study)."""
    sign = -1.0 if _maximize(study) else 1.0
    return sorted(feasible(study) if ok is None else ok, key=lambda t: (sign * t.values[0], t.number))[:top]


def _record(study: Any) -> dict[str, Any]:
    return dict(study.user_attrs.get(ATTR) or {})


def means(study: Any) -> list[dict[str, Any]] | None:
    """Each candidate's trial value, re-run scores and mean, best first; None until every one is confirmed."""
    rec = _record(study)
    if not rec or len(study.directions) != 1:
        return None
    seeds, scores = [str(s) for s in rec.get("seeds", [])], rec.get("scores", {})
    ok = feasible(study)

    def done(t: Any) -> bool:
        return all(s in scores.get(str(t.number), {}) for s in seeds)

    if not all(done(t) for t in candidates(study, int(rec.get("top", 1)), ok)):
        return None
    rows = []
    for t in filter(done, ok):  # the top ones, and any confirmed earlier that later trials pushed out of the top
        got = scores[str(t.number)]
        runs = [float(got[s]) for s in seeds]
        values = [float(t.values[0]), *runs]
        rows.append(
            {
                "number": t.number,
                "value": float(t.values[0]),
                "seeds": dict(zip(seeds, runs, strict=True)),
                "mean": statistics.mean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                "best_run": _best_run(t, seeds, runs, _maximize(study)),
            }
        )
    sign = -1.0 if _maximize(study) else 1.0
    return sorted(rows, key=lambda r: (sign * r["mean"], r["number"]))


def _best_run(trial: Any, seeds: list[str], runs: list[float], maximize: bool) -> str:
    """The folder of the trial's best-scoring run on validation: the trial's own unless a seed's beats it."""
    folder, best = str(trial.user_attrs["folder"]), float(trial.values[0])
    for seed, value in zip(seeds, runs, strict=True):
        if (value > best) if maximize else (value < best):
            folder, best = f"{folder}-seed{seed}", value
    return folder


def best_run(study: Any, number: int) -> str | None:
    """Trial ``number``'s best run on validation (a folder under the run folder) once it is confirmed, else None."""
    return next((r["best_run"] for r in means(study) or [] if r["number"] == number), None)


def confirmed(study: Any) -> Any | None:
    """The winner by the mean over seeds, once every candidate has its runs; otherwise None."""
    rows = means(study)
    if not rows:
        return None
    return next(t for t in study.get_trials(deepcopy=False) if t.number == rows[0]["number"])


def confirm(study: Any, spec: JobSpec, rd: RunDir, n_rows: int, say: Callable[[str], None]) -> None:
    """Train the candidates with the other seeds (those not scored yet) and record the scores in the study."""
    assert spec.tune is not None and spec.tune.confirm is not None
    c, metric = spec.tune.confirm, spec.tune.metric(spec.task_type)
    seeds = [spec.hyperparameters.seed + i for i in range(1, c.seeds + 1)]
    chosen = candidates(study, c.top)
    done = _record(study).get("scores", {})
    todo = [(t, s) for t in chosen for s in seeds if str(s) not in done.get(str(t.number), {})]
    rec = _record(study)
    if rec.get("top") != c.top or rec.get("seeds") != seeds:  # what means() needs, also when all are scored
        study.set_user_attr(ATTR, rec | {"top": c.top, "seeds": seeds})
    if not todo:
        return
    names = ", ".join(f"#{t.number:03d}" for t in chosen)
    say(f"tune: confirming the best {len(chosen)} trial(s) ({names}) with {c.seeds} more seed(s): {len(todo)} runs")
    for t, seed in todo:
        value = train_seed(spec, rd, n_rows, t, seed, metric)
        rec = _record(study)  # read again: another worker may have added scores meanwhile
        rec.setdefault("scores", {}).setdefault(str(t.number), {})[str(seed)] = value
        study.set_user_attr(ATTR, rec | {"top": c.top, "seeds": seeds})
        say(f"tune: #{t.number:03d} with seed {seed}: {metric} {value:.4g} (its trial: {t.values[0]:.4g})")
    rows = means(study)
    if rows:
        first = rows[0]
        single = candidates(study, 1)[0]
        note = (
            f"; #{single.number:03d}, the best single run ({single.values[0]:.4g}), averages "
            f"{next(r['mean'] for r in rows if r['number'] == single.number):.4g}"
            if single.number != first["number"]
            else ""
        )
        say(
            f"tune: #{first['number']:03d} has the best mean {metric} over {1 + len(seeds)} seeds: "
            f"{first['mean']:.4g} ± {first['sd']:.2g}{note}"
        )


def train_seed(spec: JobSpec, rd: RunDir, n_rows: int, trial: Any, seed: int, metric: str) -> float:
    """Trial ``trial``'s settings trained with ``seed`` in tune/trials/NNN-seedS/ and scored on validation (a
    finished folder is not trained again)."""
    folder = trial_dir(rd, trial.number).with_name(f"{trial.number:03d}-seed{seed}")
    prepare(folder, rd)
    run = trial_spec(spec, dict(trial.params), n_rows)
    run.hyperparameters.seed = seed
    try:
        run_pipeline(run, folder, only=["train", "evaluate"])
    finally:
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return float(measures(folder, metric)[metric])
