"""A GGUF export run by llama.cpp (``llama-cpp-python``), behind the same interface as the torch and ONNX models.

    lm = load_model("runs/x/export/gguf-q8_0")        # a folder with model.gguf and the HF tokenizer files
    lm.generate([[{"role": "user", "content": "2+3?"}]], max_new_tokens=16)

The prompt is encoded by the Hugging Face tokenizer kept beside the GGUF (as for every other model potstill
evaluates) and its token ids go to llama.cpp, which keeps the key/value cache. Sampling is potstill's own
(``decode.engine.pick``: greedy, or temperature + top-p with a per-request seed) on llama.cpp's logits, so greedy
answers compare the weights and nothing else. llama.cpp runs one sequence at a time here: rows are answered in
turn, and a server's waiting requests join as each ends.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..decode.engine import Output, Request, _Live, _record, pick
from ..errors import PotstillError

SMALL_GGUF_BYTES = 64 << 20  # below this a step is overhead-bound: one thread (as for ONNX, backends.py)


def _llama_cpp() -> Any:
    """The binding, its log (llama.cpp's loading chatter) cut to errors."""
    try:
        import llama_cpp
    except ImportError as e:
        raise PotstillError(
            "a GGUF model needs llama.cpp's Python binding: pip install llama-cpp-python (or the dev extra)"
        ) from e
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    return llama_cpp


def vocab_model(path: Path) -> Any:
    """The GGUF's vocabulary and metadata alone (no weights, no context): ``.tokenize(bytes, add_bos, special)``,
    ``.metadata()`` (the GGUF's key/values as text)."""
    lc = _llama_cpp()
    from llama_cpp._internals import LlamaModel

    params = lc.llama_model_default_params()
    params.vocab_only = True
    return LlamaModel(path_model=str(path), params=params, verbose=False)


class LlamaCppBackend:
    kind = "gguf"

    def __init__(self, path: Path, threads: int | None = None, n_ctx: int | None = None) -> None:
        lc = _llama_cpp()
        threads = threads or (1 if path.stat().st_size < SMALL_GGUF_BYTES else os.cpu_count() or 1)
        meta = vocab_model(path).metadata()  # a vocabulary-only load reads no hyperparameters: the metadata has them
        trained = int(meta.get(f"{meta.get('general.architecture', 'llama')}.context_length") or 4096)
        ctx = n_ctx or min(trained, 8192)
        self.llm = lc.Llama(
            model_path=str(path),
            n_ctx=ctx,
            n_batch=min(ctx, 512),
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=False,
            verbose=False,
        )
        self.n_vocab = int(self.llm.n_vocab())
        self.max_positions: int | None = ctx
        self.path = path

    def feed(self, ids: list[int], fresh: bool) -> np.ndarray:
        """Append ``ids`` to the sequence (a new one when ``fresh``); the logits after the last of them."""
        if fresh:
            self.llm.reset()
        self.llm.eval(ids)
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,)).copy()

    @property
    def position(self) -> int:
        return int(self.llm.n_tokens)

    def forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: Any
    ) -> tuple[np.ndarray, Any]:
        """One sequence: ``past`` is None (a new sequence) or the position this backend returned before."""
        if input_ids.shape[0] != 1:
            raise PotstillError("the llama.cpp backend runs one sequence at a time (batch 1)")
        if past is not None and past != self.position:
            raise PotstillError("llama.cpp holds one sequence: continue the one last fed, or start anew")
        logits = self.feed([int(t) for t in input_ids[0]], fresh=past is None)
        return logits[None, :], self.position


class LlamaCppDecoder:
    """The decoder interface (``Engine.generate``) over llama.cpp, one request at a time."""

    def __init__(self, backend: LlamaCppBackend, stop_ids: list[int]) -> None:
        self.backend, self.stop = backend, set(stop_ids)
        self.slots = 1  # set by the server and the evaluation like the engine's; requests still run in turn
        self.runs = 0

    def _one(self, req: Request) -> Output:
        import torch

        if req.cancelled or req.max_new_tokens <= 0:
            return Output(finish="cancelled" if req.cancelled else "length")
        live = _Live(None, req, torch.device("cpu"))
        limit = self.backend.max_positions or 1 << 30
        if len(req.ids) >= limit:
            return Output(finish="length")
        logits = self.backend.feed(list(req.ids), fresh=True)
        while True:
            row = torch.from_numpy(logits)[None, :]
            token = pick(row, [live])[0]
            _record(row, [live], [token])
            if live.push(token, self.stop):
                break
            if self.backend.position >= limit:
                live.out.finish = "length"
                break
            logits = self.backend.feed([token], fresh=False)
        out = live.out
        n = len(out.tokens)
        if out.chosen is not None:
            out.chosen = out.chosen[:n]
        if out.top is not None:
            out.top = (out.top[0][:n], out.top[1][:n])
        out.seconds = time.perf_counter() - live.t0
        return out

    def generate(self, requests: list[Request], more: Any = None) -> list[Output]:
        self.runs += 1
        outs = []
        for req in requests:
            out = self._one(req)
            outs.append(out)
            if req.on_done is not None:
                req.on_done(out)
        while more is not None:
            arrived = more(1)
            if not arrived:
                break
            for req in arrived:
                out = self._one(req)
                if req.on_done is not None:
                    req.on_done(out)
        return outs
