"""The models potstill serves and exports, behind one interface: a torch HF folder or an ONNX export.

    lm = load_model("runs/x/student")                 # or runs/x/export/onnx-int8 (a folder with model.onnx)
    lm.generate([[{"role": "user", "content": "2+3?"}]], max_new_tokens=16)   # -> [Result], greedy
    lm.encode(messages)                               # the prompt token ids, through the model's chat template

Both run through the one decoder (potstill.decode.engine: its scheduler, sampling and text handling): a torch
model on its own runners, an ONNX session through its step function (``OnnxBackend.step``), so a parity check
compares the models and nothing else. Both also expose ``forward(input_ids, attention_mask, position_ids, past)``
on numpy arrays (one forward pass, for logit checks).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..decode import stop_token_ids
from ..decode.engine import Engine, Output, Request
from ..decode.hf_loop import cache_kwarg
from ..decode.sequential import SequentialDecoder
from ..decode.text import Result, Row, generate_text
from ..errors import PotstillError
from ..teachers.hf import load_causal_lm, load_tokenizer, pick_device, pick_dtype

GGUF_FILE = "model.gguf"  # written by the GGUF export (exporter/gguf.py) beside the Hugging Face tokenizer files
ONNX_META = "potstill_onnx.json"  # written by the ONNX export beside model.onnx: input/output names and shapes


class TorchBackend:
    kind = "torch"

    def __init__(self, model: Any) -> None:
        import torch
        from transformers import DynamicCache

        self.model, self._torch, self._cache_cls = model, torch, DynamicCache
        self._cache_kw = cache_kwarg(model)
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None

    def forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: Any
    ) -> tuple[np.ndarray, Any]:
        torch = self._torch
        dev = next(self.model.parameters()).device
        cache = past if past is not None else self._cache_cls(config=self.model.config)
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.from_numpy(input_ids).to(dev),
                attention_mask=torch.from_numpy(attention_mask).to(dev),
                position_ids=torch.from_numpy(position_ids).to(dev),
                use_cache=True,
                **{self._cache_kw: cache},
            )
        new = getattr(out, "cache", None) or out.past_key_values
        return out.logits[:, -1, :].float().cpu().numpy(), new


SMALL_ONNX_BYTES = 64 << 20  # below this (about 16M fp32 parameters) a decode step is overhead-bound


def default_threads(path: Path) -> int | None:
    """One intra-op thread for a small model, else onnxruntime's default (one per core). A small model's step is
    many tiny operations: on the demo's student (1 MB; AVX2 EPYC, 2 cores) one thread answered 131 vs 106
    answers/s at batch 256 (int8: 162 vs 127) and 34 vs 38 ms at batch 1, and when another process held a core
    the default pool stalled the batch-1 answer to 85 ms (one thread: 37 ms). Large models are matrix-bound and
    keep every core."""
    return 1 if onnx_bytes(path) < SMALL_ONNX_BYTES else None


def onnx_bytes(path: Path) -> int:
    """The size of an ONNX model file and its external-data files (model.onnx*)."""
    return sum(f.stat().st_size for f in path.parent.iterdir() if f.name.startswith(path.name))


class OnnxBackend:
    kind = "onnx"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        """``threads``: onnxruntime's intra-op threads; None picks them (``default_threads``)."""
        import onnxruntime as ort

        self.meta = json.loads((path.parent / ONNX_META).read_text())
        opts = ort.SessionOptions()
        threads = threads or default_threads(path)
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.max_positions = self.meta.get("max_positions")
        self._outputs = [o.name for o in self.session.get_outputs()]  # logits, then the presents in past order
        self._past: list[Any] | None = None
        self._len = 0
        self._io = self._raw = self._cpu = None  # feed's binding (made on first use)
        self._ones = np.ones((1, 0), dtype=np.int64)
        self._ar = np.zeros((1, 0), dtype=np.int64)
        self._keep: tuple[np.ndarray, ...] = ()

    def forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: Any
    ) -> tuple[np.ndarray, Any]:
        m = self.meta
        if past is None:
            shape = (input_ids.shape[0], m["num_kv_heads"], 0, m["head_dim"])
            past = [np.zeros(shape, dtype=np.float32) for _ in m["past_names"]]
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        feeds.update(zip(m["past_names"], past, strict=True))
        logits, *present = self.session.run(None, feeds)
        return logits[:, -1, :], present

    def feed(self, ids: list[int], fresh: bool) -> np.ndarray:
        """One sequence with its past kept inside onnxruntime (I/O binding: each step's present key/values are the
        next step's inputs, never copied out): append ``ids`` (a new sequence when ``fresh``); the last logits.

        One binding serves every step, through onnxruntime's own binding object (the Python wrapper's checks and
        OrtValue wrappers cost ~90 µs a step, a third of the demo student's step), the mask and positions are
        views of arrays kept for the whole sequence, and the outputs are allocated by onnxruntime each run."""
        import onnxruntime as ort

        m = self.meta
        raw = self._binding()
        if fresh or self._past is None:
            empty = np.zeros((1, m["num_kv_heads"], 0, m["head_dim"]), dtype=np.float32)
            self._past = [ort.OrtValue.ortvalue_from_numpy(empty)._ortvalue for _ in m["past_names"]]
            self._len = 0
        end = self._len + len(ids)
        if end > self._ones.shape[1]:
            self._ones = np.ones((1, 2 * end), dtype=np.int64)
            self._ar = np.arange(2 * end, dtype=np.int64)[None, :]
        self._keep = (np.asarray([ids], dtype=np.int64), self._ones[:, :end], self._ar[:, self._len : end])
        for name, value in zip(("input_ids", "attention_mask", "position_ids"), self._keep, strict=True):
            raw.bind_input(name, value)
        for name, value in zip(m["past_names"], self._past, strict=True):
            raw.bind_ortvalue_input(name, value)
        for name in self._outputs:  # a run leaves its outputs bound: unbound again, onnxruntime allocates anew
            raw.bind_output(name, self._cpu)
        self.session._sess.run_with_iobinding(raw, None)
        outs = raw.get_outputs()
        self._past = [outs[i] for i in range(1, len(outs))]
        self._len = end
        return outs[0].numpy()[0, -1]

    def _binding(self) -> Any:
        """onnxruntime's binding object for ``feed`` (and the CPU device its outputs are bound to)."""
        if self._raw is None:
            import onnxruntime as ort

            self._io = self.session.io_binding()
            self._raw, self._cpu = self._io._iobinding, ort.OrtDevice.make("cpu", 0)._get_c_device()
        return self._raw

    @property
    def position(self) -> int:
        return self._len

    def step(self, ids: Any, mask: Any, pos: Any, past: Any) -> tuple[Any, Any]:
        """The decoder's step function (decode/past.py) over this session: CPU torch tensors in and out."""
        import torch

        arrays = None if past is None else list(np.ascontiguousarray(past.numpy()))  # one copy for all layers
        logits, present = self.forward(ids.numpy(), mask.numpy(), pos.numpy(), arrays)
        t = ids.shape[1]
        return torch.from_numpy(logits), torch.from_numpy(np.stack([p[:, :, -t:] for p in present]))


