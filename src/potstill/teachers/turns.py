"""Conversation rows: the teacher regenerates every assistant turn in order, each with the conversation so far.

    rows = regenerate(examples, samples=1, ask=ask)
    # ask([(messages, sample), ...]) -> [{"response", "finish_reason", "completion_tokens"} | None, ...]
    #                                     (a failed call: {"finish_reason": "error", "error": why} or None)

Turn k of every conversation is asked in one batch, after turn k-1 of all of them, so a batched or concurrent
teacher stays busy. The conversation the teacher sees holds the user's turns and the teacher's own earlier
replies (the row's original assistant turns are only references). A conversation whose turn fails stops there
and yields a failed row (finish_reason "error", which the `nonempty` filter rejects, and "error": the reason,
the server's message when it sent one), counted like any failed row by generation's min_success_ratio gate.

Each row is shaped like the generate stage's other rows: ``messages`` (everything before the last reply),
``output`` (the last reply), plus ``turn_outputs`` (every reply, in order) and ``references`` (the row's
original assistant turns).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..data.jsonl import Example

Messages = list[dict[str, str]]
Ask = Callable[[list[tuple[Messages, int]]], list[dict[str, Any] | None]]


def split_turns(ex: Example) -> tuple[Messages, list[str], list[str]]:
    """(leading system message or [], the user turns, the original assistant turns incl. the reference)."""
    head = ex.messages[:1] if ex.messages and ex.messages[0]["role"] == "system" else []
    users = [m["content"] for m in ex.messages if m["role"] == "user"]
    refs = [m["content"] for m in ex.messages if m["role"] == "assistant"]
    if ex.reference is not None:
        refs.append(ex.reference)
    return head, users, refs


def regenerate(examples: list[Example], samples: int, ask: Ask) -> list[dict[str, Any]]:
    """One row per example and sample, in input order, every assistant turn written by the teacher."""
    states = []
    for ex in examples:
        head, users, refs = split_turns(ex)
        for s in range(samples):
            states.append({"ex": ex, "sample": s, "conv": list(head), "users": users, "refs": refs, "replies": []})
    live = [st for st in states if st["users"]]
    turn = 0
    while live:
        batch = [st for st in live if turn < len(st["users"])]
        if not batch:
            break
        asked = [(*st["conv"], {"role": "user", "content": st["users"][turn]}) for st in batch]
        replies = ask([(list(msgs), st["sample"]) for msgs, st in zip(asked, batch, strict=True)])
        for st, msgs, rep in zip(batch, asked, replies, strict=True):
            st["replies"].append(rep)
            if rep is None or rep.get("finish_reason") == "error" or not (rep.get("response") or "").strip():
                empty = rep is not None and rep.get("finish_reason") != "error"
                why = "the teacher's reply is empty" if empty else (rep or {}).get("error") or "no answer"
                st["failed"] = f"turn {turn + 1}: {why}"
                continue
            st["conv"] = [*msgs, {"role": "assistant", "content": rep["response"]}]
        live = [st for st in batch if not st.get("failed")]
        turn += 1
    return [_row(st) for st in states]


def _row(st: dict[str, Any]) -> dict[str, Any]:
    ex: Example = st["ex"]
    replies = st["replies"]
    last = replies[-1] if replies else None
    failed = st.get("failed") or last is None
    conv = st["conv"]
    finish = "error" if failed else last["finish_reason"]
    if not failed and any(r and r.get("finish_reason") == "length" for r in replies):
        finish = "length"  # an earlier turn cut off: the conversation is not one the student should learn
    row = {
        "id": ex.id,
        "sample": st["sample"],
        "messages": conv[:-1] if not failed else ex.messages,
        "output": None if failed else last["response"],
        "finish_reason": finish,
        "completion_tokens": None if failed else last.get("completion_tokens"),
        "reference": ex.reference,
        "turn_outputs": [r.get("response") if r else None for r in replies],
        "references": st["refs"],
    }
    if failed:
        row["error"] = st.get("failed") if isinstance(st.get("failed"), str) else "no answer"
    return row


def generate_split(
    spec: Any, task: Any, examples: list[Example], answerer: Any, rd: Any, split: str
) -> tuple[dict[str, Any], dict[str, int]]:
    """The generate stage for one conversation split, turn by turn through the request cache (resumable):
    (counts, failure reason -> failed conversations), for the min_success_ratio gate."""
    from .generate import build_request

    asked = cached = 0

    def ask(batch: list[tuple[Messages, int]]) -> list[dict[str, Any] | None]:
        nonlocal asked, cached
        reqs = [build_request(spec, task, Example(f"turn-{i}", msgs), s) for i, (msgs, s) in enumerate(batch)]
        ans = answerer.answer(reqs, split)
        asked, cached = asked + len(reqs), cached + len(ans.from_cache & {r.key for r in reqs})
        failed = {"finish_reason": "error", "response": None}
        return [ans.rows.get(r.key) or {**failed, "error": ans.failures.get(r.key, "no answer")} for r in reqs]

    rows = regenerate(examples, spec.generation.samples, ask)
    with rd.open_jsonl(rd.outputs / f"{split}.jsonl") as write:
        for row in rows:
            write(row)
    reasons: dict[str, int] = {}
    for row in rows:
        if "error" in row:
            reasons[row["error"]] = reasons.get(row["error"], 0) + 1
    failed = sum(reasons.values())
    rd.event("generate", "split", split=split, requests=asked, cached=cached, conversations=len(rows), failed=failed)
    return {"prompts": asked, "from_cache": cached, "conversations": len(rows), "failed": failed}, reasons
