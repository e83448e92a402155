"""Bad input: one clear line per problem, exit code 2, and nothing written to the run dir."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import job_dict, run_cli, write_jsonl

from potstill import ConfigError, DataError, load_job


def test_spec_typo_and_wrong_type_reported_together(tiny_models: dict, tmp_path: Path) -> None:
    d = job_dict(tiny_models, tmp_path / "data")
    d["hyperparameters"]["learning_rat"] = 1e-4
    d["hyperparameters"]["batch_size"] = "two"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(d, sort_keys=False))
    res = run_cli("run", str(job), "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 2
    assert "hyperparameters.learning_rat" in res.stderr
    assert "did you mean 'learning_rate'" in res.stderr
    assert "hyperparameters.batch_size" in res.stderr
    assert not (tmp_path / "run").exists()


def test_spec_errors_carry_line_numbers(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: x\ntask_type: maths\nteacher:\n  kind: hf\n  modle: t\nstudent: s\n"
        "data: {training: a.jsonl, validation: b.jsonl}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_job(job)
    problems = info.value.problems
    assert any(p.startswith(f"{job}:2: task_type:") for p in problems)
    assert any(p.startswith(f"{job}:5: teacher.modle: unknown field") and "did you mean 'model'" in p for p in problems)
    assert any("teacher.model: required field is missing" in p for p in problems)


def test_broken_jsonl_line_names_file_and_line(tiny_models: dict, tmp_path: Path) -> None:
    d = job_dict(tiny_models, tmp_path / "data")
    train = Path(d["data"]["training"])
    lines = train.read_text().splitlines()
    lines[6] = '{"prompt": "What is 1 plus 1?"'  # line 7: unterminated object
    train.write_text("\n".join(lines) + "\n")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(d))
    res = run_cli("run", str(job), "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 2
    assert f"{train}:7:" in res.stderr
    assert "not valid JSON" in res.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["empty", "missing", "bad_role"])
def test_bad_data_files(tiny_models: dict, tmp_path: Path, case: str) -> None:
    d = job_dict(tiny_models, tmp_path / "data")
    val = Path(d["data"]["validation"])
    if case == "empty":
        val.write_text("")
        expect = "has no rows"
    elif case == "missing":
        val.unlink()
        expect = "file not found"
    else:
        write_jsonl(val, [{"messages": [{"role": "robot", "content": "hi"}]}])
        expect = "messages[0].role is 'robot'"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(d))
    with pytest.raises(DataError, match=re.escape(expect)):
        load_job(job).run(run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    res = run_cli("run", str(job), "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 2 and expect in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2


def test_existing_run_dir_untouched_by_bad_input(tiny_models: dict, tmp_path: Path) -> None:
    d = job_dict(tiny_models, tmp_path / "data")
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "state.json").write_text(json.dumps({"stages": {}}))
    Path(d["data"]["training"]).write_text("not json\n")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(d))
    assert run_cli("run", str(job), "--run-dir", str(rd)).returncode == 2
    assert sorted(p.name for p in rd.iterdir()) == ["state.json"]
