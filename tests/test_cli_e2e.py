"""The CLI end to end on a tiny job, in a subprocess: the run-dir contract, status, resume and re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import run_cli

CONTRACT = [
    "job.yaml",
    "state.json",
    "teacher/cache.sqlite",
    "teacher/outputs/train.jsonl",
    "teacher/outputs/validation.jsonl",
    "data/train.jsonl",
    "data/validation.jsonl",
    "data/rejected.jsonl",
    "data/filter_report.json",
    "student/config.json",
    "student/model.safetensors",
    "student/tokenizer.json",
    "eval/results.json",
    "eval/predictions/teacher.jsonl",
    "eval/predictions/baseline.jsonl",
    "eval/predictions/distilled.jsonl",
    "report/report.md",
    "report/report.html",
    "logs/events.jsonl",
]


def test_run_writes_every_file_of_the_contract(tiny_job: Path, tmp_path: Path) -> None:
    rd = tmp_path / "run"
    res = run_cli("run", str(tiny_job), "--run-dir", str(rd))
    assert res.returncode == 0, res.stderr
    missing = [p for p in CONTRACT if not (rd / p).exists()]
    assert not missing
    results = json.loads((rd / "eval" / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["teacher", "baseline", "distilled"]
    for m in results["models"]:
        assert m["parameters"] > 0
        assert m["latency"]["mean_ms"] > 0
        assert m["memory"]["peak_tensor_mb"] >= m["memory"]["weights_mb"] > 0
        assert 0.0 <= m["accuracy"] <= 1.0
    assert results["scored_against"] == "reference"
    state = json.loads((rd / "state.json").read_text())
    assert all(state["stages"][s]["status"] == "done" for s in ("generate", "validate", "train", "evaluate", "report"))
    # the resolved spec is written, and the report holds the seed's table
    assert yaml.safe_load((rd / "job.yaml").read_text())["name"] == "tiny"
    report = (rd / "report" / "report.md").read_text()
    for row in ("parameters", "memory", "inference time", "accuracy", "throughput"):
        assert row in report
    assert "teacher vs student" in res.stdout

    st = run_cli("status", str(rd))
    assert st.returncode == 0
    for stage in ("generate", "validate", "train", "evaluate", "report"):
        assert stage in st.stdout
    assert "done" in st.stdout

    # a second run skips every stage; the teacher is not asked again
    batches = len([e for e in _events(rd) if e["event"] == "teacher_batch"])
    again = run_cli("run", str(tiny_job), "--run-dir", str(rd))
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("skipped") == 5
    assert len([e for e in _events(rd) if e["event"] == "teacher_batch"]) == batches

    # a changed hyperparameter re-runs train and the stages after it, not generate or validate
    job = yaml.safe_load(tiny_job.read_text())
    job["hyperparameters"]["learning_rate"] = 2e-3
    tiny_job.write_text(yaml.safe_dump(job))
    third = run_cli("run", str(tiny_job), "--run-dir", str(rd))
    assert third.returncode == 0, third.stderr
    assert "generate: done earlier" in third.stderr and "validate: done earlier" in third.stderr
    assert "train: running" in third.stderr and "evaluate: running" in third.stderr
    assert len([e for e in _events(rd) if e["event"] == "teacher_batch"]) == batches
    # ... and it really trained again, from the untouched student: a new step 1, no resume
    events = _events(rd)
    last = max(i for i, e in enumerate(events) if e["event"] == "stage_start" and e["stage"] == "train")
    steps = [e["step"] for e in events[last:] if e["event"] == "step"]
    summary = json.loads((rd / "student" / "training_summary.json").read_text())
    assert steps[0] == 1 and len(steps) == summary["steps"] and summary["resumed_from"] is None
    assert not [e for e in events[last:] if e["event"] == "resume"]


def test_stage_commands_run_one_stage_in_order(tiny_job: Path, tmp_path: Path) -> None:
    rd = tmp_path / "run"
    assert run_cli("run", str(tiny_job), "--run-dir", str(rd)).returncode == 0
    res = run_cli("report", str(rd), "--force")
    assert res.returncode == 0, res.stderr
    assert "report: running" in res.stderr
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "job.yaml").write_text((rd / "job.yaml").read_text())
    out = run_cli("train", str(fresh))
    assert out.returncode == 1
    assert "needs 'generate' first" in out.stderr


def test_python_module_and_help() -> None:
    res = run_cli("--help")
    assert res.returncode == 0
    for cmd in ("run", "generate", "validate", "train", "evaluate", "report", "status", "compare", "demo"):
        assert cmd in res.stdout


def _events(rd: Path) -> list[dict]:
    return [json.loads(line) for line in (rd / "logs" / "events.jsonl").read_text().splitlines()]
