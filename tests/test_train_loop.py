"""The training loop on tiny in-memory models: loss masking, packing, accumulation, early stopping, best weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import QUESTIONS

from potstill.demo.tiny import build_tokenizer, tiny_llama
from potstill.train.data import IGNORE, collate, encode_chat
from potstill.train.kd import model_inputs
from potstill.train.packing import pack
from potstill.train.trainer import FitConfig, _ce_sum, evaluate_loss, fit


@pytest.fixture(scope="module")
def tok():
    texts = [f"{q} Answer: {a}" for q, a in QUESTIONS] * 5 + ["hello there, how are you today?"] * 5
    return build_tokenizer(texts, vocab_size=160)


def _row(tok, q: str, a: str, max_len: int = 64):
    return encode_chat(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], max_len)


def test_only_assistant_tokens_carry_loss(tok) -> None:
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 1 plus 2?"},
        {"role": "assistant", "content": "Answer: 3"},
        {"role": "user", "content": "And 4 plus 4?"},
        {"role": "assistant", "content": "Answer: 8"},
    ]
    enc = encode_chat(tok, msgs, 512)
    targets = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    assert tok.decode(targets) == "Answer: 3<|end|>\nAnswer: 8<|end|>\n"
    prompt = tok.decode([t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab == IGNORE])
    assert "Be brief." in prompt and "What is 1 plus 2?" in prompt and "<|assistant|>" in prompt
    assert "Answer" not in prompt
    short = encode_chat(tok, msgs, 10)
    assert short.truncated and len(short.input_ids) == 10 and not enc.truncated


def test_packed_rows_give_the_unpacked_loss(tok) -> None:
    model = tiny_llama(tok, hidden=32, layers=2, heads=2, seed=3).eval()
    rows = [_row(tok, q, f"Answer: {a}" + " ok" * (i % 4)) for i, (q, a) in enumerate(QUESTIONS)]
    packed = pack(rows, 96)
    assert len(packed) < len(rows) and all(len(r.input_ids) <= 96 for r in packed)
    assert sum(r.n_target for r in packed) == sum(r.n_target for r in rows)

    def total(rs):
        b = collate(rs, tok.pad_token_id)
        with torch.no_grad():
            return float(_ce_sum(model(**model_inputs(b)).logits, b["labels"]))

    assert total(packed) == pytest.approx(total(rows), rel=1e-5)


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_gradient_accumulation_matches_the_big_batch(tok) -> None:
    rows = [_row(tok, q, f"Answer: {a}" + " ok" * (i % 3)) for i, (q, a) in enumerate(QUESTIONS)]  # mixed lengths
    out = []
    for bs, accum in ((4, 1), (2, 2)):
        model = tiny_llama(tok, hidden=16, layers=1, heads=2, seed=5)
        cfg = FitConfig(learning_rate=1e-2, batch_size=bs, grad_accum_steps=accum, num_epochs=2, warmup_ratio=0)
        res = fit(model, rows, [], cfg, tok.pad_token_id)
        assert res["steps"] == 6
        out.append(_weights(model))
    assert torch.allclose(out[0], out[1], atol=1e-5)


def test_early_stopping_stops_and_the_best_weights_are_kept(tok, tmp_path: Path) -> None:
    rows = [_row(tok, q, f"Answer: {a}") for q, a in QUESTIONS]
    # validation answers contradict training: validation loss falls at first, then rises as the model fits training
    val = [_row(tok, q, f"Answer: {int(a) + 1}") for q, a in QUESTIONS[:6]]
    model = tiny_llama(tok, hidden=32, layers=2, heads=2, seed=7)
    cfg = FitConfig(
        learning_rate=3e-2, batch_size=4, num_epochs=100, warmup_ratio=0, eval_every=1, early_stopping_patience=3
    )
    events = []
    res = fit(model, rows, val, cfg, tok.pad_token_id, ckpt_dir=tmp_path, log=lambda e, **k: events.append((e, k)))
    assert res["stopped_early"]
    assert res["steps"] < cfg.total_steps(len(rows))
    vals = [h["val_loss"] for h in res["history"]]
    best = min(range(len(vals)), key=vals.__getitem__)
    assert res["steps"] == res["history"][best]["step"] + 3  # exactly `patience` validations without improvement
    assert res["best_step"] == res["history"][best]["step"]
    assert evaluate_loss(model, val, tok.pad_token_id) == pytest.approx(vals[best], abs=1e-4)  # best weights back
    assert ("best_restored", {"step": res["best_step"], "val_loss": round(vals[best], 5)}) in events
    assert (tmp_path / "best" / "state.pt").exists()
    # a second call resumes from the final checkpoint, sees that training stopped, and does not train again
    again = fit(tiny_llama(tok, hidden=32, layers=2, heads=2, seed=7), rows, val, cfg, tok.pad_token_id, tmp_path)
    assert again["resumed_from"] == res["steps"] and again["steps"] == res["steps"] and again["stopped_early"]
    assert again["val_loss"] == pytest.approx(res["val_loss"])


@pytest.mark.parametrize("name", ["tensorboard", "mlflow"])
def test_a_missing_tracker_package_is_a_clear_error(name: str, tmp_path: Path) -> None:
    import importlib.util

    from potstill.errors import TrainingError
    from potstill.train.tracking import Trackers

    if importlib.util.find_spec(name) is not None:
        tr = Trackers([name], tmp_path, "t", {"learning_rate": 1e-3})
        tr.log("step", {"step": 1, "loss": 2.0, "val_loss": 1.5})
        tr.close()
        assert any(tmp_path.rglob("*"))
        return
    with pytest.raises(TrainingError, match=f"report_to lists '{name}' but the {name} package is not installed"):
        Trackers([name], tmp_path, "t", {})


def test_logits_only_from_the_first_target_give_the_same_loss_and_gradients(tok, monkeypatch) -> None:
    """The LM head skips the prompts' leading positions (logits_to_keep); loss, gradients and training agree."""
    from potstill.train import trainer

    rows = [_row(tok, q, f"Answer: {a}") for q, a in QUESTIONS]
    b = collate(rows, tok.pad_token_id)
    tail = trainer._tail(b["labels"])
    assert 0 < tail["logits_to_keep"] < b["labels"].shape[1]  # the shortest prompt's tokens are skipped
    model = tiny_llama(tok, hidden=32, layers=2, heads=2, seed=3)
    assert trainer.keeps_logits_tail(model)
    losses, grads = [], []
    for kw in ({}, tail):
        model.zero_grad()
        out = model(**model_inputs(b), **kw)
        assert out.logits.shape[1] == kw.get("logits_to_keep", b["labels"].shape[1])
        loss = _ce_sum(out.logits, b["labels"])
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)

    def trained(tail_on: bool) -> tuple[torch.Tensor, float]:
        monkeypatch.setattr(trainer, "keeps_logits_tail", lambda m: tail_on)
        m = tiny_llama(tok, hidden=32, layers=2, heads=2, seed=3)
        cfg = FitConfig(learning_rate=1e-2, batch_size=4, num_epochs=3, warmup_ratio=0.0, save_every=10**9)
        res = fit(m, rows, rows[:4], cfg, tok.pad_token_id)
        return torch.cat([p.detach().flatten() for p in m.parameters()]), res["val_loss"]

    (w_on, v_on), (w_off, v_off) = trained(True), trained(False)
    assert torch.allclose(w_on, w_off, atol=1e-5) and v_on == pytest.approx(v_off, rel=1e-5)


