"""Exported students evaluated like the torch models: ``potstill export``'s ``onnx``, ``onnx-int8`` and ``gguf*``
folders.

    evaluation:
      models:
        - {name: "distilled (onnx-int8)", model: export/onnx-int8}   # relative to the run folder, or any path
        - {name: "distilled (gguf-q8_0)", model: export/gguf-q8_0}   # llama.cpp (server/llamacpp.py)

The same prompts, greedy decoding and metrics as every other row, through the decoder the server uses
(``server/backends.py``: onnxruntime on the CPU, continuous batching, past key/values); latency p50/p95 at batch
1, throughput at the evaluation's batch size, the process's resident memory, the parameters (from the exported
config) and the size on disk. The tensor-memory peak is torch's profiler figure: onnxruntime's arena is outside
it, so that cell stays empty for these rows and their weights are the ONNX files' size. A GGUF folder runs in
llama.cpp, one sequence at a time (its throughput is batch 1's), its weights are the GGUF file's size, and its
parameters are counted from the file's tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from . import perf


def is_exported(model: str) -> bool:
    return (Path(model) / "model.onnx").is_file() or (Path(model) / "model.gguf").is_file()


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


def _gguf_facts(path: Path) -> tuple[str, int]:
    """The file's precision (its ``general.file_type``: f16, q8_0, q4_k_m...) and its parameter count."""
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(str(path))
    field = reader.fields.get("general.file_type")
    ftype = LlamaFileType(int(field.parts[-1][0])).name if field is not None else "unknown"
    dtype = ftype.removeprefix("MOSTLY_").removeprefix("ALL_").lower()
    return dtype, int(sum(int(np.prod(t.shape)) for t in reader.tensors))


def evaluate_exported(model: str, convs: list[Any], ev: Any) -> tuple[dict[str, Any], list[str]]:
    """One exported folder through the evaluation prompts: its row (as evaluate_local's) and its answers."""
    from ..server.backends import GGUF_FILE, ONNX_META, load_model, onnx_bytes

    folder = Path(model)
    lm = load_model(folder)
    lm.decoder.slots = max(1, ev.batch_size)
    outs, thr = perf.throughput(lm, convs, ev.max_new_tokens, ev.batch_size)
    if lm.kind == "gguf":
        kind, device = "gguf", "cpu (llama.cpp)"
        dtype, params = _gguf_facts(folder / GGUF_FILE)
        weights = (folder / GGUF_FILE).stat().st_size / 2**20
    else:
        meta = json.loads((folder / ONNX_META).read_text())
        kind, device, dtype = "onnx", "cpu (onnxruntime)", str(meta.get("weights", "float32"))
        params = _parameters(folder)
        weights = onnx_bytes(folder / "model.onnx") / 2**20
    row: dict[str, Any] = {
        "kind": kind,
        "device": device,
        "dtype": dtype,
        "parameters": params,
        "size_on_disk_mb": perf.size_on_disk_mb(folder),
        "throughput": thr,
        "latency": perf.latency(lm, convs[: ev.latency_samples], ev.max_new_tokens)
        if "latency" in ev.metrics
        else None,
        "memory": {
            "peak_tensor_mb": None,
            "weights_mb": weights,
            "rss_mb": perf.rss_mb(),
            "how": f"{device}: weights = the {kind.upper()} files; no tensor peak (outside torch's profiler)",
        }
        if "memory" in ev.metrics
        else None,
    }
    return row, [o.text for o in outs]
