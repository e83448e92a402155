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

import atexit
import logging
import os
import weakref
from pathlib import Path
from typing import Any

import numpy as np

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


def _close(ref: weakref.ref[Any]) -> None:
    llm = ref()
    if llm is not None:
        llm.close()


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
        atexit.register(_close, weakref.ref(self.llm))  # before interpreter teardown, when its __del__ would fail
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
