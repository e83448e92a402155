"""Training throughput: potstill's loop vs TRL's SFTTrainer, packing, and the cost of logit distillation.

    PYTHONPATH=src python benchmarks/train_throughput.py            # ~3 minutes on 2 CPU cores
    PYTHONPATH=src python benchmarks/train_throughput.py --quick    # fewer steps

Everything runs in one process on the same tiny model and data, one thread, and prints measured numbers:
1. potstill fit() vs SFTTrainer (completion-only loss), batch 32, ~50-token rows, at two model sizes: steps/s,
   tokens/s and the ratio; and a bare PyTorch loop (pre-built batches, forward, backward, clip, AdamW) as the
   floor no trainer can beat without doing less arithmetic: potstill / bare near 1.0 means no per-step overhead;
2. packing on mixed-length rows (10..200 tokens): target tokens/s with and without packing;
3. step time of top-k logprob KD (k = 20) and dense KD (a local teacher) relative to plain SFT.
"""

from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch

from potstill.demo.tiny import build_tokenizer, tiny_llama
from potstill.train.data import collate, encode_chat
from potstill.train.kd import Distiller
from potstill.train.packing import pack
from potstill.train.trainer import FitConfig, fit

torch.set_num_threads(1)


def questions(n: int, seed: int = 0, long_tail: bool = False) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        q = f"Please add the numbers {a} and {b} and explain the carry steps."
        words = rng.randint(1, 60) if long_tail else 8
        out.append((q, f"Answer: {a + b}. " + " ".join(f"step {rng.randint(0, 9)}" for _ in range(words))))
    return out


