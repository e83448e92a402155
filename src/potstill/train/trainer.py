"""The training loop: SFT on the teacher's text, optionally with logit distillation and hidden-state matching.

    fit(model, rows, val_rows, cfg, pad_id, ckpt_dir=..., log=..., distiller=..., dist=...)

A plain PyTorch loop (measured faster than TRL's SFTTrainer on small models: benchmarks/train_throughput.py):
AdamW, warm-up then cosine / linear / constant, gradient accumulation, clipping, autocast (bf16 / fp16 with a
grad scaler). Per optimiser step each loss is a mean over its positions across every micro-batch (and process)
of the step, so accumulation and process count do not change the result:
    loss = (1 - alpha) * CE/N_target + alpha * KD/N_kd + weight * HIDDEN/N_tokens
Validation loss (cross-entropy on the validation rows) every ``eval_every`` steps and at each epoch's end;
early stopping after ``patience`` validations without improvement; the best weights are restored at the end.
``on_validation(step, total_steps, val_loss, model)`` sees each validation (potstill tune scores the student
there and may raise to stop a bad trial); it may return the validation *metric* (higher is better).
``until_plateau`` (max_steps: auto) trains with no step horizon (total_steps is 0 for the hook; the learning rate
stays at its peak after a warm-up of warmup_ratio of an epoch) until that metric has not improved for
``early_stopping_patience`` validations (default 3), and keeps the weights of its best. ``max_seconds`` stops any
training once its training time (summed over resumes) reaches it, after a last validation. The result's
``stop_reason`` says why training ended: steps | early_stop | plateau | time.
Checkpoints (checkpoint.py) every ``save_every`` steps and at the end, each under ``ckpt_key``; after kill -9
the next run with the same key resumes from the newest readable one and sees the batches an uninterrupted run
would have seen. A different key never resumes: it trains from the model as given.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingError
from .checkpoint import (
    load_best,
    load_latest,
    load_trainable,
    rng_state,
    save_best,
    save_checkpoint,
    set_rng_state,
    trainable_state,
)
from .data import IGNORE, Collator, EncodedRow, collate
from .dist import Dist
from .kd import Distiller, model_inputs
from .on_policy import OnPolicy

Log = Callable[..., None]
OnValidation = Callable[[int, int, float, Any], "float | None"]
UNBOUNDED = 10**12  # the step horizon of a training that runs until a plateau (until_plateau)
PLATEAU_PATIENCE = 3  # validations without a better metric that end an until_plateau training
clock = time.perf_counter  # the training's clock (time caps); tests replace it


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
    mixed_precision: str = "no"  # no | bf16 | fp16 (resolved: see stage.resolve_precision)
    group_by_length: bool = False  # batches of similar-length rows (less padding); see _batches
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0
    restore_best: bool = True
    until_plateau: bool = False  # max_steps: auto (see the module's docstring)
    max_seconds: float | None = None  # stop once the training time reaches this

    def epoch_steps(self, n_rows: int, world: int = 1) -> int:
        return math.ceil(n_rows / (self.batch_size * world * self.grad_accum_steps))

    def total_steps(self, n_rows: int, world: int = 1) -> int:
        if self.until_plateau:
            return UNBOUNDED
        per_epoch = self.epoch_steps(n_rows, world)
        total = max(1, math.ceil(per_epoch * self.num_epochs))
        return min(total, self.max_steps) if self.max_steps else total


def lr_lambda(
    cfg: FitConfig, total: int, epoch_steps: int = 0, time_share: list[float] | None = None
) -> Callable[[int], float]:
    """The learning-rate multiplier per step; until_plateau: warm-up over warmup_ratio of an epoch, then 1.

    ``time_share`` (a one-item list the loop updates: the share of ``max_seconds`` spent): the decay follows
    whichever ends first, the steps or the time cap, so a training the clock stops has finished its schedule
    instead of stopping near its peak rate."""
    warm = int(cfg.warmup_ratio * (epoch_steps if cfg.until_plateau else total))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if cfg.lr_schedule == "constant" or cfg.until_plateau:
            return 1.0
        progress = max((step - warm) / max(1, total - warm), time_share[0] if time_share else 0.0)
        if cfg.lr_schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _batches(
    n: int, cfg: FitConfig, epoch: int, world: int = 1, rank: int = 0, lengths: list[int] | None = None
) -> list[list[int]]:
    """This process's share of each global batch (batch_size × world rows, one shuffle per epoch).

    With ``lengths`` (group_by_length), the shuffled rows are sorted by length within mega-batches of 50 global
    batches, cut into batches and the batches shuffled: rows of a batch have similar lengths, so less padding is
    computed, while each epoch still visits the rows in a new random order."""
    g = torch.Generator().manual_seed(cfg.seed + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    size = cfg.batch_size * world
    if lengths is not None:
        mega = 50 * size
        perm = [i for m in range(0, n, mega) for i in sorted(perm[m : m + mega], key=lambda i: -lengths[i])]
    chunks = [perm[i : i + size] for i in range(0, n, size)]
    if lengths is not None:
        chunks = [chunks[j] for j in torch.randperm(len(chunks), generator=g).tolist()]
    out = []
    for chunk in chunks:
        per = math.ceil(len(chunk) / world)
        out.append(chunk[rank * per : (rank + 1) * per])
    return out


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy; ``logits`` may cover only the last positions (see ``_tail``)."""
    shift = logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        shift.reshape(-1, shift.size(-1)),
        labels[:, labels.shape[1] - logits.shape[1] + 1 :].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def keeps_logits_tail(model: Any) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (recent transformers causal LMs, under PEFT/DDP too)."""
    m = getattr(model, "module", model)
    m = m.get_base_model() if hasattr(m, "get_base_model") else m
    return "logits_to_keep" in inspect.signature(m.forward).parameters


def _tail(labels: torch.Tensor) -> dict[str, int]:
    """Logits only from the first position that predicts a target token on: the LM head (a third of a small
    model's arithmetic, and the biggest activation of a large-vocabulary one) skips the prompts' leading tokens.
    Computed on the host batch: no device sync."""
    hit = (labels[:, 1:] != IGNORE).any(0).nonzero()
    first = int(hit[0]) if len(hit) else 0
    return {"logits_to_keep": labels.shape[1] - first} if first > 0 else {}


def _to(batch: dict[str, torch.Tensor], dev: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(dev, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def evaluate_loss(
    model: Any, rows: list[EncodedRow], pad_id: int, batch_size: int = 16, dist: Dist | None = None
) -> float:
    """Mean cross-entropy per target token over ``rows`` (split across processes, summed back)."""
    dist = dist or Dist()
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    mine = rows[dist.rank :: dist.world]
    tail_ok = keeps_logits_tail(model)
    acc = torch.zeros(2, dtype=torch.float64, device=dev)
    for i in range(0, len(mine), batch_size):
        cpu = collate(mine[i : i + batch_size], pad_id)
        acc[1] += int((cpu["labels"][:, 1:] != IGNORE).sum())  # counted on the host: no device sync
        tail = _tail(cpu["labels"]) if tail_ok else {}
        b = _to(cpu, dev)
        logits = model(**model_inputs(b), **tail).logits
        acc[0] += _ce_sum(logits, b["labels"]).double()
    acc = dist.all_sum(acc)
    model.train(was_training)
    return float(acc[0] / acc[1].clamp(min=1))


def _agreed(dist: Dist, flag: bool) -> bool:
    """``flag`` on any process (each process's clock differs; they must stop at the same step)."""
    return flag if dist.world == 1 else bool(dist.all_sum(torch.tensor([float(flag)]))[0] > 0)


class _Stopper:
    """Best validation loss so far and validations since; stops after ``patience`` without improvement."""

    def __init__(self, cfg: FitConfig, st: dict[str, Any] | None = None, patience: int | None = None) -> None:
        self.cfg = cfg
        self.patience = cfg.early_stopping_patience if patience is None else patience
        st = st or {}
        self.best: float | None = st.get("best_val")
        self.best_step: int | None = st.get("best_step")
        self.bad: int = st.get("bad_evals", 0)

    def update(self, val: float, step: int) -> bool:
        """Record ``val``; True when it is a new best."""
        if self.best is None or val < self.best - self.cfg.early_stopping_min_delta:
            self.best, self.best_step, self.bad = val, step, 0
            return True
        self.bad += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.bad >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best_val": self.best, "best_step": self.best_step, "bad_evals": self.bad}


def fit(
    model: Any,
    rows: list[EncodedRow],
    val_rows: list[EncodedRow],
    cfg: FitConfig,
    pad_id: int,
    ckpt_dir: Path | None = None,
    log: Log | None = None,
    distiller: Distiller | None = None,
    dist: Dist | None = None,
    ckpt_key: str = "",
    on_validation: OnValidation | None = None,
    on_policy: OnPolicy | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place (the best weights when there is validation data).

    Returns {"steps", "train_loss", "val_loss", "best_step", "stopped_early", "resumed_from", "history",
    "stop_reason", "metric" (until_plateau: the best validation metric), "train_seconds"}.
    """
    if not rows:
        raise TrainingError("no training rows: every teacher output was filtered out (see data/rejected.jsonl)")
    plateau = cfg.until_plateau
    if plateau and not val_rows:
        raise TrainingError("max_steps: auto stops when the validation metric stops improving; no validation rows")
    log = log or (lambda *a, **k: None)
    dist = dist or Dist()
    if on_policy is not None and dist.sharded:
        raise TrainingError("on-policy sampling under DeepSpeed / FSDP is not supported yet: train with DDP")
    writer = dist.rank == 0
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model.train()
    extra = distiller.proj if distiller is not None else torch.nn.ModuleDict()
    dev = dist.device or next(model.parameters()).device
    extra.to(dev)
    named = [(n, p) for n, p in [*model.named_parameters(), *extra.named_parameters()] if p.requires_grad]
    params = [p for _, p in named]
    opt = torch.optim.AdamW(
        [
            {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=cfg.learning_rate,
    )
    total = cfg.total_steps(len(rows), dist.world)
    share = [0.0]  # the share of max_seconds spent, before each scheduler step (lr_lambda)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(cfg, total, cfg.epoch_steps(len(rows), dist.world), share if cfg.max_seconds else None)
    )
    scaler = torch.amp.GradScaler(dev.type) if cfg.mixed_precision == "fp16" else None
    model, opt = dist.prepare(model, opt)
    step, epoch, pos = 0, 0, 0
    history: list[dict[str, Any]] = []
    resumed_from, stopped, reason, spent = None, False, None, 0.0
    patience = (cfg.early_stopping_patience or PLATEAU_PATIENCE) if plateau else None
    losses = _Stopper(cfg)  # the best validation loss; it decides the best weights and early stopping unless plateau
    stopper = _Stopper(cfg, patience=patience) if plateau else losses
    if (found := load_latest(ckpt_dir, ckpt_key, log)) is not None:
        ck, st = found
        if dist.sharded:
            dist.acc.load_state(str(ck / "sharded"))
        else:
            load_trainable(dist.unwrap(model), st["model"])
            opt.load_state_dict(st["optimizer"])
        extra.load_state_dict(st["extra"])
        sched.load_state_dict(st["scheduler"])
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        set_rng_state(st["rng"])
        step, epoch, pos, history = st["step"], st["epoch"], st["pos"], st["history"]
        losses, stopped = _Stopper(cfg, st), st.get("stopped", False)
        stopper = _Stopper(cfg, st.get("plateau"), patience=patience) if plateau else losses
        reason, spent = st.get("stop_reason"), float(st.get("elapsed_s", 0.0))
        resumed_from = step
        log("resume", step=step, checkpoint=ck.name)
    alpha = distiller.kd.alpha if distiller is not None and distiller.kd is not None else 0.0
    h_weight = distiller.hidden.weight if distiller is not None and distiller.hidden is not None else 0.0
    want_hidden = distiller is not None and distiller.needs_hidden_states
    tail_ok = distiller is None and keeps_logits_tail(model)  # KD and hidden-state losses need every position
    student_tail = on_policy is not None and keeps_logits_tail(model)
    best_mem: dict[str, torch.Tensor] | None = None
    t0 = clock()
    paused = 0.0  # seconds in validation, metric checks and checkpoint writes: not counted by the time cap

    def trained() -> float:
        """The training's own seconds, summed over resumes: what ``max_seconds`` caps."""
        return spent + clock() - t0 - paused

    train_loss = float("nan")
    batch_of = Collator(rows, pad_id)  # each row's tensors built once, not every epoch
    lengths = [len(r.input_ids) for r in rows] if cfg.group_by_length else None
    while step < total and not stopped:
        batches = _batches(len(rows), cfg, epoch, dist.world, dist.rank, lengths)
        while pos < len(batches) and step < total and not stopped:
            group = batches[pos : pos + cfg.grad_accum_steps]
            mode = on_policy.mode(step) if on_policy is not None else None  # sampled completions (on_policy.py)
            if mode is None:
                micro = [batch_of(b or batches[0][:1]) for b in group]
            else:
                assert on_policy is not None
                micro = on_policy.batches(dist.unwrap(model), [b or batches[0][:1] for b in group], rows, step, mode)
            a, hw = (alpha, h_weight) if mode is None else (1.0, 0.0)  # sampled steps: the divergence alone
            weights = [1.0 if b else 0.0 for b in group]  # an empty share (uneven last batch) keeps DDP in step
            n = torch.zeros(3)
            for w, b in zip(weights, micro, strict=True):
                if mode is not None:
                    assert on_policy is not None
                    n += w * torch.tensor([0.0, float(on_policy.count(b)), 0.0])
                    continue
                c = distiller.counts(b) if distiller is not None else {}
                n += w * torch.tensor([float((b["labels"][:, 1:] != IGNORE).sum()), c.get("kd", 0), c.get("hidden", 0)])
            n0, n1, n2 = dist.all_sum(n).clamp(min=1).tolist()  # counted on the host: no device sync
            parts = torch.zeros(3, device=dev)
            for i, (w, b) in enumerate(zip(weights, micro, strict=True)):
                tail = _tail(b["labels"]) if tail_ok or (mode is not None and student_tail) else {}
                b = _to(b, dev)
                with dist.no_sync(model, skip=i < len(micro) - 1), _autocast(dev, cfg.mixed_precision):
                    out = model(**model_inputs(b), output_hidden_states=want_hidden and mode is None, **tail)
                    if mode is None:
                        ce = _ce_sum(out.logits, b["labels"])
                        extra_losses = distiller.step_losses(out, b) if distiller is not None else {}
                    else:
                        assert on_policy is not None
                        ce, extra_losses = out.logits.new_zeros(()), {"kd": on_policy.loss_sum(out, b, tail)}
                zero = ce.new_zeros(())
                kd = extra_losses.get("kd", zero)
                hid = extra_losses.get("hidden", zero)
                loss = (1 - a) * ce / n0 + a * kd / n1 + hw * hid / n2
                loss = loss * (w * dist.world)  # DDP averages gradients over processes
                dist.backward(scaler.scale(loss) if scaler is not None else loss)
                parts += w * torch.stack([ce.detach() / n0, kd.detach() / n1, hid.detach() / n2])
            if scaler is not None:
                scaler.unscale_(opt)
            if cfg.max_grad_norm:
                dist.clip(model, params, cfg.max_grad_norm)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if cfg.max_seconds:  # the share after this step; the processes' clocks differ: their mean
                mine = torch.tensor([min(1.0, trained() / cfg.max_seconds)])
                share[0] = float(mine[0] if dist.world == 1 else dist.all_sum(mine)[0] / dist.world)
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            pos += len(group)
            ce_v, kd_v, hid_v = dist.all_sum(parts).tolist()
            train_loss = (1 - a) * ce_v + a * kd_v + hw * hid_v
            rec: dict[str, Any] = {
                "step": step,
                "epoch": epoch,
                "loss": round(train_loss, 5),
                "lr": sched.get_last_lr()[0],
            }
            if distiller is not None and mode is None:
                rec.update(ce=round(ce_v, 5), **({"kd": round(kd_v, 5)} if distiller.kd else {}))
                rec.update({"hidden": round(hid_v, 5)} if distiller.hidden else {})
            if on_policy is not None:  # the share of student-sampled steps and the teacher-scored divergence
                rec["on_policy"] = int(mode == "student")
                if mode is not None:
                    rec.update(gkd=round(kd_v, 5), completion_tokens=int(n1))
                    rec.update({"seq_kd": 1} if mode == "teacher" else {})
            end_of_epoch = pos >= len(batches)
            out_of_time = cfg.max_seconds is not None and _agreed(dist, trained() >= cfg.max_seconds)
            due = end_of_epoch or (cfg.eval_every and step % cfg.eval_every == 0) or step == total or out_of_time
            v0 = clock()
            if val_rows and due:
                val = evaluate_loss(model, val_rows, pad_id, dist=dist)
                rec["val_loss"] = round(val, 5)
                improved = losses.update(val, step)
                score = None
                if on_validation is not None:
                    score = on_validation(step, 0 if plateau else total, val, dist.unwrap(model))
                if plateau:
                    if score is not None and dist.world > 1:  # every process stops at the same step
                        score = float(dist.all_sum(torch.tensor([float(score)]))[0]) / dist.world
                    improved = score is not None and stopper.update(-float(score), step)
                    if score is not None:
                        rec["metric"] = round(float(score), 5)
                if improved and not dist.sharded:
                    best = {"model": trainable_state(dist.unwrap(model)), "step": step, "val_loss": val}
                    if ckpt_dir is None:
                        best_mem = best["model"]
                    elif writer:
                        save_best(ckpt_dir, best, ckpt_key)
                if stopper.stop:
                    stopped, reason = True, "plateau" if plateau else "early_stop"
                    best_v = round(-(stopper.best or 0) if plateau else (stopper.best or 0), 5)
                    if plateau:
                        log("plateau", step=step, best_step=stopper.best_step, best_metric=best_v)
                    else:
                        log("early_stop", step=step, best_step=stopper.best_step, best_val_loss=best_v)
            paused += clock() - v0
            if out_of_time and not stopped:
                stopped, reason = True, "time"
                log("time_cap", step=step, train_seconds=round(trained(), 2), max_seconds=cfg.max_seconds)
            history.append(rec)
            log("step", **rec, elapsed_s=round(clock() - t0, 2))
            v0 = clock()
            if ckpt_dir is not None and (step % cfg.save_every == 0 or step == total or stopped):
                state = {
                    "model": {} if dist.sharded else trainable_state(dist.unwrap(model)),
                    "extra": extra.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": rng_state(),
                    "step": step,
                    "epoch": epoch + (1 if end_of_epoch else 0),
                    "pos": 0 if end_of_epoch else pos,
                    "history": history,
                    "stopped": stopped,
                    "stop_reason": reason,
                    "elapsed_s": trained(),
                    **losses.state(),
                    **({"plateau": stopper.state()} if plateau else {}),
                }
                if dist.sharded or writer:
                    path = save_checkpoint(
                        ckpt_dir, step, state, cfg.keep_checkpoints, ckpt_key, dist.acc if dist.sharded else None
                    )
                    log("checkpoint", step=step, path=path.name)
            paused += clock() - v0
        if pos >= len(batches):
            epoch, pos = epoch + 1, 0
    dist.barrier()
    if val_rows and cfg.restore_best and stopper.best_step is not None and stopper.best_step != step:
        best_state = best_mem
        if best_state is None and (saved := load_best(ckpt_dir, ckpt_key)) is not None:
            best_state = saved["model"]
        if best_state is not None:
            load_trainable(dist.unwrap(model), best_state)
            log("best_restored", step=stopper.best_step, val_loss=round(stopper.best or 0, 5))
    model.eval()
    return {
        "steps": step,
        "train_loss": train_loss,
        "val_loss": round(losses.best, 5) if losses.best is not None else None,
        "best_step": stopper.best_step,
        "stopped_early": stopped,
        "resumed_from": resumed_from,
        "history": history,
        "stop_reason": reason or "steps",
        "metric": round(-stopper.best, 5) if plateau and stopper.best is not None else None,
        "train_seconds": round(trained(), 3),
        "paused_seconds": round(paused, 3),
    }
