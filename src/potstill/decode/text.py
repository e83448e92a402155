"""Text on top of the decoder: stop strings, streamed deltas with hold-back, and logprobs in the OpenAI format.

    rows = [Row(prompt_ids, max_new_tokens=32, stop=["\\n\\n"], on_delta=print), ...]
    results = generate_text(engine, tokenizer, rows)          # -> [Result], in input order
    generate_text(engine, tokenizer, first, more=poll)        # serving: poll(free) -> new Rows while running

A Row is an engine Request with text-level settings; each row keeps its own max_new_tokens, temperature, top_p,
seed, stop strings and logprobs, so requests with different parameters share one batch. ``on_delta`` receives
the new text as it is generated: text that might be the start of a stop string is held back until it is known
not to be one, and an incomplete UTF-8 sequence until it is complete. ``on_result`` fires as the row ends.
The engine owns ``on_token`` and ``on_done`` of a Row (this module sets them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .engine import NO_LOGPROB, Engine, Output, Request


@dataclass
class Result:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled" (the row was cancelled; never sent to a client)
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int]
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class Row(Request):
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=list)
    on_delta: Callable[[str], None] | None = None
    on_result: Callable[[Result], None] | None = None

    @property
    def prompt_ids(self) -> list[int]:
        return self.ids


def first_stop(text: str, stops: list[str]) -> int:
    """Where the earliest stop string starts in ``text``; -1 when none does."""
    return min((k for k in (text.find(s) for s in stops if s) if k >= 0), default=-1)


class TextState:
    """One row's text: the tokens so far decoded, cut at a stop string, and how much was streamed."""

    def __init__(self, row: Row, tokenizer: Any) -> None:
        self.row, self.tok = row, tokenizer
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.hold = max((len(s) for s in row.stop), default=1) - 1
        self.result: Result | None = None
        # nothing streamed and no stop string to look for: the text is decoded once, at the end (decoding the
        # answer so far at every token cost ~40 µs a token, a fifth of a small model's decode step)
        row.on_token = self.push if row.stop or row.on_delta is not None else None
        row.on_done = self.done

    def push(self, token: int) -> bool:
        """The engine's ``on_token``: True when the text now contains a stop string (cut before it)."""
        self.ids.append(token)
        self.text = self.tok.decode(self.ids, skip_special_tokens=True)
        cut = first_stop(self.text, self.row.stop)
        if cut >= 0:
            self.text = self.text[:cut]
        self.flush(final=cut >= 0)
        return cut >= 0

    def flush(self, final: bool) -> None:
        end = len(self.text) if final else len(self.text) - self.hold
        if not final:
            while end > self.emitted and self.text[end - 1] == "\ufffd":  # an incomplete UTF-8 sequence
                end -= 1
        if end > self.emitted:
            if self.row.on_delta is not None:
                self.row.on_delta(self.text[self.emitted : end])
            self.emitted = end

    def done(self, out: Output) -> None:
        """The engine's ``on_done``: stream what was held back, build the Result, tell ``on_result``."""
        if self.row.on_token is None:
            self.ids = list(out.tokens)
            self.text = self.tok.decode(self.ids, skip_special_tokens=True)
        self.flush(final=True)
        lp = logprob_entries(self.tok, out, self.row.logprobs)
        self.result = Result(self.text, out.finish, len(self.row.ids), len(out.tokens), out.tokens, lp)
        if self.row.on_result is not None:
            self.row.on_result(self.result)


def logprob_entries(tokenizer: Any, out: Output, k: int | None) -> list[dict[str, Any]] | None:
    """OpenAI's ``logprobs.content``: per kept token its text, logprob, bytes and the ``k`` most likely."""
    if k is None:
        return None

    def entry(token: int, logprob: float) -> dict[str, Any]:
        text = tokenizer.decode([token], skip_special_tokens=False)
        return {"token": text, "logprob": float(logprob), "bytes": list(text.encode("utf-8"))}

    entries = []
    for n, t in enumerate(out.tokens):
        ids, vals = (out.top[0][n], out.top[1][n]) if out.top is not None else ([], [])
        e = entry(t, out.chosen[n] if out.chosen else NO_LOGPROB)
        e["top_logprobs"] = [entry(i, v) for i, v in zip(ids, vals, strict=True)]
        entries.append(e)
    return entries


def generate_text(
    engine: Engine, tokenizer: Any, rows: list[Row], more: Callable[[int], list[Row]] | None = None
) -> list[Result]:
    """Decode ``rows`` (and, with ``more``, what it brings while the engine runs); Results of ``rows`` in order."""
    states = [TextState(r, tokenizer) for r in rows]

    def more_rows(free: int) -> list[Request]:
        assert more is not None
        new = more(free)
        for r in new:
            TextState(r, tokenizer)
        return list(new)

    engine.generate(list(rows), more_rows if more is not None else None)
    out = []
    for s in states:
        assert s.result is not None
        out.append(s.result)
    return out
