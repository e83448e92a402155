"""Speed and footprint of a local model, measured the same way for every model.

    latency(lm, prompts, max_new_tokens)     -> {"mean_ms", "p50_ms", "p95_ms", "tokens_per_s", ...} at batch 1
    throughput(lm, prompts, max_new_tokens, batch_size) -> (outputs, {"answers_per_s", "tokens_per_s", ...})
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

from .stats import percentile


def latency_summary(times_s: list[float], tokens: int | None, how: str) -> dict[str, Any]:
    """Mean, p50 and p95 of per-answer times (seconds in, milliseconds out), with every sample kept."""
    if not times_s:
        return {}
    total = sum(times_s)
    return {
        "mean_ms": 1000 * statistics.fmean(times_s),
        "p50_ms": 1000 * percentile(times_s, 0.5),
        "p95_ms": 1000 * percentile(times_s, 0.95),
        "tokens_per_s": tokens / total if tokens is not None and total else None,
        "n": len(times_s),
        "samples_ms": [round(1000 * t, 3) for t in times_s],
        "how": how,
    }


def latency(lm: Any, prompts: list[list[dict[str, str]]], max_new_tokens: int) -> dict[str, Any]:
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
    return latency_summary(times, tokens, "batch 1, greedy, one warm-up call first")


def throughput(
    lm: Any, prompts: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int
) -> tuple[list[Any], dict[str, Any]]:
    """Answer every prompt at ``batch_size`` (greedy) after a one-prompt warm-up; the outputs and the rate."""
    lm.generate(prompts[:1], max_new_tokens=max_new_tokens)
    t0 = time.perf_counter()
    outs = lm.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    dt = time.perf_counter() - t0
    return outs, {
        "answers_per_s": len(outs) / dt if dt else None,
        "tokens_per_s": sum(o.completion_tokens for o in outs) / dt if dt else None,
        "batch_size": batch_size,
        "answers": len(outs),
        "seconds": dt,
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
    lm._engine = None  # the decoder's buffers (KV cache, fused weights) are built inside the measured call
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


def local_folder(model: str | os.PathLike[str]) -> Path | None:
    """The folder holding a model's files: the path itself, or a hub id's snapshot in the local cache."""
    p = Path(model)
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model), local_files_only=True))
    except Exception:  # not a hub id, or not cached: the size is unknown, not an error
        return None


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".data", ".onnx_data")


def size_on_disk_mb(path: str | os.PathLike[str]) -> float | None:
    """Weights on disk (safetensors, bin, pt, gguf, onnx and its external .data), in MiB; None when the files
    are not local. The one measure used by evaluation, export manifests and model cards."""
    p = local_folder(path)
    if p is None:
        return None
    return sum(f.stat().st_size for f in p.glob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES) / 2**20
