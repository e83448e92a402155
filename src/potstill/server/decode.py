"""One incremental decode loop for every backend (torch or ONNX Runtime): batched, left-padded, per-row settings.

    rows = [Row(prompt_ids=[...], max_new_tokens=32, temperature=0.0), ...]
    results = decode(backend, tokenizer, rows, stop_ids=[eos])      # -> [Result], in input order

Each row keeps its own max_new_tokens, temperature, top_p, seed, stop strings and logprobs setting, so requests
with different parameters share one batch. ``Row.on_delta`` receives the new text as it is generated (streaming);
text that might be the start of a stop string is held back until it is known not to be one.
A backend is anything with ``forward(input_ids, attention_mask, position_ids, past) -> (last_logits, past)`` on
numpy int64 arrays, returning float logits of shape (batch, vocab).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class Backend(Protocol):
    def forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: Any
    ) -> tuple[np.ndarray, Any]: ...


@dataclass
class Row:
    prompt_ids: list[int]
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # None: off; 0: the chosen token's only; k: also the k most likely
    on_delta: Callable[[str], None] | None = None
    cancelled: bool = False  # set from another thread (client went away): the row stops at the next step


@dataclass
class Result:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled" (the row was cancelled; never sent to a client)
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int]
    logprobs: list[dict[str, Any]] | None = None


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def choose(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy at temperature 0; else nucleus sampling from softmax(logits / temperature)."""
    if temperature <= 0:
        return int(np.argmax(logits))
    logp = log_softmax(logits / temperature)
    p = np.exp(logp)
    order = np.argsort(-p, kind="stable")
    if top_p < 1.0:
        cum = np.cumsum(p[order])
        keep = int(np.searchsorted(cum, top_p) + 1)
        order = order[:keep]
    q = p[order] / p[order].sum()
    return int(order[rng.choice(len(order), p=q)])


class _State:
    """Per-row bookkeeping: tokens so far, emitted text, finish reason."""

    def __init__(self, row: Row, tokenizer: Any) -> None:
        self.row = row
        self.tok = tokenizer
        self.ids: list[int] = []
        self.emitted = 0
        self.finish: str | None = None
        self.text = ""
        self.rng = np.random.default_rng(row.seed)
        self.hold = max((len(s) for s in row.stop), default=1) - 1
        self.logprobs: list[dict[str, Any]] | None = [] if row.logprobs is not None else None

    def piece(self, i: int) -> str:
        return self.tok.decode([i], skip_special_tokens=False)

    def record_logprobs(self, logits: np.ndarray, chosen: int) -> None:
        if self.logprobs is None:
            return
        lp = log_softmax(logits)
        entry: dict[str, Any] = {"token": self.piece(chosen), "logprob": float(lp[chosen]), "top_logprobs": []}
        k = self.row.logprobs or 0
        if k:
            top = np.argsort(-lp, kind="stable")[:k]
            entry["top_logprobs"] = [{"token": self.piece(int(t)), "logprob": float(lp[t])} for t in top]
        for e in (entry, *entry["top_logprobs"]):
            e["bytes"] = list(e["token"].encode("utf-8"))
        self.logprobs.append(entry)

    def push(self, token: int, stop_ids: set[int]) -> None:
        if token in stop_ids:
            self.finish = "stop"
        else:
            self.ids.append(token)
            self.text = self.tok.decode(self.ids, skip_special_tokens=True)
            cut = min((k for k in (self.text.find(s) for s in self.row.stop if s) if k >= 0), default=-1)
            if cut >= 0:
                self.text, self.finish = self.text[:cut], "stop"
            elif len(self.ids) >= self.row.max_new_tokens:
                self.finish = "length"
        if self.row.cancelled and self.finish is None:
            self.finish = "cancelled"
        self.flush(final=self.finish is not None)

    def flush(self, final: bool) -> None:
        end = len(self.text) if final else len(self.text) - self.hold
        if not final:
            while end > self.emitted and self.text[end - 1] == "\ufffd":  # an incomplete UTF-8 sequence
                end -= 1
        if end > self.emitted:
            if self.row.on_delta is not None:
                self.row.on_delta(self.text[self.emitted : end])
            self.emitted = end


def decode(backend: Backend, tokenizer: Any, rows: list[Row], stop_ids: list[int], pad_id: int) -> list[Result]:
    """Generate for every row at once; rows that finish early ride along (fed padding) until all are done."""
    if not rows:
        return []
    width = max(len(r.prompt_ids) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, width - len(r.prompt_ids) :] = r.prompt_ids
        mask[i, width - len(r.prompt_ids) :] = 1
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    states = [_State(r, tokenizer) for r in rows]
    stops = set(stop_ids)
    for s in states:
        if s.row.cancelled:
            s.finish = "cancelled"
        elif s.row.max_new_tokens <= 0:
            s.finish = "length"
    if any(s.finish is None for s in states):
        logits, past = backend.forward(ids, mask, pos, None)
    while any(s.finish is None for s in states):
        nxt = np.full((len(rows), 1), pad_id, dtype=np.int64)
        for i, s in enumerate(states):
            if s.finish is not None:
                continue
            t = choose(logits[i], s.row.temperature, s.row.top_p, s.rng)
            if t not in stops:
                s.record_logprobs(logits[i], t)
            s.push(t, stops)
            nxt[i, 0] = t
        if all(s.finish is not None for s in states):
            break
        pos = pos[:, -1:] + 1
        mask = np.concatenate([mask, np.ones((len(rows), 1), dtype=np.int64)], axis=1)
        logits, past = backend.forward(nxt, mask, pos, past)
    return [Result(s.text, s.finish or "length", len(s.row.prompt_ids), len(s.ids), s.ids, s.logprobs) for s in states]
