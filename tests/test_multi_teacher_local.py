"""Several local teachers through the whole pipeline: a cascade from an untrained (cheap) teacher to the trained
tiny teacher, escalating on the cheap one's low mean token logprob; each teacher its own evaluation row; the
report's teachers section; logit distillation from each row's own teacher, and a teacher whose tokenizer is not
the student's refused for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import QUESTIONS, job_dict, write_jsonl

from potstill import TrainingError
from potstill.config import load_spec
from potstill.pipeline import run_pipeline


def multi_local(tiny_models: dict[str, Path], tmp: Path, teaching: dict[str, Any], **over: Any) -> Path:
    d = job_dict(tiny_models, tmp / "data", **over)
    test = write_jsonl(tmp / "data" / "test_bare.jsonl", [{"prompt": q, "answer": a} for q, a in QUESTIONS[6:]])
    d["data"]["test"] = str(test)  # bare gold answers ("7"), which the qa task compares with the parsed answer
    del d["teacher"]
    d["teachers"] = [
        {
            "name": "cheap",
            "kind": "hf",
            "model": str(tiny_models["student"]),
            "batch_size": 8,
            "input_price_per_mtok": 0.01,
            "output_price_per_mtok": 0.02,
        },
        {
            "name": "strong",
            "kind": "hf",
            "model": str(tiny_models["teacher"]),
            "batch_size": 8,
            "input_price_per_mtok": 0.5,
            "output_price_per_mtok": 1.0,
        },
    ]
    d["teaching"] = teaching
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_local_cascade_on_logprob_through_every_stage(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    job = multi_local(
        tiny_models,
        tmp_path,
        {"strategy": "cascade", "order": ["cheap", "strong"], "escalate_on": [{"logprob": {"min_mean": -2.0}}]},
    )
    run = run_pipeline(load_spec(job), tmp_path / "run").root
    answers = read(run / "teacher" / "answers" / "train.jsonl")
    cheap = [a for a in answers if a["teacher"] == "cheap"]
    assert len(cheap) == len(QUESTIONS) and all(a["mean_logprob"] < -2.0 for a in cheap)  # untrained: unsure
    assert all(a["why"].startswith("escalated: logprob") and not a["selected"] for a in cheap)
    strong = [a for a in answers if a["teacher"] == "strong"]
    assert len(strong) == len(QUESTIONS) and all(a["selected"] for a in strong)
    assert "mean_logprob" not in strong[0]  # the last teacher is asked as generation says: no logprobs

    train = read(run / "data" / "train.jsonl")
    assert train and all(r["teacher"] == "strong" and r["chosen"].startswith("cascade step 2 of 2") for r in train)

    results = json.loads((run / "eval" / "results.json").read_text())
    by = {m["name"]: m for m in results["models"]}
    assert (
        by["teacher"]["teacher"] == "strong" and by["teacher-cheap"]["teacher"] == "cheap"
    )  # the dearest is "teacher"
    assert by["teacher"]["accuracy"] > by["teacher-cheap"]["accuracy"]
    assert by["teacher"]["cost_per_1k_answers_usd"] > 0 and by["teacher-cheap"]["cost_per_1k_answers_usd"] > 0
    assert "teacher-cheap" not in results["comparison"]["by_model"]  # teachers are compared against, not with

    state = json.loads((run / "state.json").read_text())
    ledger = state["stages"]["generate"]["counts"]["ledger"]["teachers"]
    # (the validation prompts are training prompts too: the same request, asked and paid once)
    assert ledger["cheap"]["calls"] == len(QUESTIONS) and ledger["strong"]["calls"] == len(QUESTIONS)
    assert ledger["strong"]["cost_usd"] > ledger["cheap"]["cost_usd"] > 0

    md = (run / "report" / "report.md").read_text()
    assert "## Teachers" in md and "### Cascade: escalation funnel" in md and "logprob (18)" in md
    assert "every row to strong (the dearest teacher)" in md
    html = (run / "report" / "report.html").read_text()
    assert 'id="teachers"' in html and "Cascade: escalation funnel" in html
    # the same job again: nothing is asked twice, the strategy decides the same from the cache
    before = (run / "teacher" / "answers" / "train.jsonl").read_text()
    run_pipeline(load_spec(job), run, only=["generate"], force=True)
    summary = json.loads((run / "teacher" / "teaching.json").read_text())
    assert all(t["from_cache"] == t["requests"] for t in summary["teachers"].values())
    assert (run / "teacher" / "answers" / "train.jsonl").read_text() == before


def _other_tokenizer_teacher(root: Path) -> Path:
    from potstill.demo.tiny import build_tokenizer, save_model, tiny_llama

    tok = build_tokenizer([f"Quite different words {i} here" for i in range(50)], vocab_size=300)
    return save_model(tiny_llama(tok, hidden=16, layers=1, heads=2, seed=3), tok, root / "other")


def test_logit_kd_refuses_a_teacher_with_another_tokenizer(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    job = multi_local(
        tiny_models,
        tmp_path,
        {"strategy": "pool", "select": "vote"},
        generation={"logprobs": 2},
        hyperparameters={"kd": {"source": "logprobs"}},
    )
    d = yaml.safe_load(job.read_text())
    d["teachers"][0]["model"] = str(_other_tokenizer_teacher(tmp_path))
    job.write_text(yaml.safe_dump(d))
    with pytest.raises(TrainingError, match=r"teacher 'cheap' cannot be distilled token by token: student and teacher"):
        run_pipeline(load_spec(job), tmp_path / "run", only=["generate"])
    assert not (tmp_path / "run" / "teacher" / "cache.sqlite").exists()  # refused before anything is asked
    # answer-level use of the same teachers stays allowed
    del d["hyperparameters"]["kd"]
    job.write_text(yaml.safe_dump(d))
    run_pipeline(load_spec(job), tmp_path / "run2", only=["generate", "validate"])


@pytest.mark.slow
def test_logit_kd_uses_each_rows_own_teacher(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    job = multi_local(
        tiny_models,
        tmp_path,
        {"strategy": "route", "field": "half", "map": {"a": "cheap", "*": "strong"}},
        generation={"logprobs": 3, "temperature": 0.7},  # each teacher samples its own answers (seeded by its key)
        hyperparameters={"kd": {"source": "logprobs", "alpha": 0.5}, "num_epochs": 1},
    )
    d = yaml.safe_load(job.read_text())
    d["teachers"][0]["model"] = str(tiny_models["teacher"])  # two teachers of the student's family
    rows = [{"prompt": q, "half": "ab"[i % 2]} for i, (q, _) in enumerate(QUESTIONS)]
    d["data"]["training"] = str(write_jsonl(tmp_path / "data" / "halves.jsonl", rows))
    job.write_text(yaml.safe_dump(d))
    run = run_pipeline(load_spec(job), tmp_path / "run", only=["generate", "validate", "train"]).root
    train = read(run / "data" / "train.jsonl")
    assert {r["teacher"] for r in train} == {"cheap", "strong"}
    outputs = {r["id"]: r for r in read(run / "teacher" / "outputs" / "train.jsonl")}
    for r in train:  # each training row carries the logprobs its own teacher gave
        assert r["teacher"] == ("cheap" if int(r["id"].split("-")[1]) % 2 == 0 else "strong")
        assert r["logprobs"] == outputs[r["id"]]["logprobs"] and r["logprobs"]["token_ids"]
    events = [json.loads(x) for x in (run / "logs" / "events.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["stage"] == "train" and e["event"] == "start")
    assert start["logprob_rows"] == len(train)  # both teachers' rows line up with the student's tokens


def test_logit_kd_refuses_a_remote_teacher_whose_tokens_do_not_line_up(
    tiny_models: dict[str, Path], tmp_path: Path, fake_openai: Any
) -> None:
    srv = fake_openai()
    srv.answer_fn = lambda body: "Answer: seven"  # whole words: not one student token each
    job = multi_local(
        tiny_models,
        tmp_path,
        {"strategy": "route", "by": "length", "unit": "chars", "map": {"16": "strong", "*": "remote"}},
        generation={"logprobs": 2},
        hyperparameters={"kd": {"source": "logprobs"}},
    )
    d = yaml.safe_load(job.read_text())
    d["teachers"][0] = {"name": "remote", "kind": "openai", "model": "m", "base_url": srv.base_url}
    job.write_text(yaml.safe_dump(d))
    with pytest.raises(TrainingError, match=r"teacher 'remote' cannot be distilled token by token: only 0 of its 12"):
        run_pipeline(load_spec(job), tmp_path / "run", only=["generate", "validate", "train"])
