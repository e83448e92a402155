"""Intermediate reports: the student's validation *metric*, measured while it trains, told to the Optuna trial.

    with on_validation(Reporter(trial, spec, "accuracy", reports=10, rows=64)):
        run_pipeline(spec, trial_dir, only=["train", "evaluate"])

At each tenth of training (``reports`` points; the trial's spec validates that often) the student answers the
first ``rows`` validation prompts greedily through the one decoder and the task's scorer grades them. The value is
reported at "step" = the percentage of training done, so trials of different lengths compare at the same point;
the pruner may then stop the trial (optuna.TrialPruned ends its training at once).
"""

from __future__ import annotations

from typing import Any

from ..config import JobSpec
from ..data.cot import student_messages
from ..data.jsonl import read_examples
from ..data.tasks import task_for
from ..evaluate.run import score_row


def metric_of(row: dict[str, Any], name: str) -> float | None:
    """A model row's metric (results.json's shape): accuracy at the top level, the others under metrics."""
    value = (row.get("metrics") or {}).get(name, row.get(name))
    return None if value is None else float(value)


class Reporter:
    def __init__(self, trial: Any, spec: JobSpec, metric: str, reports: int, rows: int) -> None:
        from ..teachers.hf import load_tokenizer

        self.trial, self.metric, self.reports = trial, metric, reports
        self.spec = spec.model_copy(deep=True)
        self.spec.evaluation.bootstrap_samples = 0  # a point value is all a report needs
        examples = [ex for ex in read_examples(spec.data.validation, "validation", spec.prompts.template)]
        examples = [ex for ex in examples if ex.reference is not None][:rows]
        self.convs = [student_messages(ex.messages, spec.generation.cot) for ex in examples]
        self.refs: list[str | None] = [ex.reference for ex in examples]
        self.task = task_for(spec)
        self.tok = load_tokenizer(spec.student.tokenizer or spec.student.model)
        self.done = 0  # reports made
        self.values: list[tuple[int, float]] = []

    def __call__(self, step: int, total: int, val_loss: float, model: Any) -> None:
        import optuna

        point = self.reports * step // max(1, total)
        if point <= self.done or step >= total or not self.convs:  # the end is the trial's own evaluation
            return
        self.done = point
        pct = 100 * point // self.reports
        value = self.score(model)
        self.values.append((pct, value))
        self.trial.report(value, pct)
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_at_pct", pct)
            raise optuna.TrialPruned(f"{self.metric} {value:.4g} at {pct}% of training: worse than the other trials")

    def score(self, model: Any) -> float:
        from ..teachers.hf import LocalModel

        ev = self.spec.evaluation
        was_training = model.training
        model.eval()
        try:
            outs = LocalModel(model, self.tok).generate(
                self.convs, max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size
            )
        finally:
            model.train(was_training)
        row, _, _ = score_row(self.task, self.spec, [o.text for o in outs], self.refs, None)
        return metric_of(row, self.metric) or 0.0
