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

from typing import Any

from ..config import JobSpec
from ..train.probe import MetricProbe, metric_of

__all__ = ["Reporter", "metric_of"]


class Reporter:
    def __init__(self, trial: Any, spec: JobSpec, metric: str, reports: int, rows: int) -> None:
        self.trial, self.metric, self.reports = trial, metric, reports
        self.probe = MetricProbe(spec, metric, rows)
        self.convs = self.probe.convs
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
