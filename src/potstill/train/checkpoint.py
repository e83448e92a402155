"""Training checkpoints that survive kill -9: write to a temp folder, fsync'd by torch.save, then rename.

    checkpoints/step-0000050/state.pt   trainable weights (+ KD projections), optimiser, scheduler, grad scaler,
                                        RNG states, data position (epoch, batch), history, early-stopping state
    checkpoints/best/state.pt           the trainable weights with the lowest validation loss so far

Only trainable tensors are stored: with LoRA that is the adapter (the frozen base never changes), with full
fine-tuning every weight. Under DeepSpeed / FSDP the sharded state goes through accelerate's save_state.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import torch

from ..run_dir import atomic_replace_dir


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: Any, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v.to(params[n].device, params[n].dtype))


def rng_state() -> dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def latest_checkpoint(ckpt_dir: Path | None) -> Path | None:
    if ckpt_dir is None or not ckpt_dir.exists():
        return None
    done = sorted(p for p in ckpt_dir.glob("step-*") if (p / "state.pt").exists())
    return done[-1] if done else None


def save_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int, acc: Any = None) -> Path:
    """Write ``state`` as checkpoints/step-N. With ``acc`` (sharded training) every rank must call this."""
    final = ckpt_dir / f"step-{step:07d}"
    tmp = ckpt_dir / f".tmp-step-{step:07d}"
    is_main = acc is None or acc.is_main_process
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if acc is not None:
        acc.wait_for_everyone()
        acc.save_state(str(tmp / "sharded"))
        acc.wait_for_everyone()
        state = {k: v for k, v in state.items() if k not in ("model", "optimizer")}
    if is_main:
        torch.save(state, tmp / "state.pt")
        atomic_replace_dir(tmp, final)
        for old in sorted(ckpt_dir.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def save_best(ckpt_dir: Path, state: dict[str, Any]) -> None:
    tmp = ckpt_dir / ".tmp-best"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / "state.pt")
    atomic_replace_dir(tmp, ckpt_dir / "best")


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path / "state.pt", weights_only=False, map_location="cpu")
