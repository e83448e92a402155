"""Train the demo's teacher from scratch on labelled word problems, reproducibly from a seed.

    python -m potstill.demo.train_teacher --out src/potstill/demo/teacher   # the shipped recipe (defaults)

Writes a Hugging Face folder (safetensors + tokenizer) and teacher_card.json with the recipe and the accuracy
measured on a fixed sample of held-out problems (seed 999). The same function trains the demo's students'
tokenizer: every model in the demo shares this tokenizer (digits are single tokens).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .task import SAMPLE_SEED, SYSTEM, chat, problems


def training_rows(rows: int, seed: int) -> list[dict[str, Any]]:
    """The labelled problems the teacher of recipe (rows, seed) learned from; the demo keeps them out of its splits."""
    held = {str(r["prompt"]) for r in problems(2000, seed=SAMPLE_SEED)}
    return problems(rows, seed=seed + 10, exclude=held)


def accuracy(model_dir: Path | str, rows: list[dict[str, Any]], batch_size: int = 128) -> float:
    """Share of ``rows`` whose parsed answer equals the true value (greedy decoding)."""
    from ..data.tasks import parse_math, to_number
    from ..teachers.hf import LocalModel

    lm = LocalModel.load(model_dir, device="cpu")
    outs = lm.generate([chat(r, False) for r in rows], max_new_tokens=128, batch_size=batch_size)
    ok = 0
    for r, o in zip(rows, outs, strict=True):
        got = parse_math(o.text)
        ok += got is not None and to_number(got) == float(r["value"])  # type: ignore[arg-type]
    return ok / len(rows)


def train_teacher(
    out: Path,
    hidden: int = 96,
    layers: int = 18,
    heads: int = 4,
    rows: int = 96_000,
    steps: int = 3000,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    precision: str = "no",
    checkpoints: Path | None = None,
    log: Any = print,
    schedule: str = "cosine",
    packing: int = 0,
    weights: str = "bfloat16",
) -> dict[str, Any]:
    """``packing``: pack answers into rows of this many tokens (0: one answer a row); ``weights``: the saved
    dtype (bfloat16 halves the file; a small model keeps its accuracy only in float32)."""
    import torch

    from ..train.data import encode_chat
    from ..train.trainer import FitConfig, fit
    from .tiny import build_tokenizer, save_model, tiny_llama

    torch.manual_seed(seed)
    held = {str(r["prompt"]) for r in problems(2000, seed=SAMPLE_SEED)}
    data = training_rows(rows, seed)
    tok = build_tokenizer([f"{SYSTEM} {r['prompt']} {r['answer']}" for r in data[:5000]], vocab_size=1024)
    model = tiny_llama(tok, hidden=hidden, layers=layers, heads=heads, max_positions=256, seed=seed)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"teacher: {n_params / 1e6:.2f}M parameters, {len(data)} labelled rows, {steps} steps")
    enc = [encode_chat(tok, chat(r), 192) for r in data]
    if packing:
        from ..train.packing import pack

        enc = pack(enc, packing)
    val = [encode_chat(tok, chat(r), 192) for r in problems(256, seed=seed + 20, exclude=held)]
    cfg = FitConfig(
        learning_rate=lr,
        batch_size=batch_size,
        num_epochs=1000,
        max_steps=steps,
        warmup_ratio=0.03 if schedule == "cosine" else 0.05,
        lr_schedule=schedule,
        weight_decay=0.1,
        eval_every=max(1, steps // 10),
        save_every=200 if checkpoints else 10**9,
        seed=seed,
        mixed_precision=precision,
    )
    t0 = time.time()
    res = fit(
        model,
        enc,
        val,
        cfg,
        tok.pad_token_id,
        ckpt_dir=checkpoints,
        log=lambda ev, **kw: (
            log(f"step {kw['step']} loss {kw['loss']} val {kw.get('val_loss', '')}")
            if ev == "step" and (kw["step"] % 200 == 0 or "val_loss" in kw)
            else None
        ),
    )
    model = model.to(getattr(torch, weights))  # bfloat16 halves the checkpoint; evaluation loads it in float32
    save_model(model, tok, out)
    sample = problems(500, seed=SAMPLE_SEED)
    acc = accuracy(out, sample)
    card = {
        "parameters": n_params,
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "rows": rows,
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": lr,
        "seed": seed,
        "precision": precision,
        **({"schedule": schedule} if schedule != "cosine" else {}),
        **({"packing": packing} if packing else {}),
        **({"weights": weights} if weights != "bfloat16" else {}),
        "train_seconds": round(time.time() - t0, 1),
        "val_loss": res["val_loss"],
        "sample_seed": SAMPLE_SEED,
        "sample_size": len(sample),
        "sample_accuracy": acc,
        "system_prompt": SYSTEM,
    }
    (out / "teacher_card.json").write_text(json.dumps(card, indent=2) + "\n")
    log(f"teacher: accuracy {acc:.1%} on {len(sample)} held-out problems; saved to {out}")
    return card


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--hidden", type=int, default=96)
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--rows", type=int, default=96_000)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--precision", default="no", help="no | bf16 (autocast; slower on this demo's 2-core CPU)")
    ap.add_argument("--checkpoints", type=Path, default=None, help="resumable checkpoints every 200 steps here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--schedule", default="cosine", help="cosine | linear (the demo students' recipe)")
    ap.add_argument("--packing", type=int, default=0, help="pack answers into rows of N tokens (0: one a row)")
    ap.add_argument("--weights", default="bfloat16", help="saved dtype: bfloat16 | float32 (small models)")
    a = ap.parse_args()
    train_teacher(
        a.out,
        a.hidden,
        a.layers,
        a.heads,
        a.rows,
        a.steps,
        a.batch_size,
        a.lr,
        a.seed,
        a.precision,
        a.checkpoints,
        schedule=a.schedule,
        packing=a.packing,
        weights=a.weights,
    )


if __name__ == "__main__":
    main()
