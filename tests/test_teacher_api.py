"""OpenAI-compatible and Azure teachers against a real local HTTP server: answers, cache, faults, auth, money."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import api_job_dict
from fake_openai import answer_text

from potstill.config import validate_spec
from potstill.errors import TeacherError
from potstill.pipeline import run_pipeline
from potstill.run_dir import RunDir, read_jsonl
from potstill.teachers.generate import teacher_answers

KEY = "sk-test-SECRET-0123456789abcdef"


def generate(d: dict[str, Any], run_dir: Path, force: bool = False) -> RunDir:
    return run_pipeline(validate_spec(d), run_dir, only=["generate"], force=force)


def outputs(rd: RunDir, split: str = "train") -> list[dict[str, Any]]:
    return list(read_jsonl(rd.outputs / f"{split}.jsonl"))


def all_text_under(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())


def test_answers_are_cached_and_never_asked_twice(fake_openai: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("FAKE_KEY", KEY)
    srv = fake_openai(api_key=KEY)
    teacher = {"base_url": srv.base_url, "api_key_env": "FAKE_KEY", "input_price_per_mtok": 1.0}
    d = api_job_dict(tmp_path / "data", {**teacher, "output_price_per_mtok": 2.0}, generation={"samples": 2})
    rd = generate(d, tmp_path / "run")
    rows = outputs(rd)
    assert len(rows) == 24 and len(outputs(rd, "validation")) == 8
    assert sorted({(r["id"], r["sample"]) for r in rows}) == sorted(
        (f"train-{i}", s) for i in range(12) for s in range(2)
    )
    for r in rows:  # the answer the server gave for exactly this prompt and sample (seed = seed + sample)
        assert r["output"] == answer_text({"messages": r["messages"], "seed": r["sample"]})
        assert r["finish_reason"] == "stop"
    assert rows[0]["output"] != rows[1]["output"]  # two samples of one prompt differ
    assert len(srv.log) == 32
    assert all(e.headers.get("authorization") == "<redacted>" for e in srv.log)  # a key was sent
    counts = rd.stage("generate")["counts"]
    ledger = counts["ledger"]
    assert ledger["calls"] == 32 and ledger["prompt_tokens"] > 0 and ledger["completion_tokens"] == 64
    expected = (ledger["prompt_tokens"] * 1.0 + ledger["completion_tokens"] * 2.0) / 1e6
    assert counts["cost_usd"] == pytest.approx(expected, rel=1e-4)
    from potstill.report.tables import ledger_rows

    _, rows = ledger_rows(counts["ledger"])  # the report's generation ledger shows the same cost
    assert ["cost (USD)", f"{counts['cost_usd']:.4f}"] in rows
    # forced re-run: every answer comes from the cache, the server sees nothing new
    rd = generate(d, tmp_path / "run", force=True)
    assert len(srv.log) == 32 and rd.stage("generate")["counts"]["train"]["from_cache"] == 24
    assert rd.stage("generate")["counts"]["cost_usd_this_run"] == 0
    assert KEY not in all_text_under(tmp_path / "run")


def test_fault_storm_every_row_answered_or_failed_with_reason(fake_openai: Any, tmp_path: Path) -> None:
    srv = fake_openai(retry_after_s=0.02, hang_s=1.0)
    storm = ["429", "500", "503", "timeout", "reset", "malformed", "empty_choices"]

    def faults(body: dict[str, Any], attempt: int) -> str | None:
        i = int(body["messages"][-1]["content"].split()[1].rstrip(":?")) if "Question" in str(body) else -1
        if i == 0:
            return "400"  # never retried: the row fails with the server's message
        if i == 1:
            return "length"  # answered, cut off: the validate stage's business
        if i == 2:
            return "503"  # fails every time: gives up after max_retries
        if i >= 3 and attempt < 2:
            return storm[(i + attempt) % len(storm)]
        return None

    srv.fault_fn = faults
    d = api_job_dict(
        tmp_path / "data", {"base_url": srv.base_url, "timeout_s": 0.3, "max_retries": 3}, n_train=24, generation={}
    )
    d["teacher"]["min_success_ratio"] = 0.5
    rd = generate(d, tmp_path / "run")
    rows = outputs(rd)
    assert len(rows) == 24 and len({r["id"] for r in rows}) == 24  # no row twice
    by_id = {int(r["id"].split("-")[1]): r for r in rows}
    assert by_id[0]["output"] is None and by_id[0]["finish_reason"] == "error"
    assert "HTTP 400" in by_id[0]["error"] and "maximum context length" in by_id[0]["error"]
    assert sum(1 for e in srv.log if "Question 0:" in str(e.body)) == 1  # 400 is not retried
    assert by_id[1]["finish_reason"] == "length" and by_id[1]["output"]
    assert by_id[2]["output"] is None and "HTTP 503" in by_id[2]["error"] and "gave up after 4" in by_id[2]["error"]
    assert sum(1 for e in srv.log if "Question 2:" in str(e.body)) == 4
    for i in range(3, 24):
        assert by_id[i]["output"] == answer_text({"messages": by_id[i]["messages"], "seed": 0}), by_id[i]
    retries = rd.events("generate", "retry")
    assert len(retries) >= 2 * 21 + 3
    seen = {e["status"] for e in retries} | {e["error"].split(" ")[0] for e in retries}
    assert {429, 500, 503}.issubset(seen) and "no" in seen and "connection" in seen and "malformed" in seen
    failed = rd.events("generate", "row_failed")
    assert sorted(r["id"] for e in failed for r in e["rows"]) == ["train-0", "train-2"]
    assert rd.stage("generate")["counts"]["train"]["failed"] == 2


def test_too_many_failures_fail_the_stage_with_a_summary(fake_openai: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("FAKE_KEY", KEY)
    srv = fake_openai(api_key=KEY)
    srv.fault_fn = lambda body, attempt: "400" if "Question" in str(body) else None  # its message echoes the key
    d = api_job_dict(tmp_path / "data", {"base_url": srv.base_url, "api_key_env": "FAKE_KEY"})
    with pytest.raises(TeacherError, match=r"rows got a teacher answer .*min_success_ratio 70%.*HTTP 400"):
        generate(d, tmp_path / "run")
    rd = RunDir(tmp_path / "run")
    assert rd.stage("generate")["status"] == "failed"
    assert any(r["output"] is None and "HTTP 400" in r["error"] and "key ***" in r["error"] for r in outputs(rd))
    assert KEY not in all_text_under(tmp_path / "run")


def test_401_stops_at_once_naming_the_variable_not_the_key(fake_openai: Any, tmp_path: Path, monkeypatch: Any) -> None:
    from conftest import run_cli

    srv = fake_openai(api_key="the-right-key", delay_s=0.05)
    d = api_job_dict(tmp_path / "data", {"base_url": srv.base_url, "api_key_env": "FAKE_KEY"}, n_train=40)
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(d))
    monkeypatch.setenv("FAKE_KEY", KEY)
    res = run_cli("run", str(job), "--run-dir", str(tmp_path / "run"), timeout=120)
    assert res.returncode == 1
    err_lines = [ln for ln in res.stderr.splitlines() if "error" in ln]
    assert len(err_lines) == 1 and "FAKE_KEY" in err_lines[0] and "HTTP 401" in err_lines[0]
    assert len(srv.log) <= 4  # the first answers stop everything: no retries, no further rows
    assert KEY not in res.stdout + res.stderr and KEY not in all_text_under(tmp_path / "run")
    # a missing variable is named before any request is made
    monkeypatch.delenv("FAKE_KEY")
    res = run_cli("run", str(job), "--run-dir", str(tmp_path / "run2"), timeout=120)
    assert res.returncode == 1 and "FAKE_KEY is not set" in res.stderr and len(srv.log) <= 4


def test_two_servers_share_the_load_and_a_failing_one_does_not_stall(fake_openai: Any, tmp_path: Path) -> None:
    good, bad = fake_openai(delay_s=0.01), fake_openai(delay_s=0.01)
    t0 = time.time()
    bad.fault_fn = lambda body, attempt: "503" if time.time() - t0 < 0.6 else None
    d = api_job_dict(
        tmp_path / "data",
        {"base_url": [good.base_url, bad.base_url], "max_retries": 20, "concurrency": 2, "max_backoff_s": 0.2},
        n_train=60,
    )
    rd = generate(d, tmp_path / "run")
    assert all(r["output"] for r in outputs(rd))
    assert len(good.log) > 0 and len(bad.log) > 0
    # while `bad` answered 503, `good` kept answering: most of its work happened in that window
    early = [e for e in good.log if e.ts - t0 < 0.6]
    assert len(early) >= 20
    assert sum(1 for e in bad.log if e.outcome == "503") < 20  # the failing server was backed off, not hammered


def test_budget_stops_before_it_is_exceeded_and_resumes(fake_openai: Any, tmp_path: Path) -> None:
    srv = fake_openai()
    teacher = {"base_url": srv.base_url, "input_price_per_mtok": 1000.0, "output_price_per_mtok": 1000.0}
    d = api_job_dict(tmp_path / "data", {**teacher, "budget_usd": 0.2}, n_train=40, generation={"concurrency": 2})
    with pytest.raises(TeacherError, match=r"budget reached: .* run again to resume"):
        generate(d, tmp_path / "run")
    rd = RunDir(tmp_path / "run")
    from potstill.teachers.cache import RequestCache

    with RequestCache(rd.cache_db) as cache:
        spent = cache.stats()
    assert 0 < spent["calls"] < 40 and spent["cost_usd"] <= 0.2
    sent = len(srv.log)
    d["teacher"]["budget_usd"] = 100.0
    rd = generate(d, tmp_path / "run")
    assert len(srv.log) - sent == 44 - spent["calls"]  # only the rows not answered yet
    assert all(r["output"] for r in outputs(rd))


def test_logprobs_and_server_side_n(fake_openai: Any, tmp_path: Path) -> None:
    srv = fake_openai()
    d = api_job_dict(
        tmp_path / "data", {"base_url": srv.base_url, "server_n": True}, generation={"samples": 3, "logprobs": 4}
    )
    rd = generate(d, tmp_path / "run")
    assert len(srv.log) == 16 and all(e.body["n"] == 3 and e.body["top_logprobs"] == 4 for e in srv.log)
    rows = outputs(rd)
    assert len(rows) == 36 and len({r["output"] for r in rows if r["id"] == "train-0"}) == 3
    for r in rows:
        lp = r["logprobs"]
        assert "".join(lp["tokens"]) == r["output"]
        assert all(len(top) == 4 and top[0][1] >= top[1][1] for top in lp["top"])
        assert [t[0][0] for t in lp["top"]] == lp["tokens"]


def test_azure_deployment_with_key_or_ad_token(fake_openai: Any, tmp_path: Path, monkeypatch: Any) -> None:
    srv = fake_openai(api_key=KEY)
    monkeypatch.setenv("AZ_KEY", KEY)
    monkeypatch.setenv("AZ_TOKEN", KEY)
    base = {"kind": "azure_openai", "endpoint": srv.endpoint, "deployment": "gpt-4o-prod", "api_version": "2024-10-21"}
    d = api_job_dict(tmp_path / "data", {**base, "api_key_env": "AZ_KEY"})
    d["teacher"] = {**base, "api_key_env": "AZ_KEY", "retry_backoff_s": 0.01}
    rd = generate(d, tmp_path / "run")
    assert all(r["output"] for r in outputs(rd))
    e = srv.log[0]
    assert e.path == "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
    assert "model" not in e.body and e.headers.get("api-key") == "<redacted>" and "authorization" not in e.headers
    d["teacher"] = {**base, "ad_token_env": "AZ_TOKEN", "retry_backoff_s": 0.01}
    d["generation"] = {**d["generation"], "seed": 5}
    generate(d, tmp_path / "run2")
    assert srv.log[-1].headers.get("authorization") == "<redacted>" and srv.log[-1].outcome == "ok"


def test_teacher_answers_for_evaluation_reuse_the_cache(fake_openai: Any, tmp_path: Path) -> None:
    srv = fake_openai()
    d = api_job_dict(tmp_path / "data", {"base_url": srv.base_url})
    rd = generate(d, tmp_path / "run")
    spec = validate_spec(d)
    seen = [r["messages"] for r in outputs(rd)][:3]
    from potstill.data.tasks import get_task, teacher_messages

    convs = [teacher_messages(m, get_task("qa")) for m in seen]
    before = len(srv.log)
    got = teacher_answers(spec, rd.root, [*convs, [{"role": "user", "content": "A new question?"}]])
    assert len(srv.log) == before + 1  # only the new conversation is asked
    assert [g["from_cache"] for g in got] == [True, True, True, False]
    assert [g["text"] for g in got[:3]] == [r["output"] for r in outputs(rd)][:3]
    assert got[3]["text"] == answer_text({"messages": [{"role": "user", "content": "A new question?"}], "seed": 0})
    assert all(g["latency_s"] is not None for g in got)
