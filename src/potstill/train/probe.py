"""The student's validation *metric*, measured while it trains (max_steps: auto; tune's pruning reports).

    probe = MetricProbe(spec, "accuracy", rows=256, kept=run_dir / "data" / "validation.jsonl")
    probe(model)     # -> the metric on the first ``rows`` validation prompts, answered greedily

The prompts are the validation file's rows that have an answer; when none has one, the teacher's kept answers
(data/validation.jsonl) stand in for them (the metric is then the agreement with the teacher). The student answers
through the one decoder (``LocalModel``), in batches, and the task's scorer grades the answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import JobSpec
from ..data.cot import student_messages
from ..data.jsonl import read_examples
from ..data.tasks import task_for
from ..run_dir import read_jsonl

AUTO_ROWS = 256  # validation rows scored at each validation of a max_steps: auto training


def metric_of(row: dict[str, Any], name: str) -> float | None:
    """A model row's metric (results.json's shape): accuracy at the top level, the others under metrics."""
    value = (row.get("metrics") or {}).get(name, row.get(name))
    return None if value is None else float(value)


class MetricProbe:
    def __init__(self, spec: JobSpec, metric: str, rows: int, kept: Path | None = None) -> None:
        from ..teachers.hf import load_tokenizer

        self.metric = metric
        self.spec = spec.model_copy(deep=True)
        self.spec.evaluation.bootstrap_samples = 0  # a point value is all a probe needs
        examples = [ex for ex in read_examples(spec.data.validation, "validation", spec.prompts.template)]
        examples = [ex for ex in examples if ex.reference is not None][:rows]
        self.convs = [student_messages(ex.messages, spec.generation.cot) for ex in examples]
        self.refs: list[str | None] = [ex.reference for ex in examples]
        self.against = "reference"
        if not self.convs and kept is not None and kept.exists():  # the teacher's kept answers stand in
            for r in read_jsonl(kept):
                if len(self.convs) >= rows:
                    break
                *prompt, answer = r["messages"]  # the prompt exactly as the student learned it
                self.convs.append(prompt)
                self.refs.append(answer["content"])
            self.against = "teacher"
        self.task = task_for(spec)
        self.tok = load_tokenizer(spec.student.tokenizer or spec.student.model)

    def __call__(self, model: Any) -> float:
        from ..evaluate.run import score_row
        from ..teachers.hf import LocalModel

        if not self.convs:
            return 0.0
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
