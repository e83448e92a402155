"""The Python API, shaped like the seed's Azure DistillationJob.

job = potstill.DistillationJob(
    teacher_model="path/to/teacher", student_model="path/to/student",
    training_data="train.jsonl", validation_data="val.jsonl", task_type="math",
    hyperparameters={"learning_rate": 2e-5, "batch_size": 2, "num_epochs": 3, "temperature": 0.7},
)
result = job.run(run_dir="runs/demo")       # ≡ potstill run job.yaml --run-dir runs/demo
result.distilled.accuracy, result.accuracy_retention, result.performance_improvement

job = potstill.load_job("job.yaml")         # the same object from a YAML spec
result = job.tune(trials=20)                # ≡ potstill tune job.yaml --trials 20 (the spec's tune: section)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import JobSpec, load_spec, validate_spec
from .errors import EvaluationError


@dataclass(frozen=True)
class ModelResult:
    """One evaluated model's numbers (None where not measured)."""

    name: str
    model: str
    parameters: int | None
    accuracy: float | None
    agreement_with_teacher: float | None
    latency_ms: float | None  # mean per answer at batch 1
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    throughput_answers_per_s: float | None
    peak_memory_mb: float | None  # tensor peak during generation
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    accuracy_ci: tuple[float, float] | None = None  # 95 % Wilson interval
    metrics: dict[str, float] = field(default_factory=dict)  # every task metric (BLEU, macro-F1, ...)

    @classmethod
    def from_json(cls, r: dict[str, Any]) -> ModelResult:
        lat, mem, thr = r.get("latency") or {}, r.get("memory") or {}, r.get("throughput") or {}
        return cls(
            name=r["name"],
            model=r.get("model", ""),
            parameters=r.get("parameters"),
            accuracy=r.get("accuracy"),
            agreement_with_teacher=r.get("agreement_with_teacher"),
            latency_ms=lat.get("mean_ms"),
            latency_p50_ms=lat.get("p50_ms"),
            latency_p95_ms=lat.get("p95_ms"),
            throughput_answers_per_s=thr.get("answers_per_s"),
            peak_memory_mb=mem.get("peak_tensor_mb"),
            raw=r,
            accuracy_ci=(ci["lo"], ci["hi"]) if (ci := (r.get("intervals") or {}).get("accuracy")) else None,
            metrics=dict(r.get("metrics") or {}),
        )


@dataclass(frozen=True)
class DistillationResult:
    """What a finished run measured: one ModelResult per model plus the seed's comparison numbers."""

    run_dir: Path
    models: dict[str, ModelResult]
    comparison: dict[str, Any]

    @property
    def teacher(self) -> ModelResult | None:
        return self.models.get("teacher")

    @property
    def baseline(self) -> ModelResult | None:
        return self.models.get("baseline")

    @property
    def distilled(self) -> ModelResult | None:
        return self.models.get("distilled")

    @property
    def accuracy_retention(self) -> float | None:
        """Distilled accuracy as a % of the teacher's."""
        return self.comparison.get("accuracy_retention_pct")

    @property
    def performance_improvement(self) -> float | None:
        """The seed's number: distilled accuracy − baseline accuracy."""
        return self.comparison.get("gain_over_baseline")


def load_result(run_dir: str | os.PathLike[str]) -> DistillationResult:
    path = Path(run_dir) / "eval" / "results.json"
    if not path.exists():
        raise EvaluationError(f"{path} not found: run the evaluate stage first (potstill evaluate {run_dir})")
    res = json.loads(path.read_text())
    return DistillationResult(
        Path(run_dir), {r["name"]: ModelResult.from_json(r) for r in res["models"]}, res.get("comparison", {})
    )


class DistillationJob:
    """A distillation job: the spec plus where it came from. Build it from keywords or with load_job()."""

    def __init__(
        self,
        teacher_model: str | dict[str, Any] | None = None,
        student_model: str | dict[str, Any] | None = None,
        training_data: str | os.PathLike[str] | None = None,
        validation_data: str | os.PathLike[str] | None = None,
        task_type: str | None = None,
        hyperparameters: dict[str, Any] | None = None,
        *,
        name: str = "distillation",
        test_data: str | os.PathLike[str] | None = None,
        spec: JobSpec | None = None,
        **sections: Any,
    ) -> None:
        if spec is None:
            data: dict[str, Any] = {
                "name": name,
                "task_type": task_type,
                "teacher": teacher_model,
                "student": student_model,
                "data": {"training": training_data, "validation": validation_data},
                **sections,
            }
            if test_data is not None:
                data["data"]["test"] = test_data
            if hyperparameters is not None:
                data["hyperparameters"] = hyperparameters
            data = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in data.items()}
            spec = validate_spec(data, source="DistillationJob").resolved(Path.cwd())
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    def default_run_dir(self) -> Path:
        return Path("runs") / self.spec.name

    def run(self, run_dir: str | os.PathLike[str] | None = None, force: bool = False) -> DistillationResult:
        """Run every stage (resuming a previous run in the same folder) and return the evaluation numbers."""
        from .pipeline import run_pipeline

        rd = run_pipeline(self.spec, run_dir or self.default_run_dir(), force=force)
        return load_result(rd.root)

    def tune(
        self,
        run_dir: str | os.PathLike[str] | None = None,
        trials: int | None = None,
        storage: str | None = None,
        timeout: float | None = None,
        log: Callable[[str], None] | None = None,
        workers: int = 1,
    ) -> DistillationResult:
        """Search the spec's ``tune:`` space on the validation split (continuing an earlier study), promote the
        best student to the run's student/ and return its evaluation on the test split (docs/tuning.md).
        ``workers``: worker processes on this machine sharing the study."""
        from .tune import run_tune

        rd = run_tune(self.spec, run_dir or self.default_run_dir(), trials, storage, timeout, log, workers)
        return load_result(rd.root)

    def __repr__(self) -> str:
        s = self.spec
        teacher = s.teacher.model if s.teacher is not None else [t.model for t in s.teacher_list()]
        return (
            f"DistillationJob(name={s.name!r}, task_type={s.task_type!r}, teacher={teacher!r}, "
            f"student={s.student.model!r})"
        )


def load_job(path: str | os.PathLike[str]) -> DistillationJob:
    """Load a job YAML; raises ConfigError listing every problem (file:line: field: what is wrong)."""
    return DistillationJob(spec=load_spec(path))
