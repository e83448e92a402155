"""Which teachers can score the student's samples, found out before any stage runs; and training scored by a
server's prompt logprobs (a real HTTP server on 127.0.0.1 answering vLLM's /v1/completions with prompt_logprobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import QUESTIONS, job_dict, run_cli

from potstill.config import validate_spec
from potstill.demo.tiny import build_tokenizer, save_model, tiny_llama
from potstill.errors import ConfigError
from potstill.pipeline import run_pipeline
from potstill.run_dir import RunDir
from potstill.teachers.hf import load_causal_lm, load_tokenizer
from potstill.train.remote_scorer import PROBE_TEXT


def _openai_job(tiny_models: dict, tmp_path: Path, url: str, **op: Any) -> dict:
    teacher = {"kind": "openai", "model": "m", "base_url": url, "retry_backoff_s": 0.01, "max_retries": 1}
    hp = {"num_epochs": 2, "on_policy": {"lmbda": 1.0, "max_new_tokens": 6, **op}}
    return {**job_dict(tiny_models, tmp_path / "data", hyperparameters=hp), "teacher": teacher}


def test_a_local_teacher_with_another_tokenizer_fails_before_anything_runs(tiny_models: dict, tmp_path: Path) -> None:
    tok = build_tokenizer(["completely different words for another vocabulary"] * 20, vocab_size=300)
    other = save_model(tiny_llama(tok, hidden=16, layers=1, heads=2, seed=3), tok, tmp_path / "other-teacher")
    d = job_dict({**tiny_models, "teacher": other}, tmp_path / "data", hyperparameters={"on_policy": {}})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(d))
    res = run_cli("run", str(job), "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 2
    assert "hyperparameters.on_policy: the teacher cannot score the student's tokens" in res.stderr
    assert "tokenizers differ" in res.stderr
    assert not (tmp_path / "run").exists()  # nothing written: not even the run folder


def test_a_server_without_prompt_logprobs_fails_before_generation(
    tiny_models: dict, tmp_path: Path, fake_openai: Any
) -> None:
    srv = fake_openai()  # answers every path with a chat completion: no prompt_logprobs
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_openai_job(tiny_models, tmp_path, srv.base_url)))
    res = run_cli("run", str(job), "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 2, res.stderr
    line = [ln for ln in res.stderr.splitlines() if "cannot score given tokens" in ln]
    assert len(line) == 1 and "no choices[0].prompt_logprobs" in line[0] and "vLLM: prompt_logprobs" in line[0]
    assert [e.path for e in srv.log] == ["/v1/completions"]  # the probe, and no teacher answer was asked for
    assert srv.log[0].body["prompt_logprobs"] == 20 and isinstance(srv.log[0].body["prompt"][0], int)
    assert not (tmp_path / "run").exists()
    srv.inject("400")  # a server that refuses the request: its message is in the line
    with pytest.raises(ConfigError, match=r"cannot score given tokens \(HTTP 400: This model's maximum"):
        run_pipeline(validate_spec(_openai_job(tiny_models, tmp_path, srv.base_url)), tmp_path / "run")


def _scorer(teacher_dir: Path) -> Any:
    """score_fn for the fake server: the tiny teacher's own top-k (and the given token) at each position."""
    teacher = load_causal_lm(str(teacher_dir), torch.device("cpu"), torch.float32)

    def score(ids: list[int], k: int) -> list[dict[int, float] | None]:
        with torch.no_grad():
            logp = teacher(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        out: list[dict[int, float] | None] = [None]
        for j in range(1, len(ids)):
            top = logp[j - 1].topk(k)
            row = {int(i): float(v) for i, v in zip(top.indices, top.values, strict=True)}
            out.append(row | {ids[j]: float(logp[j - 1, ids[j]])})
        return out

    return score


def test_training_scored_by_a_servers_prompt_logprobs(tiny_models: dict, tmp_path: Path, fake_openai: Any) -> None:
    tok = load_tokenizer(str(tiny_models["teacher"]))
    srv = fake_openai(score_fn=_scorer(tiny_models["teacher"]), decode_fn=lambda i: tok.decode([i]))
    d = _openai_job(tiny_models, tmp_path, srv.base_url, top_logprobs=5)
    run_pipeline(validate_spec(d), tmp_path / "run", only=["generate", "validate", "train"])
    probe = tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    assert srv.log[0].path == "/v1/completions" and srv.log[0].body["prompt"] == probe  # before generation
    scored = [e for e in srv.log if e.path == "/v1/completions" and e.body["prompt"] != probe]
    steps = RunDir(tmp_path / "run").events("train", "step")
    assert len(steps) == 6 and all(s["on_policy"] == 1 and s["gkd"] >= 0 for s in steps)
    assert len(scored) == 6 * 4  # one request per sampled row: 6 steps of 4 rows
    assert all(e.body["prompt_logprobs"] == 5 and e.body["max_tokens"] == 1 for e in scored)
    for e in scored:  # each scored sequence: a training prompt (with the chat template), then a sampled answer
        text = tok.decode(e.body["prompt"])
        assert any(q in text for q, _ in QUESTIONS) and len(e.body["prompt"]) > 10, text


def test_a_server_with_another_tokenizer_is_refused(tiny_models: dict, tmp_path: Path, fake_openai: Any) -> None:
    srv = fake_openai(score_fn=_scorer(tiny_models["teacher"]), decode_fn=lambda i: f"tok{i}")
    d = _openai_job(tiny_models, tmp_path, srv.base_url)
    with pytest.raises(ConfigError, match="its tokenizer differs from the student's: token id"):
        run_pipeline(validate_spec(d), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_prompt_logprobs_are_read_strictly() -> None:
    from potstill.train.remote_scorer import ScoreError, parse_prompt_logprobs

    good = {"choices": [{"prompt_logprobs": [None, {"7": {"logprob": -0.5, "rank": 1}, "3": {"logprob": -1.5}}]}]}
    assert parse_prompt_logprobs(good, 2) == ([[], [3, 7]], [[], [-1.5, -0.5]])
    for bad, why in [
        ({"choices": [{"text": "x"}]}, "no choices\\[0\\].prompt_logprobs"),
        ({"choices": []}, "no choices"),
        ({"choices": [{"prompt_logprobs": [None]}]}, "1 entries for 2 prompt tokens"),
        ({"choices": [{"prompt_logprobs": [None, [1, 2]]}]}, "entry is a list"),
        ({"choices": [{"prompt_logprobs": [None, {"x": {"logprob": 1}}]}]}, "not \\{token id"),
        ({"choices": [{"prompt_logprobs": [None, {"7": {"rank": 1}}]}]}, "not \\{token id"),
    ]:
        with pytest.raises(ScoreError, match=why):
            parse_prompt_logprobs(bad, 2)