class LoneOrBatched:
    """An ONNX model's decoder: the engine (continuous batching) for several requests or a server's stream of them;
    a lone request runs on ``SequentialDecoder``, whose past stays inside onnxruntime (no batching machinery, no
    copies of the past: on the demo's student it halves the time per answer at batch 1)."""

    def __init__(self, engine: Engine, lone: SequentialDecoder) -> None:
        self.engine, self.lone = engine, lone

    @property
    def slots(self) -> int:
        return self.engine.slots

    @slots.setter
    def slots(self, value: int) -> None:
        self.engine.slots = value

    @property
    def runs(self) -> int:
        return self.engine.runs + self.lone.runs

    def generate(self, requests: list[Request], more: Callable[[int], list[Request]] | None = None) -> list[Output]:
        if more is None and len(requests) == 1:
            return self.lone.generate(requests)
        return self.engine.generate(requests, more)


class LoadedModel:
    """A backend plus its tokenizer, stop tokens and decoder; what the server and the export's checks run."""

    def __init__(self, backend: Any, tokenizer: Any, path: Path) -> None:
        self.backend, self.tokenizer, self.path = backend, tokenizer, path
        self.kind: str = backend.kind
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stop_ids = stop_token_ids(tokenizer)

    @cached_property
    def decoder(self) -> Any:
        """The decoder (8 slots until the server sets ``decoder.slots``), kept so its cache buffers are reused;
        a GGUF model's runs one sequence at a time in llama.cpp (``decode.sequential``), and an ONNX model's runs a
        lone request that way too, its past kept inside onnxruntime (``LoneOrBatched``)."""
        if self.kind == "gguf":
            return SequentialDecoder(self.backend, self.stop_ids)
        if self.kind == "onnx":
            engine = Engine(None, self.stop_ids, 8, self.pad_id or 0, forward=self.backend.step)
            return LoneOrBatched(engine, SequentialDecoder(self.backend, self.stop_ids))
        return Engine(self.backend.model, self.stop_ids, 8, self.pad_id or 0)

    @property
    def max_positions(self) -> int | None:
        return self.backend.max_positions

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def run(self, rows: list[Row], more: Callable[[int], list[Row]] | None = None) -> list[Result]:
        """Decode ``rows`` together, ``decoder.slots`` at a time; with ``more`` (polled each step with the free
        slots), rows that arrive meanwhile join them. Each row's ``on_result`` fires as it ends."""
        return generate_text(self.decoder, self.tokenizer, rows, more)

    def generate(
        self, conversations: list[list[dict[str, str]]], max_new_tokens: int = 64, batch_size: int = 8
    ) -> list[Result]:
        """Greedy answers, ``batch_size`` conversations at a time, in input order."""
        out: list[Result] = []
        for b in range(0, len(conversations), batch_size):
            chunk = conversations[b : b + batch_size]
            out += self.run([Row(self.encode(m), max_new_tokens=max_new_tokens) for m in chunk])
        return out


def model_kind(path: Path) -> str:
    """'onnx' for a folder with model.onnx, 'gguf' for one with model.gguf, 'torch' for a Hugging Face folder;
    PotstillError otherwise."""
    if (path / "model.onnx").is_file():
        return "onnx"
    if (path / GGUF_FILE).is_file():
        return "gguf"
    if (path / "config.json").is_file():
        return "torch"
    raise PotstillError(
        f"{path}: no model here (expected config.json + weights, or model.onnx / model.gguf from `potstill "
        "export`); "
        "give a model folder or a run folder"
    )


def load_model(path: str | Path, device: str = "auto", dtype: str = "auto", threads: int | None = None) -> LoadedModel:
    p = Path(path)
    kind = model_kind(p)
    tok = load_tokenizer(str(p))
    tok.padding_side = "left"
    if kind == "onnx":
        return LoadedModel(OnnxBackend(p / "model.onnx", threads), tok, p)
    if kind == "gguf":
        from .llamacpp import LlamaCppBackend

        return LoadedModel(LlamaCppBackend(p / GGUF_FILE, threads), tok, p)
    dev = pick_device(device)
    return LoadedModel(TorchBackend(load_causal_lm(str(p), dev, pick_dtype(dtype, dev))), tok, p)
