"""The filters of the validate stage, each a function over the rows still in play -> a reason per row (None: keep).

    step = make_step("dedup", DedupFilter(near=0.8), task, all_rows)
    reasons = step(rows)            # same length as rows; "near duplicate", None, ...

A row is a teacher output as generate wrote it, plus "answer" (the task parser's reading of its output).
Row-wise filters look at one row; self_consistency, dedup and balance look at the rows together.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from ..filter_spec import (
    AnswerCheckFilter,
    BalanceFilter,
    DedupFilter,
    LengthFilter,
    MaxTokensFilter,
    RefusalFilter,
    SelfConsistencyFilter,
)
from .parsers import normalize_text
from .tasks import Task, correct_math

Row = dict[str, Any]
Step = Callable[[list[Row]], list[str | None]]

REFUSALS = (
    r"\bI(?:'m| am) (?:so |very |really )?sorry,? but\b",
    r"\bI apologi[sz]e,? but\b",
    r"\bI (?:can(?:no|')t|am unable to|'m unable to|am not able to|won't|will not) "
    r"(?:help|assist|provide|answer|comply|do that|fulfil+|complete|share)",
    r"\bas an ai(?: language model| assistant| model)?\b",
    r"\bI'm not able to (?:help|assist|provide|answer)",
    r"\b(?:this|that|your) request (?:violates|goes against)\b",
)


def _rowwise(check: Callable[[Row], str | None]) -> Step:
    return lambda rows: [check(r) for r in rows]


def nonempty(r: Row) -> str | None:
    if (r.get("output") or "").strip():
        return None
    return "teacher call failed" if r.get("finish_reason") == "error" else "empty output"


def max_tokens(opts: MaxTokensFilter) -> Step:
    def check(r: Row) -> str | None:
        if r.get("finish_reason") == "length":
            return "cut off at generation.max_tokens"
        n = r.get("completion_tokens")
        if opts.max_tokens is not None and n is not None and n > opts.max_tokens:
            return f"more than {opts.max_tokens} tokens"
        return None

    return _rowwise(check)


def answer_check(opts: AnswerCheckFilter, task: Task) -> Step:
    def check(r: Row) -> str | None:
        ref = r.get("reference")
        if ref is None:
            return "no gold answer to check against" if opts.require_reference else None
        if task.name == "math":
            ok = correct_math(r["answer"], ref, opts.tolerance)
        else:
            ok = task.correct(r["answer"], task.reference_answer(ref))
        return None if ok else "answer differs from the gold answer"

    return _rowwise(check)


def length(opts: LengthFilter) -> Step:
    def check(r: Row) -> str | None:
        text = r.get("output") or ""
        n = r.get("completion_tokens") if opts.unit == "tokens" else None
        n = len(text.split()) if n is None else n
        if n < opts.min:
            return f"shorter than {opts.min} {opts.unit}"
        if opts.max is not None and n > opts.max:
            return f"longer than {opts.max} {opts.unit}"
        return None

    return _rowwise(check)


def refusal(opts: RefusalFilter) -> Step:
    pattern = re.compile("|".join(f"(?:{p})" for p in (*REFUSALS, *opts.patterns)), re.IGNORECASE)

    def check(r: Row) -> str | None:
        texts = r.get("turn_outputs") or [r.get("output") or ""]
        return "refusal or apology" if any(pattern.search(t or "") for t in texts) else None

    return _rowwise(check)


def self_consistency(opts: SelfConsistencyFilter, task: Task, all_rows: list[Row]) -> Step:
    """Per prompt: the majority answer over all its samples; keep the first sample that gives it."""
    samples = Counter(r["id"] for r in all_rows)

    def step(rows: list[Row]) -> list[str | None]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            groups[r["id"]].append(i)
        out: list[str | None] = [None] * len(rows)
        for ex_id, idx in groups.items():
            votes = Counter(task.answer_key(rows[i]["answer"]) for i in idx if rows[i]["answer"] is not None)
            if not votes:
                for i in idx:
                    out[i] = "no answer to vote on"
                continue
            top, n = votes.most_common(1)[0]
            if n / samples[ex_id] < opts.min_agreement:
                for i in idx:
                    out[i] = f"samples agree less than min_agreement {opts.min_agreement:g}"
                continue
            chosen = next(i for i in idx if rows[i]["answer"] is not None and task.answer_key(rows[i]["answer"]) == top)
            for i in idx:
                if i == chosen:
                    continue
                same = rows[i]["answer"] is not None and task.answer_key(rows[i]["answer"]) == top
                out[i] = "majority answer kept in another sample" if same else "minority answer"
        return out

    return step


def _text_key(r: Row) -> str:
    prompt = " ".join(m["content"] for m in r.get("messages", []) if m["role"] != "system")
    return normalize_text(f"{prompt} {r.get('output') or ''}")


def dedup(opts: DedupFilter) -> Step:
    """Exact duplicates of (prompt, output) after normalisation, then near ones by word n-gram Jaccard overlap."""

    def step(rows: list[Row]) -> list[str | None]:
        seen: set[str] = set()
        index: dict[tuple[str, ...], list[int]] = defaultdict(list)  # n-gram -> kept rows holding it
        grams: list[set[tuple[str, ...]]] = []
        out: list[str | None] = []
        n = opts.ngram
        for r in rows:
            key = _text_key(r)
            if key in seen:
                out.append("exact duplicate")
                continue
            words = key.split()
            mine = {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}
            if opts.near is not None:
                shared: Counter[int] = Counter(k for g in mine for k in index.get(g, ()))
                if any(c / (len(mine) + len(grams[k]) - c) >= opts.near for k, c in shared.items()):
                    out.append("near duplicate")
                    continue
            seen.add(key)
            for g in mine:
                index[g].append(len(grams))
            grams.append(mine)
            out.append(None)
        return out

    return step


def balance_caps(counts: dict[str, int], max_share: float) -> dict[str, int]:
    """The most rows each label may keep so that no label holds more than ``max_share`` of the kept rows.

    Keeps as many rows as possible: the largest cap c with c <= max_share * sum(min(n, c)).
    """
    best = 0
    for cap in range(max(counts.values(), default=0), 0, -1):
        if cap <= max_share * sum(min(n, cap) for n in counts.values()) + 1e-9:
            best = cap
            break
    return {lab: min(n, best) for lab, n in counts.items()}


def balance(opts: BalanceFilter, task: Task) -> Step:
    def step(rows: list[Row]) -> list[str | None]:
        by_label: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            lab = task.label(r["answer"])
            if lab is not None:
                by_label[lab].append(i)
        caps = balance_caps({k: len(v) for k, v in by_label.items()}, opts.max_share)
        rng = random.Random(opts.seed)
        out: list[str | None] = [None] * len(rows)
        for lab in sorted(by_label):
            idx = by_label[lab]
            for i in rng.sample(idx, len(idx) - caps[lab]):
                out[i] = f"label over its max_share {opts.max_share:g}"
        return out

    return step


def make_step(name: str, opts: Any, task: Task, all_rows: list[Row]) -> Step:
    match name:
        case "nonempty":
            return _rowwise(nonempty)
        case "parse":
            return _rowwise(lambda r: None if r["answer"] is not None else "no parseable answer")
        case "max_tokens":
            return max_tokens(opts)
        case "answer_check":
            return answer_check(opts, task)
        case "self_consistency":
            return self_consistency(opts, task, all_rows)
        case "length":
            return length(opts)
        case "dedup":
            return dedup(opts)
        case "refusal":
            return refusal(opts)
        case "balance":
            return balance(opts, task)
    raise ValueError(f"unknown filter {name!r}")
