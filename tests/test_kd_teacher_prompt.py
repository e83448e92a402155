"""A local teacher's forward pass (dense KD, hidden states) reads each row after the prompt it was asked with.

The student's rows may lack the task's system message that the teacher was asked with at generation (the demo's
data, any job with ``prompts.system``); the teacher's logits on the student's own row would then be those of a
teacher that was never asked that way (the demo's teacher: 100 % of the test problems with its system prompt,
9 % without).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import QUESTIONS, job_dict

from potstill.config import KDSpec, validate_spec
from potstill.pipeline import run_pipeline
from potstill.teachers.hf import load_causal_lm, load_tokenizer
from potstill.train.data import IGNORE, collate, encode_chat
from potstill.train.kd import Distiller, attach_teacher_prompt, last_target_start
from potstill.train.packing import pack

CPU = torch.device("cpu")
SYSTEM = [{"role": "system", "content": "Answer."}]


def _conv(q: str, a: str, turns: int = 1) -> list[dict[str, str]]:
    earlier = [{"role": "user", "content": "What is 1 plus 1?"}, {"role": "assistant", "content": "Answer: 2"}]
    return [*earlier * (turns - 1), {"role": "user", "content": q}, {"role": "assistant", "content": f"Answer: {a}"}]


def _asked(tok: Any, conv: list[dict[str, str]]) -> list[int]:
    text = tok.apply_chat_template([*SYSTEM, *conv[:-1]], tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def pair(tiny_models: dict) -> dict[str, Any]:
    tok = load_tokenizer(str(tiny_models["student"]))
    teacher = load_causal_lm(str(tiny_models["teacher"]), CPU, torch.float32).requires_grad_(False)
    return {"tok": tok, "teacher": teacher}


def _rows(tok: Any, turns: int = 1, own_system: str | None = None) -> tuple[list[Any], list[list[int]]]:
    convs = [_conv(q, a, turns) for q, a in QUESTIONS[:6]]
    mine = [{"role": "system", "content": own_system}] if own_system else []
    rows = [encode_chat(tok, [*mine, *c], 128) for c in convs]
    asked = [_asked(tok, c) for c in convs]
    for r, a in zip(rows, asked, strict=True):
        attach_teacher_prompt(r, a)
    return rows, asked


@pytest.mark.parametrize("turns", [1, 2], ids=["one-turn", "two-turns"])
@pytest.mark.parametrize("own_system", [None, "Be brief, please."], ids=["no-system", "another-system"])
def test_the_teacher_scores_each_answer_after_its_own_prompt(pair: dict, turns: int, own_system: str | None) -> None:
    tok, teacher = pair["tok"], pair["teacher"]
    rows, asked = _rows(tok, turns, own_system)
    d = Distiller(KDSpec(alpha=0.5, source="teacher"), 1.0, teacher=teacher)
    batch = collate(rows, tok.pad_token_id)
    logits, _, seen = d._teacher_pass(batch)
    assert seen is not None
    for b, (r, a) in enumerate(zip(rows, asked, strict=True)):
        start, n = last_target_start(r.labels), len(r.input_ids)
        assert start is not None
        own = teacher(input_ids=torch.tensor([a + r.input_ids[start:]])).logits[0]
        shift = len(a) - start
        # every position the teacher saw holds the teacher's logits at its own position: the answer's, and the
        # prompts' common tail (user turns, earlier answers); the student's own system message maps to nothing
        at = [j for j in range(n - 1) if seen[b, j]]
        assert at == list(range(at[0], n - 1))
        torch.testing.assert_close(logits[b, at], own[[j + shift for j in at]], atol=1e-5, rtol=1e-5)
        mine = r.input_ids[:start]
        tail = next(c for c in range(len(mine), -1, -1) if c == 0 or mine[-c:] == a[-c:])
        assert at[0] == start - tail
        if own_system is None:  # the student's prompt is the end of the teacher's: everything maps
            assert at[0] == 0
        else:
            assert "Be brief" not in tok.decode(mine[at[0] :]) and "Be brief" in tok.decode(mine)
        if turns == 2:  # the earlier assistant turn is a target the teacher also saw, after its own prompt
            first = next(i for i, x in enumerate(r.labels) if x != IGNORE)
            assert bool(seen[b, first - 1])
    # the KD counts follow the positions the teacher saw
    assert d.counts(batch)["kd"] == int(((batch["labels"][:, 1:] != IGNORE) & seen).sum())


def test_packed_rows_give_the_unpacked_teacher_logits(pair: dict) -> None:
    tok, teacher = pair["tok"], pair["teacher"]
    rows, _ = _rows(tok)
    d = Distiller(KDSpec(alpha=0.5, source="teacher"), 1.0, teacher=teacher)
    plain, _, _ = d._teacher_pass(collate(rows, tok.pad_token_id))
    packed = pack(copy.deepcopy(rows), 96)
    assert len(packed) < len(rows) and packed[0].teacher_pos is not None
    pb = collate(packed, tok.pad_token_id)
    assert "t_position_ids" in pb and "t_attention_mask" not in pb
    got, _, seen = d._teacher_pass(pb)
    assert seen is not None
    for p, row in enumerate(packed):
        assert row.position_ids is not None
        starts = [i for i, x in enumerate(row.position_ids) if x == 0]
        for s in starts:  # find which example this is by its tokens
            n = next(len(r.input_ids) for r in rows if row.input_ids[s : s + len(r.input_ids)] == r.input_ids)
            b = next(i for i, r in enumerate(rows) if row.input_ids[s : s + n] == r.input_ids)
            start = last_target_start(rows[b].labels)
            assert start is not None
            torch.testing.assert_close(
                got[p, s + start - 1 : s + n - 1], plain[b, start - 1 : n - 1], atol=1e-4, rtol=1e-4
            )


def test_rows_the_teacher_was_asked_as_they_are_stay_plain(pair: dict) -> None:
    tok = pair["tok"]
    conv = [*SYSTEM, *_conv("What is 2 plus 9?", "11")]
    row = encode_chat(tok, conv, 128)
    attach_teacher_prompt(row, _asked(tok, conv[1:]))
    assert row.teacher_ids is None  # same prompt: the teacher reads the student's row
    assert "t_input_ids" not in collate([row], tok.pad_token_id)


def test_the_train_stage_gives_the_teacher_its_system_prompt(
    tiny_models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kd.source: teacher in a job with prompts.system: every KD batch runs the teacher after "Answer." while the
    student's rows stay without it."""
    d = job_dict(tiny_models, tmp_path / "data")
    d["hyperparameters"] |= {"kd": {"alpha": 0.5, "source": "teacher"}, "max_steps": 3}
    spec = validate_spec(d)
    run_pipeline(spec, tmp_path / "run", only=["generate", "validate"])
    tok = load_tokenizer(str(tiny_models["student"]))
    seen: list[dict[str, torch.Tensor]] = []
    orig = Distiller.step_losses

    def spy(self: Distiller, out: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seen.append(batch)
        return orig(self, out, batch)

    monkeypatch.setattr(Distiller, "step_losses", spy)
    run_pipeline(spec, tmp_path / "run", only=["train"])
    assert seen
    for batch in seen:
        assert "t_input_ids" in batch
        for ids in batch["t_input_ids"]:
            assert "<|system|>\nAnswer." in tok.decode(ids.tolist())
        for ids in batch["input_ids"]:
            assert "Answer." not in tok.decode(ids.tolist()).split("<|assistant|>")[0]
