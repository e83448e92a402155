"""The decoder's runner for a backend it cannot look inside: an ONNX Runtime session, or (when serving) a torch
model off the Llama fast path. Keys and values live here in per-slot buffers; the backend gets them as its past.

    runner = PastRunner(step, slots=8, max_len=512)    # the same interface as llama.LlamaRunner
    logits = runner.prefill(ids, lens, slots)          # right-padded prompts into cache slots -> last logits
    logits = runner.step(tokens, pos, width, span)     # one token for each of slots 0..width-1, at ``pos``

A backend is one step function, on torch tensors:

    step(ids [n, t], mask [n, past_len + t], pos [n, t], past) -> (logits at the last position [n, vocab], new)

``past`` is None (nothing cached) or one tensor [2 * layers, n, kv_heads, past_len, head_dim]: each layer's keys
then its values; ``new`` the same for the ``t`` new tokens only. A slot's buffer may hold stale entries beyond
the row's length (its previous occupant's): ``mask`` hides them, and positions come from ``pos``, not the index.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from .hf_loop import cache_kwarg

StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]


def past_supported(model: Any, max_len: int) -> bool:
    """Whether ``hf_step`` can run ``model``: every cache layer a plain one, or a sliding window longer than
    ``max_len`` (hybrid and linear-attention caches keep state this runner cannot slice)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    cfg = getattr(model, "config", None)
    if cfg is None:
        return False
    try:
        layers = DynamicCache(config=cfg).layers
    except Exception:  # a config this cache cannot read: not ours to run
        return False
    return bool(layers) and all(
        type(layer) is DynamicLayer or (type(layer) is DynamicSlidingWindowLayer and max_len < layer.sliding_window)
        for layer in layers
    )


def hf_step(model: Any) -> StepFn:
    """The step function of a Hugging Face causal LM: ``model()`` over a DynamicCache built from ``past``."""
    from transformers import DynamicCache

    kw = cache_kwarg(model)
    last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    def step(
        ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, past: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cache = DynamicCache(config=model.config)
        if past is not None and past.shape[3] > 0:
            for i in range(past.shape[0] // 2):
                cache.update(past[2 * i], past[2 * i + 1], i)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{kw: cache}, **last)
        t = ids.shape[1]
        new: list[torch.Tensor] = []
        for layer in cache.layers:  # the new tokens are the last t entries, whatever the layer keeps before them
            new += [layer.keys[:, :, -t:], layer.values[:, :, -t:]]
        return out.logits[:, -1, :], torch.stack(new)

    return step


class PastRunner:
    def __init__(self, step: StepFn, slots: int, max_len: int) -> None:
        self.fn, self.slots, self.max_len = step, slots, max_len
        self.kv: torch.Tensor | None = None  # [2 * layers, slots, kv_heads, max_len, head_dim], at the first prefill

    def fits(self, slots: int, max_len: int) -> bool:
        return slots <= self.slots and max_len <= self.max_len

    def prefill(self, ids: torch.Tensor, lens: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Run right-padded prompts ``ids`` [n, T] (true lengths ``lens``) and keep their keys and values in cache
        ``slots`` at 0..len-1; returns the logits at each prompt's last token [n, vocab]."""
        n, t = ids.shape
        ln = lens.tolist()
        left = torch.stack([torch.roll(ids[r], t - ln[r]) for r in range(n)])  # left padding, as generate() does
        mask = (torch.arange(t, device=ids.device)[None] >= (t - lens)[:, None]).long()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, new = self.fn(left, mask, pos, None)
        if self.kv is None:
            shape = (new.shape[0], self.slots, new.shape[2], self.max_len, new.shape[4])
            self.kv = torch.zeros(shape, dtype=new.dtype, device=new.device)
            self.span = torch.arange(max(self.max_len, self.slots), device=new.device)
        for r, s in enumerate(slots.tolist()):
            self.kv[:, s, :, : ln[r]] = new[:, r, :, t - ln[r] :]
        return logits.float()

    def step(self, tokens: torch.Tensor, pos: torch.Tensor, width: int, span: int) -> torch.Tensor:
        """One new token for each of slots 0..width-1 (``tokens``, ``pos`` [width]: its position and where it is
        kept; ``span``: max(pos) + 1). Returns the next-token logits [width, vocab]."""
        assert self.kv is not None
        mask = self.span[None, :span] < pos[:, None]  # a row sees its own 0..pos-1
        mask[:, span - 1] = True  # and the new token
        logits, new = self.fn(tokens[:, None], mask.long(), pos[:, None], self.kv[:, :width, :, : span - 1])
        self.kv[:, self.span[:width], :, pos] = new[:, :, :, 0].transpose(0, 1)
        return logits.float()

    def move(self, src: torch.Tensor, dst: torch.Tensor, upto: int) -> None:
        """Copy slots ``src`` to ``dst`` (positions < ``upto``): compacts the live rows to the front."""
        assert self.kv is not None
        self.kv[:, dst, :, :upto] = self.kv[:, src, :, :upto]
