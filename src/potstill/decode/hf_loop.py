"""The decoder's generic loop, for models the fast path (llama.py) does not cover: rows leave the batch as they finish.

    toks, stopped, tops = decode_batch(model, ids, mask, max_new_tokens=128, stop_ids=[eos])
    toks[r]            the tokens generated for row r, its stop token excluded
    stopped[r]         True when row r ended on a stop token (else it ran out of max_new_tokens)
    tops[r]            with ``logprobs=k``: (ids, logprobs), each [step][k], of the raw logits at every step of row r

``model.generate`` keeps finished rows in the batch until the longest answer ends, so a batch of answers of 45 to
75 tokens costs 75 full-batch steps. Here each step runs only the rows still going (the KV cache is cut down with
``batch_select_indices``): the same greedy tokens, with less arithmetic. Sampling is temperature then nucleus
(top-p), as in ``generate``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

TopK = tuple[list[list[int]], list[list[float]]]


def cache_kwarg(model: Any) -> str:
    """The forward() argument that takes the KV cache: ``cache`` in newer transformers, else ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def can_shrink(cache: Any) -> bool:
    """Rows can leave the batch when every cache layer can drop rows (plain and sliding-window attention);
    other caches (linear attention, hybrids) keep finished rows riding along, as generate() does."""
    from transformers.cache_utils import DynamicLayer

    return all(isinstance(layer, DynamicLayer) for layer in getattr(cache, "layers", [None]))


def _pick(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        p, order = probs.sort(dim=-1, descending=True)
        p[(p.cumsum(-1) - p) >= top_p] = 0.0  # keep the smallest prefix whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(-1, order, p)
    return torch.multinomial(probs, 1).squeeze(-1)


@torch.inference_mode()
def decode_batch(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    max_new_tokens: int,
    stop_ids: list[int],
    temperature: float = 0.0,
    top_p: float = 1.0,
    logprobs: int | None = None,
) -> tuple[list[list[int]], list[bool], list[TopK] | None]:
    """Generate for left-padded ``ids`` / ``mask`` (batch, width); see the module docstring."""
    from transformers import DynamicCache

    kw = cache_kwarg(model)
    last = (
        {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    )  # the prompt's last position only
    n = ids.shape[0]
    toks: list[list[int]] = [[] for _ in range(n)]
    stopped = [False] * n
    tops: list[TopK] | None = [([], []) for _ in range(n)] if logprobs else None
    if max_new_tokens <= 0 or n == 0:
        return toks, stopped, tops
    stops = torch.tensor(sorted(set(stop_ids)) or [-1], device=ids.device)
    cache = DynamicCache(config=model.config)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, **{kw: cache}, use_cache=True, **last)
    pos = pos[:, -1:]
    live = torch.arange(n, device=ids.device)  # the original row of each row in the batch
    going = torch.ones(n, dtype=torch.bool, device=ids.device)  # rows not finished yet
    shrink = can_shrink(cache)
    for step in range(max_new_tokens):
        logits = out.logits[:, -1, :]
        nxt = _pick(logits, temperature, top_p)
        done = torch.isin(nxt, stops)
        sel = going.nonzero().squeeze(-1)
        rows, picked, ended = live[sel].tolist(), nxt[sel].tolist(), done[sel].tolist()
        if tops is not None:
            vals, top_ids = torch.log_softmax(logits[sel].float(), dim=-1).topk(logprobs, dim=-1)  # type: ignore[arg-type]
            for r, i, v in zip(rows, top_ids.tolist(), vals.tolist(), strict=True):
                tops[r][0].append(i)
                tops[r][1].append(v)
        for r, t, d in zip(rows, picked, ended, strict=True):
            if d:
                stopped[r] = True
            else:
                toks[r].append(t)
        going &= ~done
        if step == max_new_tokens - 1 or not bool(going.any()):
            break
        if shrink and not bool(going.all()):
            keep = going.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            live, nxt, mask, pos, going = live[keep], nxt[keep], mask[keep], pos[keep], going[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        pos = pos + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, **{kw: cache}, use_cache=True)
    if tops is not None:  # a finished row's last entry is its stop token's step: keep one entry per kept token
        tops = [(i[: len(t)], v[: len(t)]) for (i, v), t in zip(tops, toks, strict=True)]
    return toks, stopped, tops