def messages(q: str, a: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def run_potstill(model, rows, steps: int, pad_id: int, bs: int, distiller=None, precision: str = "no") -> float:
    """Seconds per optimiser step (after a short warm-up run)."""
    kw = {"learning_rate": 1e-3, "batch_size": bs, "num_epochs": 1000, "warmup_ratio": 0, "mixed_precision": precision}
    fit(model, rows, [], FitConfig(max_steps=3, **kw), pad_id, distiller=distiller)
    cfg = FitConfig(max_steps=steps, **kw)
    t0 = time.perf_counter()
    fit(model, rows, [], cfg, pad_id, distiller=distiller)
    return (time.perf_counter() - t0) / steps


def run_bare(model, rows, steps: int, pad_id: int, bs: int, precision: str = "no") -> float:
    """Seconds per step of the plainest loop: batches collated up front, HF's own loss, clip, AdamW."""
    batches = [collate(rows[i : i + bs], pad_id) for i in range(0, len(rows) - bs + 1, bs)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    t0 = 0.0
    for s in range(steps + 3):  # 3 warm-up steps
        if s == 3:
            t0 = time.perf_counter()
        b = batches[s % len(batches)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / steps


def run_trl(model, tok, pairs, steps: int, bs: int, bf16: bool | None = False) -> float:
    """Seconds per optimiser step of SFTTrainer (its own train_runtime: the loop, not the setup).

    ``bf16=None`` keeps TRL's own defaults (bf16 autocast and gradient checkpointing on).
    """
    import tempfile

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list([{"prompt": messages(q, a)[:1], "completion": messages(q, a)[1:]} for q, a in pairs])
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=bs,
            max_steps=steps,
            learning_rate=1e-3,
            logging_steps=10**6,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            dataloader_num_workers=0,
            completion_only_loss=True,
            max_length=1024,
            disable_tqdm=True,
            # TRL's default is bf16 + gradient checkpointing: compared like for like unless bf16 is None
            **({} if bf16 is None else {"bf16": bf16, "gradient_checkpointing": False}),
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
        res = trainer.train()
    return res.metrics["train_runtime"] / steps


def compare_trl(tok, size: dict, steps: int, bs: int, precision: str = "no") -> None:
    pairs = questions(bs * 8)
    rows = [encode_chat(tok, messages(q, a), 1024) for q, a in pairs]
    mean_len = sum(len(r.input_ids) for r in rows) / len(rows)
    m = tiny_llama(tok, seed=0, **size)
    n_params = sum(p.numel() for p in m.parameters())
    p_step = run_potstill(m, rows, steps, tok.pad_token_id, bs, precision=precision)
    b_step = run_bare(tiny_llama(tok, seed=0, **size), rows, steps, tok.pad_token_id, bs, precision)
    bf16 = precision == "bf16"
    run_trl(tiny_llama(tok, seed=0, **size), tok, pairs, 3, bs, bf16)  # warm-up
    t_step = run_trl(tiny_llama(tok, seed=0, **size), tok, pairs, steps, bs, bf16)
    p_tps, t_tps = mean_len * bs / p_step, mean_len * bs / t_step
    print(
        f"  {n_params / 1e6:.2f}M params, {precision if bf16 else 'fp32'}, batch {bs}, {mean_len:.0f}-token rows: "
        f"potstill {1 / p_step:.1f} steps/s "
        f"({p_tps:,.0f} tok/s) | TRL SFTTrainer {1 / t_step:.1f} steps/s ({t_tps:,.0f} tok/s) | "
        f"ratio {t_step / p_step:.2f}x | bare loop {1 / b_step:.1f} steps/s (potstill / bare {b_step / p_step:.2f}x)"
    )


def compare_packing(tok, steps: int, bs: int, max_len: int) -> None:
    rows = [encode_chat(tok, messages(q, a), max_len) for q, a in questions(bs * 12, seed=1, long_tail=True)]
    lens = sorted(len(r.input_ids) for r in rows)
    targets = sum(r.n_target for r in rows)
    out = {}
    for name, rs in (("unpacked", rows), ("packed", pack(rows, max_len))):
        m = tiny_llama(tok, seed=0, hidden=96, layers=2, heads=4)
        s = run_potstill(m, rs, steps, tok.pad_token_id, bs if name == "unpacked" else max(1, bs // 4))
        n_steps_epoch = len(rs) / (bs if name == "unpacked" else max(1, bs // 4))
        out[name] = targets / n_steps_epoch / s  # target tokens learned per second
    print(
        f"  rows {lens[0]}..{lens[-1]} tokens (median {lens[len(lens) // 2]}), packed into {max_len}-token rows: "
        f"unpacked {out['unpacked']:,.0f} | packed {out['packed']:,.0f} target tok/s | "
        f"ratio {out['packed'] / out['unpacked']:.2f}x"
    )


def compare_kd(tok, steps: int, bs: int) -> None:
    from potstill.config import KDSpec

    pairs = questions(bs * 8, seed=2)
    rows = [encode_chat(tok, messages(q, a), 1024) for q, a in pairs]
    g = torch.Generator().manual_seed(0)
    k = 20
    lp_rows = []
    for r in rows:
        start = next(i for i, x in enumerate(r.labels) if x != -100)
        n = len(r.input_ids) - start
        r2 = type(r)(r.input_ids, r.labels)
        r2.top_ids = torch.randint(0, len(tok), (n, k), generator=g).tolist()
        r2.top_lps = torch.randn(n, k, generator=g).log_softmax(-1).tolist()
        r2.top_start = start
        lp_rows.append(r2)
    size = {"hidden": 96, "layers": 2, "heads": 4}
    base = run_potstill(tiny_llama(tok, seed=0, **size), rows, steps, tok.pad_token_id, bs)
    topk_d = Distiller(KDSpec(source="logprobs"), 1.0)
    topk = run_potstill(tiny_llama(tok, seed=0, **size), lp_rows, steps, tok.pad_token_id, bs, topk_d)
    teacher = tiny_llama(tok, seed=3, hidden=192, layers=4, heads=4)
    dense_d = Distiller(KDSpec(source="teacher"), 1.0, teacher=teacher)
    dense = run_potstill(tiny_llama(tok, seed=0, **size), rows, steps, tok.pad_token_id, bs, dense_d)
    print(
        f"  step time vs plain SFT (batch {bs}): top-{k} logprob KD {topk / base:.2f}x | "
        f"dense KD with a {sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M teacher {dense / base:.2f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    steps = 10 if args.quick else 30
    texts = [f"{q} {a}" for q, a in questions(400, long_tail=True)]
    tok = build_tokenizer(texts, vocab_size=400)
    print("1. potstill fit() vs TRL SFTTrainer (same model, data, batch; one thread)")
    compare_trl(tok, {"hidden": 96, "layers": 2, "heads": 4}, steps, 32)
    pairs = questions(32 * 8)
    run_trl(tiny_llama(tok, seed=0, hidden=96, layers=2, heads=4), tok, pairs, 3, 32, None)  # warm-up
    d_step = run_trl(tiny_llama(tok, seed=0, hidden=96, layers=2, heads=4), tok, pairs, steps, 32, None)
    print(f"  the same, SFTTrainer with its defaults (bf16 autocast, gradient checkpointing): {1 / d_step:.1f} steps/s")
    compare_trl(tok, {"hidden": 256, "layers": 4, "heads": 4}, max(5, steps // 3), 32)
    compare_trl(tok, {"hidden": 256, "layers": 4, "heads": 4}, max(5, steps // 3), 32, "bf16")
    print("2. packing on mixed-length rows")
    compare_packing(tok, steps, 32, 512)
    compare_packing(tok, steps, 32, 256)  # narrower packed rows: less attention per token
    print("3. logit distillation overhead")
    compare_kd(tok, steps, 32)


if __name__ == "__main__":
    main()
