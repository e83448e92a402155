"""Parity and speed of an exported model against the torch model it came from, on fixed prompts.

    check = parity(reference, candidate, prompts, max_new_tokens=32)
    -> {"prompts", "max_abs_logit_diff", "next_token_agreement", "greedy_equal", "greedy_agreement",
        "latency_ms": {"torch", "export"}, "speedup_x"}

max |Δlogit| is taken over the prompt's last position and one incremental step after it (so the past key/value
path is checked too); greedy agreement is the share of prompts whose greedy answers have identical tokens.
Latency is the mean wall time per answer at batch 1, greedy, after one warm-up, both models through the same
decode loop, so the numbers compare the models and nothing else.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from ..server.backends import LoadedModel
from ..server.decode import Row

DEFAULT_PROMPTS = [
    "What is 12 plus 7?",
    "Name three colours.",
    "Summarise: the cat sat on the mat all afternoon.",
    "Is the following true? All squares are rectangles.",
    "Write one sentence about the sea.",
    "What is 9 times 8?",
    "Translate to French: good morning.",
    "Give a short greeting.",
]


def _logits_two_steps(lm: LoadedModel, ids: list[int]) -> np.ndarray:
    """Logits at the prompt's last position, then after feeding the greedy token (incremental path)."""
    x = np.array([ids], dtype=np.int64)
    mask = np.ones_like(x)
    pos = np.arange(len(ids), dtype=np.int64)[None, :]
    first, past = lm.backend.forward(x, mask, pos, None)
    nxt = np.array([[int(np.argmax(first[0]))]], dtype=np.int64)
    mask2 = np.ones((1, len(ids) + 1), dtype=np.int64)
    second, _ = lm.backend.forward(nxt, mask2, np.array([[len(ids)]], dtype=np.int64), past)
    return np.stack([first[0], second[0]])


def _latency_ms(lm: LoadedModel, prompts: list[list[int]], max_new_tokens: int) -> float:
    lm.run([Row(prompts[0], max_new_tokens=max_new_tokens)])  # warm-up
    times = []
    for ids in prompts:
        t0 = time.perf_counter()
        lm.run([Row(ids, max_new_tokens=max_new_tokens)])
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.fmean(times)


def parity(
    reference: LoadedModel, candidate: LoadedModel, conversations: list[list[dict[str, str]]], max_new_tokens: int
) -> dict[str, Any]:
    prompts = [reference.encode(m) for m in conversations]
    diffs, agree, scale = [], [], 0.0
    for ids in prompts:
        a, b = _logits_two_steps(reference, ids), _logits_two_steps(candidate, ids)
        diffs.append(float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()))
        scale = max(scale, float(np.abs(a).max()))
        agree.append(bool((a.argmax(-1) == b.argmax(-1)).all()))
    ref_out = reference.run([Row(p, max_new_tokens=max_new_tokens) for p in prompts])
    cand_out = candidate.run([Row(p, max_new_tokens=max_new_tokens) for p in prompts])
    same = [r.token_ids == c.token_ids for r, c in zip(ref_out, cand_out, strict=True)]
    t_ref = _latency_ms(reference, prompts, max_new_tokens)
    t_cand = _latency_ms(candidate, prompts, max_new_tokens)
    return {
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "max_abs_logit_diff": max(diffs),
        "logit_scale": scale,
        "next_token_agreement": sum(agree) / len(agree),
        "greedy_equal": sum(same),
        "greedy_agreement": sum(same) / len(same),
        "latency_ms": {"torch": t_ref, "export": t_cand},
        "speedup_x": t_ref / t_cand if t_cand else None,
    }
