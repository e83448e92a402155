"""One process or many: the few collective operations the trainer needs, through accelerate when launched by it.

    dist = Dist.from_env()              # plain single process, or accelerate (DDP / DeepSpeed / FSDP) under
                                        # `accelerate launch --num_processes N -m potstill train RUN_DIR`
    model, opt = dist.prepare(model, opt)
    dist.all_sum(tensor)                # summed over processes (identity with one)

A single process never imports accelerate's state machinery: per-step overhead stays that of a plain loop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch


def launched_by_accelerate() -> bool:
    env = os.environ
    return int(env.get("WORLD_SIZE", "1") or 1) > 1 or any(
        env.get(k, "").lower() == "true" for k in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP")
    )


class Dist:
    def __init__(self, accelerator: Any | None = None) -> None:
        self.acc = accelerator
        self.world = accelerator.num_processes if accelerator else 1
        self.rank = accelerator.process_index if accelerator else 0
        kind = str(getattr(accelerator, "distributed_type", "")) if accelerator else ""
        self.sharded = "DEEPSPEED" in kind or "FSDP" in kind

    @classmethod
    def from_env(cls) -> Dist:
        if not launched_by_accelerate():
            return cls()
        from accelerate import Accelerator

        return cls(Accelerator())

    @property
    def device(self) -> torch.device | None:
        return self.acc.device if self.acc else None

    def prepare(self, model: Any, opt: torch.optim.Optimizer) -> tuple[Any, Any]:
        return self.acc.prepare(model, opt) if self.acc else (model, opt)

    def backward(self, loss: torch.Tensor) -> None:
        if self.acc:
            self.acc.backward(loss)
        else:
            loss.backward()

    @contextlib.contextmanager
    def no_sync(self, model: Any, skip: bool) -> Iterator[None]:
        """Skip the gradient all-reduce for all but the last micro-batch of an accumulated step."""
        if self.acc and skip:
            with self.acc.no_sync(model):
                yield
        else:
            yield

    def clip(self, model: Any, params: list[torch.nn.Parameter], max_norm: float) -> None:
        if self.acc:
            self.acc.clip_grad_norm_(params, max_norm)
        else:
            torch.nn.utils.clip_grad_norm_(params, max_norm)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if not self.acc or self.world == 1:
            return t
        return self.acc.reduce(t.to(self.acc.device), reduction="sum")

    def unwrap(self, model: Any) -> Any:
        return self.acc.unwrap_model(model) if self.acc else model

    def barrier(self) -> None:
        if self.acc:
            self.acc.wait_for_everyone()
