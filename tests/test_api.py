"""The Python API shaped like the seed's Azure DistillationJob."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import job_dict

from potstill import ConfigError, DistillationJob, load_result


def test_distillation_job_keywords_run_and_result(tiny_models: dict, tmp_path: Path) -> None:
    d = job_dict(tiny_models, tmp_path / "data")
    job = DistillationJob(
        teacher_model=str(tiny_models["teacher"]),
        student_model=str(tiny_models["student"]),
        training_data=d["data"]["training"],
        validation_data=d["data"]["validation"],
        test_data=d["data"]["test"],
        task_type="qa",
        hyperparameters={"learning_rate": 1e-3, "batch_size": 4, "num_epochs": 1, "temperature": 0.7},
        name="api",
        generation={"temperature": 0.0, "max_tokens": 8},
        filters=["nonempty"],
        evaluation={"max_new_tokens": 8, "latency_samples": 2},
    )
    assert job.spec.hyperparameters.learning_rate == 1e-3
    assert job.spec.teacher.kind == "hf"
    result = job.run(run_dir=tmp_path / "run")
    assert set(result.models) == {"teacher", "baseline", "distilled"}
    assert result.distilled is not None and result.teacher is not None and result.baseline is not None
    assert result.distilled.parameters < result.teacher.parameters
    assert result.distilled.latency_ms > 0 and result.distilled.peak_memory_mb > 0
    assert result.performance_improvement == pytest.approx(result.distilled.accuracy - result.baseline.accuracy)
    if result.teacher.accuracy:
        assert result.accuracy_retention == pytest.approx(100 * result.distilled.accuracy / result.teacher.accuracy)
    lo, hi = result.distilled.accuracy_ci or (2.0, -1.0)
    assert lo <= result.distilled.accuracy <= hi
    assert result.distilled.metrics["accuracy"] == result.distilled.accuracy
    again = load_result(tmp_path / "run")
    assert again.distilled == result.distilled


def test_distillation_job_reports_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        DistillationJob(
            teacher_model="t",
            student_model="s",
            training_data="a.jsonl",
            validation_data="b.jsonl",
            task_type="poetry",
            hyperparameters={"learning_rate": -1, "epochs": 3},
        )
    text = str(info.value)
    assert "task_type" in text
    assert "hyperparameters.learning_rate" in text
    assert "hyperparameters.epochs: unknown field 'epochs'" in text
    assert len(info.value.problems) == 3
