"""ONNX export of a causal LM as one decoder graph with past key/values as flat inputs and outputs.

    export_onnx(model, tokenizer, Path("export/onnx"))          # model.onnx + tokenizer + potstill_onnx.json
    quantize_int8(Path("export/onnx"), Path("export/onnx-int8")) # dynamic int8 weights (onnxruntime)

Inputs: input_ids, attention_mask (past + new), position_ids, past_key_<i>, past_value_<i> (batch, kv_heads,
past_len, head_dim); outputs: logits, present_key_<i>, present_value_<i>. The first call passes a past of
length 0, every later call one new token, so generation is incremental. Written by the TorchScript exporter
(torch.onnx.export(dynamo=False)), which traces the Hugging Face forward with a DynamicCache built from the flat
inputs; the dynamo exporter is not needed for this shape of graph.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..run_dir import atomic_replace_dir
from ..server.backends import ONNX_META

OPSET = 17


def _wrapper(model: Any, layers: int) -> Any:
    import torch
    from transformers import DynamicCache

    from ..decode.hf_loop import cache_kwarg

    cache_kw = cache_kwarg(model)

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any) -> tuple[Any, ...]:
            cache = DynamicCache(config=model.config)
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{cache_kw: cache},
            )
            new = getattr(out, "cache", None) or out.past_key_values
            flat = []
            for i in range(layers):
                flat += [new.layers[i].keys, new.layers[i].values]
            return (out.logits, *flat)

    return Decoder().eval()


def _geometry(cfg: Any) -> tuple[int, int, int]:
    layers = int(cfg.num_hidden_layers)
    heads = int(cfg.num_attention_heads)
    kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    return layers, kv, head_dim


def export_onnx(model: Any, tokenizer: Any, out: Path) -> Path:
    """Write out/model.onnx (fp32) plus the tokenizer, config and the I/O description; returns the .onnx path."""
    import torch

    model = model.float().cpu().eval()
    layers, kv, head_dim = _geometry(model.config)
    past_names = [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    present_names = [n.replace("past_", "present_") for n in past_names]
    b, t, p = 2, 3, 2  # sample shapes: a non-empty past so the trace takes the concatenating path
    ids = torch.ones((b, t), dtype=torch.long)
    mask = torch.ones((b, p + t), dtype=torch.long)
    pos = torch.arange(p, p + t).expand(b, t).contiguous()
    past = [torch.zeros((b, kv, p, head_dim)) for _ in past_names]
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "new"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "new"},
        "logits": {0: "batch", 1: "new"},
    }
    axes.update({n: {0: "batch", 2: "past"} for n in past_names})
    axes.update({n: {0: "batch", 2: "total"} for n in present_names})
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _wrapper(model, layers),
                (ids, mask, pos, *past),
                str(tmp / "model.onnx"),
                input_names=["input_ids", "attention_mask", "position_ids", *past_names],
                output_names=["logits", *present_names],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many types; one line for the user
        shutil.rmtree(tmp, ignore_errors=True)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {first}") from None
    meta = {
        "past_names": past_names,
        "present_names": present_names,
        "num_layers": layers,
        "num_kv_heads": kv,
        "head_dim": head_dim,
        "vocab_size": int(model.config.vocab_size),
        "max_positions": getattr(model.config, "max_position_embeddings", None),
        "opset": OPSET,
        "weights": "float32",
    }
    (tmp / ONNX_META).write_text(json.dumps(meta, indent=2) + "\n")
    model.config.save_pretrained(tmp)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    atomic_replace_dir(tmp, out)
    return out / "model.onnx"


def quantize_int8(src: Path, out: Path) -> Path:
    """Dynamic int8 quantisation (weights int8, activations quantised on the fly) of src/model.onnx."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("model.onnx", "*.onnx.data", "README.md"))
    try:
        quantize_dynamic(str(src / "model.onnx"), str(tmp / "model.onnx"), weight_type=QuantType.QInt8)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"int8 quantisation of {src / 'model.onnx'} failed: {exc}") from None
    meta = json.loads((tmp / ONNX_META).read_text())
    meta["weights"] = "int8 (dynamic quantisation, onnxruntime)"
    (tmp / ONNX_META).write_text(json.dumps(meta, indent=2) + "\n")
    atomic_replace_dir(tmp, out)
    return out / "model.onnx"
