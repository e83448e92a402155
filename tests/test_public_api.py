"""The public surface is small, sorted and pinned."""

from __future__ import annotations

import potstill

PINNED = [
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


def test_all_is_sorted_and_pinned() -> None:
    assert potstill.__all__ == sorted(potstill.__all__)
    assert potstill.__all__ == PINNED
    for name in potstill.__all__:
        assert hasattr(potstill, name)


def test_one_exception_tree() -> None:
    for name in ("ConfigError", "DataError", "EvaluationError", "ExportError", "TeacherError", "TrainingError"):
        assert issubclass(getattr(potstill, name), potstill.PotstillError)
    assert potstill.ConfigError.exit_code == potstill.DataError.exit_code == 2
    assert potstill.TeacherError.exit_code == 1
