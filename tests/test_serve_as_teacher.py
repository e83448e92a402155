"""A job whose teacher is a served student (`teacher.kind: openai` at the server's URL) runs end to end.

Skipped until potstill.config has OpenAITeacher (the OpenAI-compatible teacher kind, built in parallel).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from _serving import running
from conftest import QUESTIONS, job_dict

config = pytest.importorskip("potstill.config")
if not hasattr(config, "OpenAITeacher"):
    pytest.skip("potstill.config has no OpenAITeacher yet (teacher.kind: openai)", allow_module_level=True)

KEY_ENV = "POTSTILL_TEST_SERVED_TEACHER_KEY"


@pytest.mark.slow
def test_job_with_a_served_student_as_teacher(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from potstill import load_job
    from potstill.server import build_app

    os.environ[KEY_ENV] = "sk-served-teacher"
    app = build_app(tiny_models["teacher"], model_name="served-teacher", api_key_env=KEY_ENV, max_tokens=64)
    with running(app) as url:
        d = job_dict(tiny_models, tmp_path / "data")
        d["teacher"] = {"kind": "openai", "model": "served-teacher", "base_url": url, "api_key_env": KEY_ENV}
        d["evaluation"] = {**d["evaluation"], "teacher": False}
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(d))
        result = load_job(path).run(run_dir=tmp_path / "run")
        assert app.state.engine.batches > 0  # the teacher's answers came over HTTP from this server
    rows = [json.loads(line) for line in (tmp_path / "run" / "data" / "train.jsonl").read_text().splitlines()]
    answers = [r["messages"][-1]["content"].strip() for r in rows]
    assert any(a in {f"Answer: {x}" for _, x in QUESTIONS} for a in answers)  # the served model's memorised answers
    assert result.distilled is not None and result.distilled.accuracy is not None
    assert "sk-served-teacher" not in (tmp_path / "run" / "job.yaml").read_text()