def test_group_by_length_batches_similar_rows_and_still_visits_every_row() -> None:
    from potstill.train.trainer import _batches

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 120, (1000,), generator=g).tolist()
    cfg = FitConfig(batch_size=8, seed=5)
    plain = _batches(1000, cfg, epoch=0)
    cfg.group_by_length = True
    grouped = _batches(1000, cfg, epoch=0, lengths=lengths)
    assert sorted(i for b in grouped for i in b) == list(range(1000)) and len(grouped) == len(plain)
    padded = [sum(max(lengths[i] for i in b) * len(b) for b in bs) for bs in (plain, grouped)]
    assert padded[1] < 0.8 * padded[0]  # far less padding than random batches
    assert grouped == _batches(1000, cfg, epoch=0, lengths=lengths)  # reproducible (resume needs it)
    assert grouped != _batches(1000, cfg, epoch=1, lengths=lengths)  # a new order each epoch
    starts = [lengths[b[0]] for b in grouped]
    assert starts != sorted(starts, reverse=True)  # the batches themselves are shuffled
    r0, r1 = (_batches(1000, cfg, epoch=0, world=2, rank=r, lengths=lengths) for r in (0, 1))
    assert sorted(i for b in r0 + r1 for i in b) == list(range(1000))
    # the two processes take the two halves of the same length-sorted global batch
    assert all(min(lengths[i] for i in a) >= max(lengths[i] for i in b) for a, b in zip(r0, r1, strict=True) if b)
