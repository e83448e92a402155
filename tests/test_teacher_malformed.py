"""Teacher responses that are not what the API promises (issue #12): each is a retry or a per-row failure with a
readable reason, through the real generate stage against a real local HTTP server. Never a traceback, never the
loss of the other rows.

    .venv/bin/python -m pytest tests/test_teacher_malformed.py -q
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest import api_job_dict, write_jsonl
from fake_openai import MALFORMED, answer_text

from potstill.config import validate_spec
from potstill.errors import TeacherError
from potstill.pipeline import run_pipeline
from potstill.run_dir import RunDir, read_jsonl
from potstill.teachers.generate import teacher_answers

# fault -> (what it becomes: "retry" until the retries run out, or "fail" at once; what the row's reason says)
SHAPES: dict[str, tuple[str, str]] = {
    "retry_after_word": ("retry", "HTTP 429"),
    "retry_after_unit": ("retry", "HTTP 429"),
    "html_502": ("retry", "HTTP 502 from 127.0.0.1"),
    "choices_not_list": ("retry", '"choices" is an object, not a list'),
    "no_message": ("retry", 'choice 0 has no "message"'),
    "json_array": ("retry", "a JSON array, not an object"),
    "bad_utf8": ("retry", "not valid UTF-8"),
    "lying_gzip": ("retry", "Content-Encoding"),
    "short_body": ("retry", "complete message body"),
    "logprob_missing": ("retry", "logprobs"),
    "logprob_types": ("retry", "logprobs"),
    "content_filter": ("fail", 'no content (finish_reason "content_filter"'),
    "null_content": ("fail", 'no content (finish_reason "stop"'),
}
RETRIES = 2


def question(body: dict[str, Any]) -> int:
    """The row a request is for: i of "Question i: ...", or -1 (validation rows)."""
    last = body["messages"][-1]["content"]
    return int(last.split()[1].rstrip(":")) if last.startswith("Question") else -1


def job(srv: Any, data: Path, n_train: int = 6, **teacher: Any) -> dict[str, Any]:
    t = {"base_url": srv.base_url, "max_retries": RETRIES, "timeout_s": 2.0, **teacher}
    return api_job_dict(data, t, n_train=n_train, generation={"logprobs": 2})


def generate(d: dict[str, Any], run_dir: Path) -> RunDir:
    return run_pipeline(validate_spec(d), run_dir, only=["generate"])


def rows_by_question(rd: RunDir) -> dict[int, dict[str, Any]]:
    return {int(r["id"].split("-")[1]): r for r in read_jsonl(rd.outputs / "train.jsonl")}


def expected(row: dict[str, Any]) -> str:
    return answer_text({"messages": row["messages"], "seed": row["sample"]})


def readable(reason: str) -> bool:
    return bool(reason) and "Traceback" not in reason and "<" not in reason and len(reason) <= 600


def test_every_shape_is_known_to_the_fake() -> None:
    assert set(SHAPES) == set(MALFORMED)


@pytest.mark.parametrize("fault", [f for f, (kind, _) in SHAPES.items() if kind == "retry"])
def test_a_transient_shape_is_retried_and_the_row_answered(fault: str, fake_openai: Any, tmp_path: Path) -> None:
    srv = fake_openai(retry_after_s=0.01)
    srv.fault_fn = lambda body, attempt: fault if question(body) == 1 and attempt == 0 else None
    rd = generate(job(srv, tmp_path / "data"), tmp_path / "run")
    rows = rows_by_question(rd)
    assert len(rows) == 6 and all(r["output"] == expected(r) for r in rows.values()), rows
    assert all(r["logprobs"]["tokens"] for r in rows.values())  # the retried answer carries its logprobs too
    assert [e.outcome for e in srv.log if question(e.body) == 1] == [fault, "ok"]
    # the fault's retry (another request may also be retried, e.g. a timeout on a loaded machine)
    retries = [r for r in rd.events("generate", "retry") if SHAPES[fault][1] in r["error"]]
    assert len(retries) == 1 and readable(retries[0]["error"]), rd.events("generate", "retry")


@pytest.mark.parametrize("fault", list(SHAPES))
def test_a_persistent_shape_fails_only_its_row_with_a_reason(fault: str, fake_openai: Any, tmp_path: Path) -> None:
    srv = fake_openai(retry_after_s=0.01)
    srv.fault_fn = lambda body, attempt: fault if question(body) == 1 else None
    rd = generate(job(srv, tmp_path / "data"), tmp_path / "run")
    rows = rows_by_question(rd)
    bad = rows.pop(1)
    assert bad["output"] is None and bad["finish_reason"] == "error"
    kind, says = SHAPES[fault]
    assert says in bad["error"] and readable(bad["error"]), bad["error"]
    sent = sum(1 for e in srv.log if question(e.body) == 1)
    assert sent == (RETRIES + 1 if kind == "retry" else 1)  # a refused answer is not asked again
    assert ("gave up after" in bad["error"]) == (kind == "retry")
    assert all(r["output"] == expected(r) for r in rows.values())
    assert rd.stage("generate")["counts"]["train"]["failed"] == 1
    (failed,) = rd.events("generate", "row_failed")
    assert failed["rows"] == [{"id": "train-1", "sample": 0}] and failed["error"] == bad["error"]


def test_storm_of_every_shape_loses_no_row(fake_openai: Any, tmp_path: Path) -> None:
    """150 prompts, every malformed shape mixed with 429/503/resets: each row is answered or failed with a reason."""
    srv = fake_openai(retry_after_s=0.01)
    transient = [f for f, (kind, _) in SHAPES.items() if kind == "retry"] + ["429", "503", "reset", "empty_choices"]
    permanent = {0: "content_filter", 1: "null_content", 2: "json_array", 3: "lying_gzip", 4: "400"}

    def faults(body: dict[str, Any], attempt: int) -> str | None:
        i = question(body)
        if i >= 0 and i % 25 in permanent:
            return permanent[i % 25]
        if i >= 0 and attempt < 2:
            return transient[(i + 3 * attempt) % len(transient)]
        return None

    srv.fault_fn = faults
    d = job(srv, tmp_path / "data", n_train=150, concurrency=8)
    d["teacher"]["max_retries"] = 3
    rd = generate(d, tmp_path / "run")
    rows = rows_by_question(rd)
    assert sorted(rows) == list(range(150))  # every prompt has exactly one row
    failed = {i for i, r in rows.items() if r["output"] is None}
    assert failed == {i for i in range(150) if i % 25 in permanent}
    for i, r in rows.items():
        if i in failed:
            assert r["finish_reason"] == "error" and readable(r["error"]), r
        else:
            assert r["output"] == expected(r) and "error" not in r, r
    reasons = {permanent[i % 25]: rows[i]["error"] for i in failed}
    assert "content_filter" in reasons["content_filter"] and "array" in reasons["json_array"]
    assert "Content-Encoding" in reasons["lying_gzip"] and "HTTP 400" in reasons["400"]
    done = rd.events("generate", "teacher_done")[0]
    assert (done["answered"], done["failed"]) == (150 - len(failed), len(failed))
    assert sorted(r["id"] for e in rd.events("generate", "row_failed") for r in e["rows"]) == sorted(
        f"train-{i}" for i in failed
    )
    assert set(transient) <= {e.outcome for e in srv.log}  # every shape was really sent


# ---------------------------------------------------------------------------------------------- conversations
CHATS = [
    ("c0 hello", "hi", "c0 how are you", "fine"),
    ("c1 hello", "hi", "c1 tell me a joke", "no"),
    ("c2 hello", "hi", "c2 bye", "bye"),
    ("c3 hello", "hi", "c3 what now", "sleep"),
]


def chat_job(srv: Any, data: Path, min_ratio: float) -> dict[str, Any]:
    roles = ("user", "assistant", "user", "assistant")
    rows = [{"messages": [{"role": r, "content": c} for r, c in zip(roles, t, strict=True)]} for t in CHATS]
    d = api_job_dict(data, {"base_url": srv.base_url, "max_retries": 1, "min_success_ratio": min_ratio})
    d["task_type"] = "conversation"
    d["data"] = {"training": str(write_jsonl(data / "chat.jsonl", rows)), "validation": str(data / "chat.jsonl")}
    return d


def test_a_failed_conversation_turn_counts_in_the_success_gate(fake_openai: Any, tmp_path: Path) -> None:
    srv = fake_openai()
    turn2 = {"c1 tell me a joke": "400", "c3 what now": "content_filter"}
    srv.fault_fn = lambda body, attempt: turn2.get(body["messages"][-1]["content"])
    with pytest.raises(TeacherError, match=r"only 4 of 8 rows .*min_success_ratio 90%.*HTTP 400.*maximum context"):
        generate(chat_job(srv, tmp_path / "data", 0.9), tmp_path / "run")
    rd = RunDir(tmp_path / "run")
    assert rd.stage("generate")["status"] == "failed"
    rows = {r["id"]: r for r in read_jsonl(rd.outputs / "train.jsonl")}
    assert [rows[f"train-{i}"]["output"] is None for i in range(4)] == [False, True, False, True]
    c1, c3 = rows["train-1"], rows["train-3"]
    assert c1["finish_reason"] == "error" and "HTTP 400" in c1["error"] and "maximum context length" in c1["error"]
    assert "content_filter" in c3["error"] and len(c3["turn_outputs"]) == 2 and c3["turn_outputs"][0]
    assert "error" not in rows["train-0"]
    # under a lower bar the same run passes and keeps the reasons
    rd = generate(chat_job(srv, tmp_path / "data", 0.5), tmp_path / "run2")
    assert rd.stage("generate")["counts"]["train"]["failed"] == 2
    assert "HTTP 400" in next(r for r in read_jsonl(rd.outputs / "train.jsonl") if r["id"] == "train-1")["error"]


# ---------------------------------------------------------------------------------------------- inside a loop
NOTEBOOK = [{"role": "user", "content": "Asked from a notebook?"}]


def test_the_sync_api_works_inside_a_running_event_loop(fake_openai: Any, tmp_path: Path) -> None:
    """Jupyter runs cells inside an event loop: generating (and evaluation's teacher_answers) must still work."""
    srv = fake_openai()
    d = api_job_dict(tmp_path / "data", {"base_url": srv.base_url})

    async def notebook_cell() -> tuple[RunDir, list[dict[str, Any]]]:
        await asyncio.sleep(0)
        rd = generate(d, tmp_path / "run")
        return rd, teacher_answers(validate_spec(d), rd.root, [NOTEBOOK])

    rd, got = asyncio.run(notebook_cell())
    rows = list(read_jsonl(rd.outputs / "train.jsonl"))
    assert len(rows) == 12 and all(r["output"] == expected(r) for r in rows)
    assert got[0]["text"] == answer_text({"messages": NOTEBOOK, "seed": 0}) and not got[0]["from_cache"]
