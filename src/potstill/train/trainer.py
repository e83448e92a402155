"""SFT of the student on the kept teacher outputs: a plain PyTorch loop with resumable checkpoints.

    run_train(spec, run_dir)      # the pipeline stage: data/train.jsonl -> student/ (HF model folder)
    fit(model, rows, val_rows, cfg, ckpt_dir=..., log=...)   # the loop itself, reused by the demo's teacher

Per optimiser step the loss is the mean over every target token of the step's micro-batches (correct under
gradient accumulation). A checkpoint (model, optimiser, scheduler, RNG states, data position) is written every
``save_every`` steps into checkpoints/step-N via a temp folder + rename; after kill -9 the next run resumes
from the newest one and the batches it sees are the ones an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingError
from .data import EncodedRow, collate

Log = Callable[..., None]


@dataclass
class FitConfig:
    learning_rate: float = 2e-5
    batch_size: int = 2
    num_epochs: float = 3
    max_steps: int | None = None
    warmup_ratio: float = 0.05
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    eval_every: int | None = None
    save_every: int = 50
    seed: int = 42
    keep_checkpoints: int = 2

    def total_steps(self, n_rows: int) -> int:
        per_epoch = math.ceil(n_rows / (self.batch_size * self.grad_accum_steps))
        total = max(1, math.ceil(per_epoch * self.num_epochs))
        return min(total, self.max_steps) if self.max_steps else total


def lr_lambda(cfg: FitConfig, total: int) -> Callable[[int], float]:
    warm = int(cfg.warmup_ratio * total)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = (step - warm) / max(1, total - warm)
        if cfg.lr_schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _batches(n: int, cfg: FitConfig, epoch: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(cfg.seed + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    return [perm[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]


def _loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed token cross-entropy over target tokens, and their count."""
    dev = next(model.parameters()).device
    batch = {k: v.to(dev) for k, v in batch.items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shift_logits = logits[:, :-1].float()
    shift_labels = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    return loss, int((shift_labels != -100).sum())


@torch.no_grad()
def evaluate_loss(model: Any, rows: list[EncodedRow], pad_id: int, batch_size: int = 16) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        loss, n = _loss(model, collate(rows[i : i + batch_size], pad_id))
        total += float(loss)
        count += n
    model.train(was_training)
    return total / max(count, 1)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])


def latest_checkpoint(ckpt_dir: Path | None) -> Path | None:
    if ckpt_dir is None or not ckpt_dir.exists():
        return None
    done = sorted(p for p in ckpt_dir.glob("step-*") if (p / "state.pt").exists())
    return done[-1] if done else None


def _save_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    final = ckpt_dir / f"step-{step:07d}"
    tmp = ckpt_dir / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(ckpt_dir.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def fit(
    model: Any,
    rows: list[EncodedRow],
    val_rows: list[EncodedRow],
    cfg: FitConfig,
    pad_id: int,
    ckpt_dir: Path | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place. Returns {"steps", "train_loss", "val_loss", "resumed_from", "history"}."""
    if not rows:
        raise TrainingError("no training rows: every teacher output was filtered out (see data/rejected.jsonl)")
    log = log or (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
    )
    total = cfg.total_steps(len(rows))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total))
    step, epoch, pos = 0, 0, 0
    history: list[dict[str, Any]] = []
    resumed_from = None
    if (ck := latest_checkpoint(ckpt_dir)) is not None:
        st = torch.load(ck / "state.pt", weights_only=False)
        model.load_state_dict(st["model"], strict=False)
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        _set_rng_state(st["rng"])
        step, epoch, pos, history = st["step"], st["epoch"], st["pos"], st["history"]
        resumed_from = step
        log("resume", step=step, checkpoint=ck.name)
    t0 = time.perf_counter()
    train_loss = float("nan")
    while step < total:
        batches = _batches(len(rows), cfg, epoch)
        while pos < len(batches) and step < total:
            group = batches[pos : pos + cfg.grad_accum_steps]
            parts = [_loss(model, collate([rows[i] for i in b], pad_id)) for b in group]
            n_tok = max(1, sum(n for _, n in parts))
            loss = sum(lss for lss, _ in parts) / n_tok
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            pos += len(group)
            train_loss = loss.item()
            rec = {"step": step, "epoch": epoch, "loss": round(train_loss, 5), "lr": sched.get_last_lr()[0]}
            end_of_epoch = pos >= len(batches)
            if val_rows and (end_of_epoch or (cfg.eval_every and step % cfg.eval_every == 0) or step == total):
                rec["val_loss"] = round(evaluate_loss(model, val_rows, pad_id), 5)
            history.append(rec)
            log("step", **rec, elapsed_s=round(time.perf_counter() - t0, 2))
            if ckpt_dir is not None and (step % cfg.save_every == 0 or step == total):
                state = {
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng": _rng_state(),
                    "step": step,
                    "epoch": epoch + (1 if end_of_epoch else 0),
                    "pos": 0 if end_of_epoch else pos,
                    "history": history,
                }
                path = _save_checkpoint(ckpt_dir, step, state, cfg.keep_checkpoints)
                log("checkpoint", step=step, path=path.name)
        if pos >= len(batches):
            epoch, pos = epoch + 1, 0
    val_loss = next((h["val_loss"] for h in reversed(history) if "val_loss" in h), None)
    model.eval()
    return {
        "steps": step,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "resumed_from": resumed_from,
        "history": history,
    }
