"""Intermediate reports: the student's validation *metric*, measured while it trains, told to the Optuna trial.

    with on_validation(Reporter(trial, spec, "accuracy", reports=10, rows=64)):
        run_pipeline(spec, trial_dir, only=["train", "evaluate"])

At each tenth of training (``reports`` points; the trial's spec validates that often) the student answers the
first ``rows`` validation prompts greedily through the one decoder and the task's scorer grades them
(train/probe.py). The value is reported at "step" = the percentage of training done, so trials of different
lengths compare at the same point; the pruner may then stop the trial (optuna.TrialPruned ends its training at
once). A trial with ``max_steps: auto`` has no known length: it reports at every validation, at "step" = its
optimiser step, and its training stops on these same values when they stop improving.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from ..config import JobSpec
from ..train.probe import MetricProbe, metric_of

__all__ = ["SHARES", "Reporter", "metric_of", "noise_aware_median"]

SHARES = ("accuracy", "exact_match")  # metrics that are a share of the rows scored: their noise is binomial
Z = 1.96  # a trial is pruned only when it is below the median by more than this many standard errors


def noise_aware_median(default_rows: int, startup_trials: int, warmup_pct: int) -> Any:
    """Optuna's median rule that keeps a trial within the sampling noise of the median.

    A report scores ``rows`` validation rows (the trial's ``report_rows`` attribute, set by its Reporter:
    tune.report_rows, or fewer when the split has fewer; else ``default_rows``), so two students of equal skill
    differ by about sqrt(p (1 - p) / rows) in a share p (accuracy). Optuna's MedianPruner stops any trial below
    the median, which on a learning curve that stays near 0 for its first half (the demo's student: 0-5 % on 64
    rows at 20 % of training, then a climb) prunes trials on noise. Here a trial is pruned only when its best
    report so far is below the median by more than Z standard errors (p: the median, kept at least 1/rows from
    0 and 1)."""
    import optuna

    class NoiseAwareMedianPruner(optuna.pruners.MedianPruner):
        def prune(self, study: Any, trial: Any) -> bool:
            if not super().prune(study, trial):
                return False
            values = [v for v in trial.intermediate_values.values() if not math.isnan(v)]
            if not values:
                return True  # Optuna's rule: a trial that reported only NaN is pruned
            rows = max(1, int(trial.user_attrs.get("report_rows", default_rows)))  # what the reports scored
            step = trial.last_step
            done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            there = [v for t in done if not math.isnan(v := t.intermediate_values.get(step, math.nan))]
            if not there:
                return False
            median = statistics.median(there)
            p = min(max(median, 1 / rows), 1 - 1 / rows)
            margin = Z * math.sqrt(p * (1 - p) / rows)
            if study.direction == optuna.study.StudyDirection.MAXIMIZE:
                return max(values) + margin < median
            return min(values) - margin > median

    return NoiseAwareMedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_pct)


class Reporter:
    def __init__(self, trial: Any, spec: JobSpec, metric: str, reports: int, rows: int) -> None:
        self.trial, self.metric, self.reports = trial, metric, reports
        self.probe = MetricProbe(spec, metric, rows)
        self.convs = self.probe.convs
        trial.set_user_attr("report_rows", len(self.convs))  # the pruner's noise margin (noise_aware_median)
        self.done = 0  # reports made
        self.values: list[tuple[int, float]] = []

    def replay(self, values: dict[int, float]) -> None:
        """Report again what a dead trial reported before its training is continued here (same steps)."""
        for at, value in sorted(values.items()):
            self.trial.report(value, at)
            self.values.append((at, value))
        if values:
            self.done = max(values) * self.reports // 100

    def __call__(self, step: int, total: int, val_loss: float, model: Any) -> float | None:
        if total == 0:  # max_steps: auto: no known length; report every validation at its step
            return self._report(step, model, "pruned_at_step", f"step {step}")
        point = self.reports * step // max(1, total)
        if point <= self.done or step >= total or not self.convs:  # the end is the trial's own evaluation
            return None
        self.done = point
        pct = 100 * point // self.reports
        return self._report(pct, model, "pruned_at_pct", f"{pct}% of training")

    def _report(self, at: int, model: Any, attr: str, where: str) -> float:
        import optuna

        value = self.score(model)
        self.values.append((at, value))
        self.trial.report(value, at)
        if self.trial.should_prune():
            self.trial.set_user_attr(attr, at)
            raise optuna.TrialPruned(f"{self.metric} {value:.4g} at {where}: worse than the other trials")
        return value

    def score(self, model: Any) -> float:
        return self.probe(model)
