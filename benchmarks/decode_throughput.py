"""Decoding speed: potstill's engine (decode/engine.py) against transformers' model.generate(), same prompts.

    PYTHONPATH=src python benchmarks/decode_throughput.py [--prompts 1024] [--batch 256] [--big-prompts 64]

For the demo teacher (2.7M, 96 × 18) on the demo's questions and for a ~50M-parameter random Llama on random
prompts: answers/s and tokens/s of both at the same batch size (generate() gets length-sorted, left-padded batches
of ``--batch``; the engine keeps ``--batch`` slots busy), how many greedy answers match token for token (a
mismatch is reported with the top-2 logit gap where the two first differ), and p50 latency at batch 1.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from typing import Any

import torch

from potstill.decode.engine import Engine, Request
from potstill.teachers.hf import LocalModel


def cpu() -> str:
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln for ln in info.splitlines() if ln.startswith("Flags")), "")
    avx = sorted({f for f in flags.split() if f.startswith("avx")})
    return f"{model}, {torch.get_num_threads()} threads, {' '.join(avx) or 'no avx'}"


@torch.inference_mode()
def hf_generate(model: Any, prompts: list[list[int]], batch: int, max_new: int, stop: list[int], pad: int) -> list:
    out: list[list[int] | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for b in range(0, len(order), batch):
        idx = order[b : b + batch]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]) :] = 1
        g = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=stop or None,
            pad_token_id=pad,
        )
        for r, i in enumerate(idx):
            new = g[r, width:].tolist()
            cut = next((k for k, t in enumerate(new) if t in stop), None)
            out[i] = new[:cut] if cut is not None else new
    return out


@torch.inference_mode()
def top2_gap(model: Any, prompt: list[int], common: list[int]) -> float:
    logits = model(input_ids=torch.tensor([prompt + common])).logits[0, -1].float()
    top = logits.topk(2).values
    return float(top[0] - top[1])


def compare(
    name: str, model: Any, prompts: list[list[int]], batch: int, max_new: int, stop: list[int], pad: int, target: float
) -> None:
    """Engine against generate() on the same prompts and batch; prints the table and issue #13's targets:
    ``target``× the answers/s, p50 at batch 1 not worse, ≥ 99.9 % of greedy answers equal."""
    eng = Engine(model, stop, slots=batch, pad_id=pad)
    reqs = [Request(p, max_new) for p in prompts]
    eng.generate(reqs[: min(8, len(reqs))])  # warm-up: allocations, first-call overheads
    hf_generate(model, prompts[:8], 8, 4, stop, pad)
    t0 = time.perf_counter()
    ours = [o.tokens for o in eng.generate(reqs)]
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = hf_generate(model, prompts, batch, max_new, stop, pad)
    t_ref = time.perf_counter() - t0
    toks_ours, toks_ref = sum(map(len, ours)), sum(map(len, ref))
    diffs = []
    for p, a, b in zip(prompts, ours, ref, strict=True):
        if a != b:
            k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            diffs.append(top2_gap(model, p, a[:k]))
    lat_ours, lat_ref = [], []
    for p in prompts[:16]:
        t0 = time.perf_counter()
        eng.generate([Request(p, max_new)])
        lat_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        hf_generate(model, [p], 1, max_new, stop, pad)
        lat_ref.append(time.perf_counter() - t0)
    n = len(prompts)
    print(f"\n## {name}: {n} prompts, batch {batch}, max_new_tokens {max_new}")
    print("| | engine | model.generate() | ratio |")
    print("|---|---|---|---|")
    print(f"| answers/s | {n / t_ours:.1f} | {n / t_ref:.1f} | {t_ref / t_ours:.2f}× |")
    print(f"| tokens/s | {toks_ours / t_ours:.0f} | {toks_ref / t_ref:.0f} | |")
    p50o, p50r = statistics.median(lat_ours) * 1e3, statistics.median(lat_ref) * 1e3
    print(f"| p50 latency, batch 1 (ms) | {p50o:.1f} | {p50r:.1f} | {p50r / p50o:.2f}× |")
    print(f"greedy answers equal: {n - len(diffs)}/{n} ({100 * (n - len(diffs)) / n:.2f} %)", end="")
    print(f"; differing: top-2 logit gaps {[f'{g:.2e}' for g in diffs]}" if diffs else "")
    for what, ok in (
        (f"answers/s ≥ {target:g}× generate()'s: {t_ref / t_ours:.2f}×", t_ref / t_ours >= target),
        (f"p50 at batch 1 not worse: {p50o:.1f} vs {p50r:.1f} ms", p50o <= p50r),
        (f"greedy answers equal ≥ 99.9 %: {100 * (n - len(diffs)) / n:.2f} %", (n - len(diffs)) >= 0.999 * n),
    ):
        print(f"target {'met' if ok else 'NOT met'}: {what}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--big-prompts", type=int, default=64)
    ap.add_argument("--big-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"CPU: {cpu()}; torch {torch.__version__}")

    from potstill.demo import TEACHER_DIR
    from potstill.demo.task import SAMPLE_SEED, chat, problems

    lm = LocalModel.load(TEACHER_DIR, device="cpu")
    rows = problems(a.prompts, seed=SAMPLE_SEED + 1)
    prompts = [lm.tokenizer(lm.chat_text(chat(r, False)), add_special_tokens=False)["input_ids"] for r in rows]
    compare("demo teacher (2.7M)", lm.model, prompts, a.batch, 96, lm._stop_ids(), lm.tokenizer.pad_token_id, 3.0)

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=12,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    big = LlamaForCausalLM(cfg).eval()
    params = sum(p.numel() for p in big.parameters())
    g = torch.Generator().manual_seed(1)
    lens = torch.randint(16, 64, (a.big_prompts,), generator=g).tolist()
    big_prompts = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in lens]
    compare(f"random Llama ({params / 1e6:.0f}M, 512 × 12)", big, big_prompts, a.big_batch, 64, [2], 0, 1.5)


if __name__ == "__main__":
    main()
