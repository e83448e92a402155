"""The local teacher's generate stage: one decoder run over every prompt, each answer committed to the cache as it
ends (in groups of the teacher's batch size), so a run that dies mid-way keeps what was answered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import QUESTIONS, job_dict

from potstill.config import validate_spec
from potstill.pipeline import run_pipeline
from potstill.teachers.hf import LocalModel


def _events(rd: Path, name: str) -> list[dict[str, Any]]:
    lines = (rd / "logs" / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == name]


def _outputs(rd: Path) -> dict[str, str]:
    rows = [json.loads(x) for x in (rd / "teacher" / "outputs" / "train.jsonl").read_text().splitlines()]
    return {r["id"]: r["output"] for r in rows}


def test_generate_commits_as_answers_end_and_a_crash_keeps_them(
    tiny_models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = job_dict(tiny_models, tmp_path / "data", teacher={"batch_size": 4})
    spec = validate_spec(d, source="test")
    n = len(QUESTIONS)  # the training questions (the validation rows are labelled: not asked)

    straight = tmp_path / "straight"
    run_pipeline(spec, straight, only=["generate"])
    groups = [e["n"] for e in _events(straight, "teacher_batch")]
    assert sum(groups) == n and max(groups) == 4  # committed in groups of the batch size

    real = LocalModel._completion
    made = 0

    def dies_after_nine(self: LocalModel, prompt_tokens: int, o: Any) -> Any:
        nonlocal made
        made += 1
        if made > 9:
            raise RuntimeError("the machine went down")
        return real(self, prompt_tokens, o)

    crashed = tmp_path / "crashed"
    monkeypatch.setattr(LocalModel, "_completion", dies_after_nine)
    with pytest.raises(RuntimeError, match="went down"):
        run_pipeline(spec, crashed, only=["generate"])
    assert sum(e["n"] for e in _events(crashed, "teacher_batch")) == 8  # two whole groups reached the cache

    monkeypatch.setattr(LocalModel, "_completion", real)
    run_pipeline(spec, crashed, only=["generate"])
    assert sum(e["n"] for e in _events(crashed, "teacher_batch")) == n  # nothing answered twice
    assert _outputs(crashed) == _outputs(straight)  # and the same answers as the uninterrupted run


def test_generate_callback_sees_every_answer_once(tiny_models: dict) -> None:
    lm = LocalModel.load(str(tiny_models["teacher"]), device="cpu")
    convs = [[{"role": "user", "content": q}] for q, _ in QUESTIONS]
    seen: dict[int, Any] = {}
    outs = lm.generate(convs, max_new_tokens=6, batch_size=3, done=lambda i, c: seen.setdefault(i, c))
    assert sorted(seen) == list(range(len(convs)))
    assert [seen[i].text for i in range(len(convs))] == [o.text for o in outs]
    assert [o.text for o in outs] == [o.text for o in lm.generate(convs, max_new_tokens=6, batch_size=5)]
