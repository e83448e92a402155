"""Training checkpoints that survive kill -9: written to a temp folder, fsync'd, then renamed into place.

    checkpoints/step-0000050/state.pt   trainable weights (+ KD projections), optimiser, scheduler, grad scaler,
                                        RNG states, data position (epoch, batch), history, early-stopping state
    checkpoints/step-0000050/meta.json  {"key": ..., "step": 50}: which training wrote it
    checkpoints/best/                   the trainable weights with the lowest validation loss so far (+ meta.json)

A checkpoint belongs to the training that wrote it: its ``key`` (the train stage's fingerprint and attempt, see
train/stage.py). Only checkpoints with the caller's key are resumed from; the others are stale and are removed
once the new training has written its first checkpoint, so a crash before that loses nothing. When the newest
checkpoint cannot be read (a torn or truncated file), loading falls back to the one before it.

Only trainable tensors are stored: with LoRA that is the adapter (the frozen base never changes), with full
fine-tuning every weight. Under DeepSpeed / FSDP the sharded state goes through accelerate's save_state.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..run_dir import atomic_replace_dir, fsync_dir, recover_dir

META = "meta.json"


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


def key_of(path: Path) -> str | None:
    """The key a checkpoint folder was written under; None for an unreadable or pre-key checkpoint."""
    try:
        return str(json.loads((path / META).read_text())["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checkpoints(ckpt_dir: Path | None, key: str) -> list[Path]:
    """This training's step checkpoints, newest first."""
    if ckpt_dir is None or not ckpt_dir.exists():
        return []
    found = [p for p in ckpt_dir.glob("step-*") if (p / "state.pt").exists() and key_of(p) == key]
    return sorted(found, reverse=True)


def latest_checkpoint(ckpt_dir: Path | None, key: str) -> Path | None:
    found = checkpoints(ckpt_dir, key)
    return found[0] if found else None


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path / "state.pt", weights_only=False, map_location="cpu")


def load_latest(
    ckpt_dir: Path | None, key: str, log: Callable[..., None] | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of this training and its state; an unreadable one is reported and skipped."""
    if ckpt_dir is not None:
        recover_dir(ckpt_dir / "best")
    for path in checkpoints(ckpt_dir, key):
        try:
            return path, load_state(path)
        except Exception as exc:  # a torn file: torch raises RuntimeError, EOFError, UnpicklingError, ...
            if log is not None:
                log("checkpoint_unreadable", checkpoint=path.name, error=f"{type(exc).__name__}: {exc}"[:300])
    return None


def _write(tmp: Path, state: dict[str, Any], key: str, step: int | None) -> None:
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    with open(tmp / META, "w", encoding="utf-8") as f:
        json.dump({"key": key, "step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)


def _drop_stale(ckpt_dir: Path, key: str, keep: int) -> None:
    """Remove other trainings' checkpoints, then this training's beyond the newest ``keep``."""
    for p in [*ckpt_dir.glob("step-*"), ckpt_dir / "best"]:
        if p.is_dir() and key_of(p) != key:
            shutil.rmtree(p, ignore_errors=True)
    for old in checkpoints(ckpt_dir, key)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int, key: str, acc: Any = None) -> Path:
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
        _write(tmp, state, key, step)
        atomic_replace_dir(tmp, final)
        _drop_stale(ckpt_dir, key, keep)
    return final


def save_best(ckpt_dir: Path, state: dict[str, Any], key: str) -> None:
    tmp = ckpt_dir / ".tmp-best"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write(tmp, state, key, state.get("step"))
    atomic_replace_dir(tmp, ckpt_dir / "best")


def load_best(ckpt_dir: Path | None, key: str) -> dict[str, Any] | None:
    """This training's best weights, or None (none saved, another training's, or unreadable)."""
    if ckpt_dir is None:
        return None
    best = ckpt_dir / "best"
    recover_dir(best)
    if key_of(best) != key:
        return None
    try:
        return load_state(best)
    except Exception:  # a torn file: the final weights stand
        return None
