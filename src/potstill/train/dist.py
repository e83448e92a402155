"""One process or many: the few collective operations the trainer needs, through accelerate when launched by it.

    dist = Dist.from_env()              # plain single process, or accelerate (DDP / DeepSpeed / FSDP) under
                                        # `accelerate launch --num_processes N -m potstill train RUN_DIR`
    model, opt = dist.prepare(model, opt)
    dist.all_sum(tensor)                # summed over processes (identity with one)

A single process never imports accelerate's state machinery: per-step overhead stays that of a plain loop.

On CPU, ``accelerate launch --cpu --num_processes N`` starts one process and leaves the fan-out to MPI (its
"simple launcher"); without MPI, potstill starts the N workers itself (``spawn_cpu_workers``) with the usual
torch.distributed variables (RANK, WORLD_SIZE, MASTER_ADDR/PORT), and they train over gloo.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingError


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

        cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" or not torch.cuda.is_available()
        return cls(Accelerator(cpu=cpu))

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

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        if not self.acc or self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]

    def barrier(self) -> None:
        if self.acc:
            self.acc.wait_for_everyone()


def cpu_fanout() -> int | None:
    """N when this process was started by `accelerate launch --cpu --num_processes N` (N > 1) as a lone process."""
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() != "true" or "WORLD_SIZE" in env or "MASTER_ADDR" not in env:
        return None
    try:
        args = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        args = []
    for i, a in enumerate(args):
        if a.startswith("--num_processes=") or a.startswith("--num-processes="):
            return int(a.split("=", 1)[1])
        if a in ("--num_processes", "--num-processes") and i + 1 < len(args):
            return int(args[i + 1])
    raise TrainingError(
        "started by `accelerate launch --cpu` for several processes, but the process count is unknown: "
        "run `torchrun --nproc_per_node N -m potstill train RUN_DIR` instead"
    )


def spawn_cpu_workers(n: int, argv: list[str], command: list[str] | None = None) -> int:
    """Run ``python -m potstill *argv`` (or ``command + argv``) as ranks 0..n-1 and return the exit code. The first
    worker that fails stops the others at once (a rank left waiting in a collective would otherwise hang until
    the gloo timeout)."""
    command = command or [sys.executable, "-m", "potstill"]
    procs = []
    for rank in range(n):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(n),
            "LOCAL_WORLD_SIZE": str(n),
            "MASTER_PORT": os.environ.get("MASTER_PORT", "29500"),
        }
        procs.append(subprocess.Popen([*command, *argv], env=env))
    rc = 0
    try:
        while None in (codes := [p.poll() for p in procs]):  # poll every worker, every round
            failed = [c for c in codes if c]
            if failed:
                rc = failed[0]
                for q in procs:
                    if q.poll() is None:
                        q.terminate()
                break
            time.sleep(0.05)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        rc = rc or next((p.returncode for p in procs if p.returncode), 0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return rc
