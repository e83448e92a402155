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
import ctypes
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
        self._lc, self._n, self._at, self._view = lc, 0, None, np.zeros(0, dtype=np.float32)
        self.max_positions: int | None = ctx
        self.path = path

    def feed(self, ids: list[int], fresh: bool) -> np.ndarray:
        """Append ``ids`` to the sequence (a new one when ``fresh``); the logits after the last of them.

        Straight to ``llama_decode`` with the binding's batch, not ``Llama.eval`` (whose bookkeeping per call cost
        ~30 µs, a sixth of a small model's token), and the logits read through a view kept while llama.cpp's
        buffer stays where it is."""
        lc, ctx, batch = self._lc, self.llm._ctx.ctx, self.llm._batch.batch
        if fresh:
            lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
            self._n = 0
        step = self.llm.n_batch
        for at in range(0, len(ids), step):
            chunk = ids[at : at + step]
            batch.n_tokens = len(chunk)
            for i, t in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, self._n + i, 1, 0
                batch.seq_id[i][0] = 0
            batch.logits[len(chunk) - 1] = 1
            if (rc := lc.llama_decode(ctx, batch)) != 0:
                raise PotstillError(f"llama.cpp could not decode the sequence (llama_decode returned {rc})")
            self._n += len(chunk)
        ptr = lc.llama_get_logits_ith(ctx, -1)
        addr = ctypes.cast(ptr, ctypes.c_void_p).value
        if addr != self._at:
            self._view = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
            self._at = addr
        return self._view.copy()

    @property
    def position(self) -> int:
        return self._n

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
