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
    # the row as the teacher was asked it (its own prompt, e.g. with the task's system message): teacher_ids are
    # the teacher's tokens, teacher_at[j] the teacher position of student position j (-1: none), teacher_pos its
    # position ids (packed rows). None: the teacher reads input_ids (kd.attach_teacher_prompt)
    teacher_ids: list[int] | None = None
    teacher_at: list[int] | None = None
    teacher_pos: list[int] | None = None

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


@dataclass
class RowTensors:
    """One row as tensors, built once and reused for every batch the row is in (see Collator)."""

    ids: torch.Tensor  # [n] long
    labels: torch.Tensor  # [n] long
    position_ids: torch.Tensor | None  # [n] long, packed rows only
    top_ids: torch.Tensor | None  # [m, k] long: candidates for positions top_start .. top_start + m - 1
    top_lp: torch.Tensor | None  # [m, k] float, -inf in unused slots
    top_start: int
    t_ids: torch.Tensor | None = None  # [m] long: the teacher's version of the row (EncodedRow.teacher_ids)
    t_at: torch.Tensor | None = None  # [n] long: teacher position of each student position, -1 where none
    t_pos: torch.Tensor | None = None  # [m] long: the teacher row's position ids (packed rows)


def _long(x: list[int] | None) -> torch.Tensor | None:
    return None if x is None else torch.tensor(x, dtype=torch.long)


def row_tensors(r: EncodedRow) -> RowTensors:
    top_ids = top_lp = None
    if r.top_ids:
        lps = r.top_lps or []
        if len(lps) != len(r.top_ids):
            raise ValueError(f"top_ids has {len(r.top_ids)} positions but top_lps has {len(lps)}")
        k = max(len(c) for c in r.top_ids)
        if all(len(c) == k for c in r.top_ids) and all(len(v) == k for v in lps):
            top_ids = torch.tensor(r.top_ids, dtype=torch.long).reshape(len(r.top_ids), k)
            top_lp = torch.tensor(lps, dtype=torch.float).reshape(len(r.top_ids), k)
        else:  # ragged candidate lists (dropped candidates, packing gaps): pad each position, one tensor each
            top_ids = torch.tensor([[*c, *[0] * (k - len(c))] for c in r.top_ids], dtype=torch.long)
            top_lp = torch.tensor([[*v, *[float("-inf")] * (k - len(v))] for v in lps], dtype=torch.float)
    return RowTensors(
        torch.tensor(r.input_ids, dtype=torch.long),
        torch.tensor(r.labels, dtype=torch.long),
        torch.tensor(r.position_ids, dtype=torch.long) if r.position_ids is not None else None,
        top_ids,
        top_lp,
        r.top_start,
        _long(r.teacher_ids),
        _long(r.teacher_at),
        _long(r.teacher_pos),
    )


def collate_tensors(rows: list[RowTensors], pad_id: int) -> dict[str, torch.Tensor]:
    """``collate`` on rows already turned into tensors (a handful of tensor operations per batch)."""
    pad = torch.nn.utils.rnn.pad_sequence
    lens = torch.tensor([len(r.ids) for r in rows])
    width = int(lens.max())
    col = torch.arange(width)
    real = col < lens[:, None]
    ids = pad([r.ids for r in rows], batch_first=True, padding_value=pad_id)
    labels = pad([r.labels for r in rows], batch_first=True, padding_value=IGNORE)
    mask = real.long()
    out = {"input_ids": ids, "labels": labels, "real": mask}
    if any(r.position_ids is not None for r in rows):
        pos = pad(
            [r.position_ids if r.position_ids is not None else torch.arange(len(r.ids)) for r in rows],
            batch_first=True,
        )
        out["position_ids"] = torch.where(real, pos, col - lens[:, None])  # padding is its own segment
    else:
        out["attention_mask"] = mask
    tops = [r for r in rows if r.top_ids is not None]
    if tops:
        k = max(r.top_ids.size(1) for r in tops if r.top_ids is not None)
        top_ids = torch.zeros((len(rows), width, k), dtype=torch.long)
        top_lp = torch.full((len(rows), width, k), float("-inf"))
        for i, r in enumerate(rows):
            if r.top_ids is None or r.top_lp is None:
                continue
            n = max(0, min(r.top_ids.size(0), width - r.top_start))
            top_ids[i, r.top_start : r.top_start + n, : r.top_ids.size(1)] = r.top_ids[:n]
            top_lp[i, r.top_start : r.top_start + n, : r.top_lp.size(1)] = r.top_lp[:n]
        out["top_ids"], out["top_lp"] = top_ids, top_lp
    if any(r.t_ids is not None for r in rows):
        out |= _teacher_rows(rows, pad_id)
    return out


def _teacher_rows(rows: list[RowTensors], pad_id: int) -> dict[str, torch.Tensor]:
    """The teacher's rows of a batch where some row was asked with another prompt: ``t_input_ids`` with
    ``t_attention_mask`` (or ``t_position_ids`` when packed), and ``t_at`` [B, W]: the teacher position holding
    each student position's logits (-1: none; rows without their own version map to themselves)."""
    pad = torch.nn.utils.rnn.pad_sequence
    ids = [r.t_ids if r.t_ids is not None else r.ids for r in rows]
    lens = torch.tensor([len(x) for x in ids])
    real = torch.arange(int(lens.max())) < lens[:, None]
    at = [r.t_at if r.t_at is not None else torch.arange(len(r.ids)) for r in rows]
    out = {"t_input_ids": pad(ids, batch_first=True, padding_value=pad_id)}
    out["t_at"] = pad(at, batch_first=True, padding_value=-1)  # one per student position: W wide
    if any(r.position_ids is not None for r in rows):
        own = [r.position_ids if r.position_ids is not None else torch.arange(len(r.ids)) for r in rows]
        pos = [r.t_pos if r.t_pos is not None else p for r, p in zip(rows, own, strict=True)]
        col = torch.arange(real.shape[1])
        out["t_position_ids"] = torch.where(real, pad(pos, batch_first=True), col - lens[:, None])
    else:
        out["t_attention_mask"] = real.long()
    return out


def collate(rows: list[EncodedRow], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; ``real`` marks non-padding.

    Packed rows give ``position_ids`` instead of ``attention_mask`` (transformers then keeps attention inside
    each packed example); rows with teacher logprobs add ``top_ids``/``top_lp`` [B, W, K] aligned with
    ``labels`` (−inf in unused slots).
    """
    return collate_tensors([row_tensors(r) for r in rows], pad_id)


class Collator:
    """``collate`` for batches drawn again and again from the same rows: each row becomes tensors once.

    Turning Python lists into tensors every step cost ~1 ms per SFT batch of 32 and ~10 ms with top-20 teacher
    logprobs (two small tensors per position) in the training loop; cached, a batch is a few tensor operations.
    Rows must not change while a Collator uses them.
    """

    def __init__(self, rows: list[EncodedRow], pad_id: int) -> None:
        # All at once, before training churns the heap: built lazily between steps, these small long-lived
        # tensors pinned the allocator's freed activation memory (RSS grew ~6 MB per step on CPU).
        self.rows, self.pad_id = rows, pad_id
        self._cache = [row_tensors(r) for r in rows]

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return collate_tensors([self._cache[i] for i in indices], self.pad_id)
