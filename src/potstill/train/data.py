"""Tokenise chat rows for SFT: loss on assistant tokens only, truncation counted, right-padded batches.

    enc = encode_chat(tokenizer, messages, max_len=1024)   # EncodedRow(input_ids, labels, truncated)
    batch = collate([enc, ...], pad_id)                     # {"input_ids", "attention_mask", "labels"}

Labels are -100 (IGNORE) on system/user turns and on the template's assistant header; the assistant's content
and its end-of-turn marker carry loss, so the student learns when to stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import TrainingError

IGNORE = -100


@dataclass
class EncodedRow:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    # sparse teacher logprobs (kd.source "logprobs"): position top_start + j holds the top-k of input_ids[...+j]
    top_ids: list[list[int]] | None = None
    top_lps: list[list[float]] | None = None
    top_start: int = 0
    # packed rows (packing.py): positions restart at 0 for each example
    position_ids: list[int] | None = None

    @property
    def n_target(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _render(tokenizer: Any, messages: list[dict[str, str]], gen_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen_prompt)


def chat_segments(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, is_target) pieces, using the template's prefix property."""
    segs: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        full = _render(tokenizer, messages[: i + 1], False)
        if m["role"] == "assistant":
            head = _render(tokenizer, messages[:i], True)
            if not head.startswith(done) or not full.startswith(head):
                return _fallback_segments(tokenizer, messages)
            segs.append((head[len(done) :], False))
            segs.append((full[len(head) :], True))
        else:
            if not full.startswith(done):
                return _fallback_segments(tokenizer, messages)
            segs.append((full[len(done) :], False))
        done = full
    return [(t, tgt) for t, tgt in segs if t]


def _fallback_segments(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """Templates without the prefix property: only the final assistant turn carries loss."""
    if messages[-1]["role"] != "assistant":
        raise TrainingError("a training row must end with an assistant message")
    full = _render(tokenizer, messages, False)
    answer = messages[-1]["content"]
    at = full.rfind(answer)
    if at < 0:
        raise TrainingError("cannot locate the assistant answer in the chat template's output")
    return [(full[:at], False), (full[at:], True)]


def encode_chat(tokenizer: Any, messages: list[dict[str, str]], max_len: int) -> EncodedRow:
    ids: list[int] = []
    labels: list[int] = []
    for text, target in chat_segments(tokenizer, messages):
        toks = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(toks)
        labels.extend(toks if target else [IGNORE] * len(toks))
    truncated = len(ids) > max_len
    return EncodedRow(ids[:max_len], labels[:max_len], truncated)


def collate(rows: list[EncodedRow], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; ``real`` marks non-padding.

    Packed rows give ``position_ids`` instead of ``attention_mask`` (transformers then keeps attention inside
    each packed example); rows with teacher logprobs add ``top_ids``/``top_lp`` [B, W, K] aligned with
    ``labels`` (−inf in unused slots).
    """
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
    out = {"input_ids": ids, "labels": labels, "real": mask}
    if any(r.position_ids is not None for r in rows):
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            p = r.position_ids if r.position_ids is not None else list(range(len(r.input_ids)))
            pos[i, : len(p)] = torch.tensor(p)
            pos[i, len(p) :] = torch.arange(width - len(p))  # padding is its own segment
        out["position_ids"] = pos
    else:
        out["attention_mask"] = mask
    if any(r.top_ids for r in rows):
        k = max(len(c) for r in rows for c in (r.top_ids or [[]]))
        top_ids = torch.zeros((len(rows), width, k), dtype=torch.long)
        top_lp = torch.full((len(rows), width, k), float("-inf"))
        for i, r in enumerate(rows):
            for j, (cand, lps) in enumerate(zip(r.top_ids or [], r.top_lps or [], strict=True)):
                at = r.top_start + j
                if at >= width:
                    break
                top_ids[i, at, : len(cand)] = torch.tensor(cand, dtype=torch.long)
                top_lp[i, at, : len(lps)] = torch.tensor(lps, dtype=torch.float)
        out["top_ids"], out["top_lp"] = top_ids, top_lp
    return out
