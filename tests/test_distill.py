"""The train stage with distillation and LoRA, on the tiny teacher/student pair (in-process, real files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import QUESTIONS, job_dict

from potstill.config import validate_spec
from potstill.demo.tiny import build_tokenizer, save_model
from potstill.errors import ConfigError, TrainingError
from potstill.pipeline import run_pipeline
from potstill.run_dir import RunDir, read_jsonl
from potstill.teachers.hf import load_tokenizer
from potstill.train.kd import check_tokenizers


def _prepared(tiny_models: dict, tmp_path: Path, **over) -> tuple[dict, Path]:
    """generate + validate done on the tiny pair; returns the job dict and the run dir."""
    d = job_dict(tiny_models, tmp_path / "data", **over)
    rd = tmp_path / "run"
    run_pipeline(validate_spec(d), rd, only=["generate", "validate"])
    return d, rd


def _train(d: dict, rd: Path, **hp) -> dict:
    d = {**d, "hyperparameters": {**d["hyperparameters"], **hp}}
    run_pipeline(validate_spec(d), rd, only=["train"])
    return json.loads((rd / "student" / "training_summary.json").read_text())


def _steps(rd: Path) -> list[dict]:
    return RunDir(rd).events("train", "step")


def test_tokenizer_mismatch_is_a_clear_error(tiny_models: dict) -> None:
    student_tok = load_tokenizer(str(tiny_models["student"]))
    a = build_tokenizer([f"{q} Answer: {x}" for q, x in QUESTIONS] * 20, vocab_size=300)
    b = build_tokenizer(["completely different words for another vocabulary"] * 20, vocab_size=300)
    with pytest.raises(TrainingError, match=r"tokenizers differ: .* map to different tokens \(e\.g\. id"):
        check_tokenizers(a, b)  # same size, different merges
    c = build_tokenizer([f"{q} Answer: {x}" for q, x in QUESTIONS] * 20, vocab_size=student_tok.vocab_size - 20)
    with pytest.raises(TrainingError, match=f"base vocabularies of {student_tok.vocab_size} and {c.vocab_size} tokens"):
        check_tokenizers(student_tok, c)
    check_tokenizers(student_tok, load_tokenizer(str(tiny_models["teacher"])))  # the same tokenizer passes


def test_kd_spec_range_checks() -> None:
    base = {
        "name": "x",
        "task_type": "qa",
        "teacher": "t",
        "student": "s",
        "data": {"training": "a", "validation": "b"},
    }
    for bad in ({"alpha": 1.5}, {"loss": "kl"}, {"beta": 0}, {"temperature": 0}, {"sourse": "teacher"}):
        with pytest.raises(ConfigError):
            validate_spec({**base, "hyperparameters": {"kd": bad}})


def test_dense_kd_with_a_padded_teacher_vocabulary(tiny_models: dict, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(tiny_models["teacher"])
    n = teacher.config.vocab_size
    teacher.resize_token_embeddings(n + 8)  # like Qwen 7B's 152,064 rows vs 0.5B's 151,936
    padded = save_model(teacher, load_tokenizer(str(tiny_models["teacher"])), tmp_path / "padded-teacher")
    d, rd = _prepared({**tiny_models, "teacher": padded}, tmp_path)
    res = _train(d, rd, kd={"source": "teacher", "loss": "jsd", "alpha": 0.9}, num_epochs=4)
    steps = _steps(rd)
    assert res["steps"] == len(steps) > 0 and all(torch.isfinite(torch.tensor(s["kd"])) for s in steps)
    first, last = steps[0]["kd"], steps[-1]["kd"]
    assert last < first  # the student moves toward the teacher's distribution


def _add_logprobs(rd: Path, teacher_dir: Path, k: int, as_text: bool) -> None:
    """Write the generate.py logprobs field into data/train.jsonl from the teacher's own distribution."""
    from transformers import AutoModelForCausalLM

    from potstill.train.data import encode_chat
    from potstill.train.kd import last_target_start

    tok = load_tokenizer(str(teacher_dir))
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    rows = list(read_jsonl(rd / "data" / "train.jsonl"))
    for r in rows:
        enc = encode_chat(tok, r["messages"], 512)
        start = last_target_start(enc.labels)
        answer = tok(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = teacher(input_ids=torch.tensor([enc.input_ids])).logits[0].log_softmax(-1)
        top_lp, top_id = logp[start - 1 : start - 1 + len(answer)].topk(k, dim=-1)
        lp = {
            "tokens": [tok.decode([i]) for i in answer],
            "top": [
                [[tok.decode([i]), round(float(v), 4)] for i, v in zip(ids, vs, strict=True)]
                for ids, vs in zip(top_id, top_lp, strict=True)
            ],
        }
        if not as_text:
            lp |= {"token_ids": answer, "top_ids": top_id.tolist()}
        r["logprobs"] = lp
    (rd / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("as_text", [False, True], ids=["ids", "text-pieces"])
def test_topk_logprob_kd(tiny_models: dict, tmp_path: Path, as_text: bool) -> None:
    d, rd = _prepared(tiny_models, tmp_path)
    _add_logprobs(rd, tiny_models["teacher"], k=5, as_text=as_text)
    res = _train(d, rd, kd={"source": "logprobs", "loss": "forward_kl", "alpha": 0.5}, num_epochs=4)
    start = RunDir(rd).events("train", "start")[-1]
    assert start["logprob_rows"] == len(QUESTIONS)  # every row's logprobs lined up with the student's tokens
    steps = _steps(rd)
    assert res["steps"] == len(steps) and steps[-1]["kd"] < steps[0]["kd"]


def test_logprobs_source_without_logprobs_is_a_clear_error(tiny_models: dict, tmp_path: Path) -> None:
    d, rd = _prepared(tiny_models, tmp_path)
    with pytest.raises(TrainingError, match="carries teacher logprobs"):
        _train(d, rd, kd={"source": "logprobs"})


def test_hidden_state_matching(tiny_models: dict, tmp_path: Path) -> None:
    d, rd = _prepared(tiny_models, tmp_path)
    _train(d, rd, hidden={"loss": "cosine", "layer_map": {1: 2}}, kd={"source": "teacher"}, num_epochs=4)
    steps = _steps(rd)
    assert steps[-1]["hidden"] < steps[0]["hidden"]
    ck = sorted((rd / "checkpoints").glob("step-*"))[-1]
    extra = torch.load(ck / "state.pt", weights_only=False)["extra"]
    assert list(extra) == ["1.weight"] and extra["1.weight"].shape == (32, 16)  # teacher 32 ← student 16


def test_lora_saves_only_the_adapter_and_merges_to_the_same_outputs(tiny_models: dict, tmp_path: Path) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    d, rd = _prepared(tiny_models, tmp_path, student={"lora": {"r": 4, "alpha": 8, "dropout": 0.0}})
    _train(d, rd, learning_rate=1e-2, eval_every=2)
    adapter = load_file(rd / "student" / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    # the checkpoint holds only the adapter's trainable tensors (the frozen base never changes)
    ck = sorted((rd / "checkpoints").glob("step-*"))[-1]
    assert all("lora_" in k for k in torch.load(ck / "state.pt", weights_only=False)["model"])
    merged = AutoModelForCausalLM.from_pretrained(rd / "student").eval()
    ids = torch.tensor([[5, 9, 17, 30, 41, 2]])
    with torch.no_grad():
        c = AutoModelForCausalLM.from_pretrained(tiny_models["student"]).eval()(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_models["student"])
        with_adapter = PeftModel.from_pretrained(base, rd / "student" / "adapter").eval()
        a, b = merged(input_ids=ids).logits, with_adapter(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-3)  # training changed something
