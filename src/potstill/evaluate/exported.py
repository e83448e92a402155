"""Exported students evaluated like the torch models: ``potstill export``'s ``onnx`` and ``onnx-int8`` folders.

    evaluation:
      models:
        - {name: "distilled (onnx-int8)", model: export/onnx-int8}   # relative to the run folder, or any path

The same prompts, greedy decoding and metrics as every other row, through the decoder the server uses
(``server/backends.py``: onnxruntime on the CPU, continuous batching, past key/values); latency p50/p95 at batch
1, throughput at the evaluation's batch size, the process's resident memory, the parameters (from the exported
config) and the size on disk. The tensor-memory peak is torch's profiler figure: onnxruntime's arena is outside
it, so that cell stays empty for these rows and their weights are the ONNX files' size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import perf


def is_exported(model: str) -> bool:
    return (Path(model) / "model.onnx").is_file()


def resolve(model: str, run_root: Path) -> str:
    """``model`` as given when it exists, else relative to the run folder (``export/onnx-int8``)."""
    if Path(model).exists() or not (run_root / model).exists():
        return model
    return str(run_root / model)


def _parameters(folder: Path) -> int | None:
    """The exported model's parameter count, from its config (built on the meta device: no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(str(folder))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except (OSError, ValueError):
        return None
    return int(sum(p.numel() for p in model.parameters()))


def evaluate_exported(model: str, convs: list[Any], ev: Any) -> tuple[dict[str, Any], list[str]]:
    """One exported folder through the evaluation prompts: its row (as evaluate_local's) and its answers."""
    from ..server.backends import ONNX_META, load_model, onnx_bytes

    folder = Path(model)
    lm = load_model(folder)
    lm.decoder.slots = max(1, ev.batch_size)
    outs, thr = perf.throughput(lm, convs, ev.max_new_tokens, ev.batch_size)
    meta = json.loads((folder / ONNX_META).read_text())
    weights = onnx_bytes(folder / "model.onnx") / 2**20
    row: dict[str, Any] = {
        "kind": "onnx",
        "device": "cpu (onnxruntime)",
        "dtype": str(meta.get("weights", "float32")),
        "parameters": _parameters(folder),
        "size_on_disk_mb": perf.size_on_disk_mb(folder),
        "throughput": thr,
        "latency": perf.latency(lm, convs[: ev.latency_samples], ev.max_new_tokens)
        if "latency" in ev.metrics
        else None,
        "memory": {
            "peak_tensor_mb": None,
            "weights_mb": weights,
            "rss_mb": perf.rss_mb(),
            "how": "onnxruntime: weights = the ONNX files; no tensor peak (outside torch's profiler)",
        }
        if "memory" in ev.metrics
        else None,
    }
    return row, [o.text for o in outs]
