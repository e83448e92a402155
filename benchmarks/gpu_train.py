"""GPU training figures for the README: a ~100M-parameter student, 50 steps in bf16, LoRA and full fine-tuning.

    PYTHONPATH=src python benchmarks/gpu_train.py              # needs one CUDA GPU; ~2 minutes
    PYTHONPATH=src python benchmarks/gpu_train.py --steps 20   # shorter

Random-init Llama (hidden 768, 12 layers, 12 heads, vocab 32,000: ~110M parameters), batch 16 of 256-token rows,
potstill's fit() with mixed_precision bf16. Prints tokens/s (after 5 warm-up steps) and peak GPU memory per mode.
Not run in CI (no GPU there); written ready to run.
"""

from __future__ import annotations

import argparse
import time

import torch

from potstill.config import LoraSpec
from potstill.train.data import IGNORE, EncodedRow
from potstill.train.stage import with_lora
from potstill.train.trainer import FitConfig, fit


def student() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).cuda()


def rows(n: int, length: int) -> list[EncodedRow]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(10, 32000, (length,), generator=g).tolist()
        out.append(EncodedRow(ids, [IGNORE] * (length // 2) + ids[length // 2 :]))  # loss on the second half
    return out


def measure(mode: str, steps: int, bs: int, length: int) -> None:
    model = student()
    if mode == "lora":
        model = with_lora(model, LoraSpec(r=16, alpha=32, dropout=0.0))
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    data = rows(bs * 8, length)
    kw = {"learning_rate": 1e-4, "batch_size": bs, "num_epochs": 1000, "warmup_ratio": 0, "mixed_precision": "bf16"}
    fit(model, data, [], FitConfig(max_steps=5, **kw), pad_id=0)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fit(model, data, [], FitConfig(max_steps=steps, **kw), pad_id=0)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(
        f"{mode:5s} {n_params / 1e6:.0f}M params ({n_train / 1e6:.1f}M trainable), bf16, batch {bs}×{length}: "
        f"{steps * bs * length / dt:,.0f} tokens/s, {dt / steps * 1000:.0f} ms/step, peak GPU memory {peak:.2f} GiB"
    )
    del model
    torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=256)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_train.py needs a CUDA GPU")
    print(torch.cuda.get_device_name(0))
    for mode in ("full", "lora"):
        measure(mode, args.steps, args.batch, args.length)


if __name__ == "__main__":
    main()
