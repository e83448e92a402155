"""Speed and footprint of a local model, measured the same way for every model.

    latency(lm, prompts, max_new_tokens)     -> {"mean_ms", "p50_ms", "p95_ms", "tokens_per_s"} at batch 1
    peak_memory(lm, prompt, max_new_tokens)  -> {"peak_tensor_mb", "weights_mb", "rss_mb", "how"}

Memory on CPU is the peak of live tensor bytes during one measured generation: the weights (alive before the
measurement) plus the high-water mark of every allocation and free the profiler records (KV cache,
activations, logits). On CUDA it is torch.cuda.max_memory_allocated. The process RSS is reported beside it;
for a small model RSS is mostly the Python runtime, so it is not the model's footprint.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def latency(lm: Any, prompts: list[list[dict[str, str]]], max_new_tokens: int) -> dict[str, float]:
    """Time each prompt alone (batch 1), greedy, after one warm-up call."""
    if not prompts:
        return {}
    lm.generate(prompts[:1], max_new_tokens=max_new_tokens)
    times, tokens = [], 0
    for p in prompts:
        t0 = time.perf_counter()
        out = lm.generate([p], max_new_tokens=max_new_tokens)[0]
        times.append(time.perf_counter() - t0)
        tokens += out.completion_tokens
    return {
        "mean_ms": 1000 * statistics.fmean(times),
        "p50_ms": 1000 * percentile(times, 0.5),
        "p95_ms": 1000 * percentile(times, 0.95),
        "tokens_per_s": tokens / sum(times) if sum(times) else float("nan"),
        "n": len(times),
        "samples_ms": [round(1000 * t, 3) for t in times],
    }


def tensor_bytes(model: Any) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ start/stop lines (written straight to fd 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(lm: Any, prompt: list[dict[str, str]], max_new_tokens: int) -> dict[str, Any]:
    weights = tensor_bytes(lm.model)
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(lm.device)
        lm.generate([prompt], max_new_tokens=max_new_tokens)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(lm.device)
        how = "cuda max_memory_allocated"
    else:
        from torch.profiler import ProfilerActivity, profile

        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            lm.generate([prompt], max_new_tokens=max_new_tokens)
        cur = high = 0
        mem = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        for e in sorted(mem, key=lambda e: e.start_ns()):
            cur += e.nbytes()
            high = max(high, cur)
        peak = weights + high
        how = "weights + profiler high-water mark of tensor allocations"
    return {
        "peak_tensor_mb": peak / 2**20,
        "weights_mb": weights / 2**20,
        "rss_mb": rss_mb(),
        "how": how,
    }


def size_on_disk_mb(path: str | os.PathLike[str]) -> float | None:
    p = Path(path)
    if not p.is_dir():
        return None
    exts = (".safetensors", ".bin", ".pt", ".gguf", ".onnx")
    return sum(f.stat().st_size for f in p.glob("*") if f.suffix in exts) / 2**20
