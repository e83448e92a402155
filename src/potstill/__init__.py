"""potstill: distil a large teacher model into a small, fast, task-specific student.

import potstill
job = potstill.load_job("job.yaml")            # or potstill.DistillationJob(teacher_model=..., ...)
result = job.run(run_dir="runs/my-job")
print(result.distilled.accuracy, result.accuracy_retention)
"""

from .config import JobSpec
from .errors import (
    ConfigError,
    DataError,
    EvaluationError,
    ExportError,
    PotstillError,
    TeacherError,
    TrainingError,
)
from .exporter import export
from .job import DistillationJob, DistillationResult, ModelResult, load_job, load_result
from .server import serve

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "DistillationJob",
    "DistillationResult",
    "EvaluationError",
    "ExportError",
    "JobSpec",
    "ModelResult",
    "PotstillError",
    "TeacherError",
    "TrainingError",
    "export",
    "load_job",
    "load_result",
    "serve",
]
