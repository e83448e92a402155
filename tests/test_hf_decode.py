"""The local teacher's decode loop (rows leave the batch when they finish) against transformers' generate()."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import QUESTIONS

from potstill.decode import hf_loop as hf_decode
from potstill.teachers.hf import LocalModel


def _convs() -> list[list[dict[str, str]]]:
    known = [[{"role": "system", "content": "Answer."}, {"role": "user", "content": q}] for q, _ in QUESTIONS]
    odd = [[{"role": "user", "content": "zz " * k + "what?"}] for k in range(1, 7)]  # unseen: run to the limit
    return known + odd


def _hf_generate(lm: LocalModel, conv: list[dict[str, str]], max_new: int) -> tuple[list[int], str]:
    ids = lm.tokenizer(lm.chat_text(conv), add_special_tokens=False, return_tensors="pt")["input_ids"]
    stop = lm._stop_ids()
    with torch.inference_mode():
        g = lm.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=lm.tokenizer.pad_token_id,
        )
    new = g[0, ids.shape[1] :].tolist()
    cut = next((k for k, t in enumerate(new) if t in stop), None)
    return (new[:cut], "stop") if cut is not None else (new, "length")


@pytest.mark.parametrize("shrink", [True, False])
def test_greedy_batch_equals_generate_one_by_one(
    tiny_models: dict[str, Path], shrink: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows leaving the batch (or riding along, for caches that cannot drop rows) change no token."""
    monkeypatch.setattr(hf_decode, "can_shrink", lambda cache: shrink)
    lm = LocalModel.load(tiny_models["teacher"], device="cpu")
    convs = _convs()
    finishes = set()
    for max_new in (3, 12):  # 3 cuts most answers off, 12 lets them end
        got = lm.generate(convs, max_new_tokens=max_new, batch_size=8)  # mixed prompt lengths and finish points
        for conv, c in zip(convs, got, strict=True):
            toks, finish = _hf_generate(lm, conv, max_new)
            assert c.finish_reason == finish and c.completion_tokens == len(toks), conv
            assert c.text == lm.tokenizer.decode(toks, skip_special_tokens=True).strip()
            finishes.add(finish)
    assert finishes == {"stop", "length"}


def test_sampling_is_seeded_and_top_p_narrows_to_greedy(tiny_models: dict[str, Path]) -> None:
    lm = LocalModel.load(tiny_models["teacher"], device="cpu")
    convs = _convs()
    a = [c.text for c in lm.generate(convs, max_new_tokens=10, temperature=1.5, batch_size=8, seed=3)]
    b = [c.text for c in lm.generate(convs, max_new_tokens=10, temperature=1.5, batch_size=8, seed=3)]
    c = [c.text for c in lm.generate(convs, max_new_tokens=10, temperature=1.5, batch_size=8, seed=4)]
    assert a == b and a != c
    greedy = [c.text for c in lm.generate(convs, max_new_tokens=10, batch_size=8)]
    narrow = [c.text for c in lm.generate(convs, max_new_tokens=10, temperature=1.5, top_p=1e-6, batch_size=8, seed=3)]
    assert narrow == greedy


def test_logprobs_follow_the_kept_tokens(tiny_models: dict[str, Path]) -> None:
    lm = LocalModel.load(tiny_models["teacher"], device="cpu")
    for c in lm.generate(_convs(), max_new_tokens=12, batch_size=8, logprobs=2):
        lp = c.logprobs
        assert lp is not None and len(lp["top_ids"]) == len(lp["token_ids"]) == c.completion_tokens
        assert all(ids[0] == t for ids, t in zip(lp["top_ids"], lp["token_ids"], strict=True))


def test_local_teacher_samples_do_not_depend_on_what_was_answered_before(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """A sampled answer is a function of its request: a run resumed after half the answers were cached gives the
    same answers as an uninterrupted one (the seed comes from the request, not from its batch or position)."""
    import json

    from conftest import job_dict

    from potstill.config import validate_spec
    from potstill.data.jsonl import read_examples
    from potstill.data.tasks import task_for
    from potstill.pipeline import run_pipeline
    from potstill.run_dir import RunDir
    from potstill.teachers.cache import RequestCache
    from potstill.teachers.generate import Answerer, build_request

    d = job_dict(tiny_models, tmp_path / "data", generation={"temperature": 1.5, "max_tokens": 8, "samples": 2})
    spec = validate_spec(d)
    whole = run_pipeline(spec, tmp_path / "whole", only=["generate"])
    outputs = [json.loads(x) for x in (whole.outputs / "train.jsonl").read_text().splitlines()]

    part = RunDir(tmp_path / "part")
    part.create()
    task = task_for(spec)
    examples = list(read_examples(spec.data.training, "train", spec.prompts.template))
    reqs = [build_request(spec, task, ex, s) for ex in examples[::2] for s in range(2)]
    with RequestCache(part.cache_db) as cache:
        Answerer(spec, part, cache).answer(reqs, "train")  # "killed" after a part of the answers
    run_pipeline(spec, part.root, only=["generate"])
    again = [json.loads(x) for x in (part.outputs / "train.jsonl").read_text().splitlines()]
    assert [o["output"] for o in again] == [o["output"] for o in outputs]
    assert len({o["output"] for o in outputs}) > 1  # sampled, not greedy
