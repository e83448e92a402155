"""teacher/teaching.json: what several teachers did in the generate stage (the report's source).

teaching_summary(spec, teaching, teacher_set, results, ledger) -> {
    "strategy", "teaching": the spec's settings,
    "teachers": {name: {"kind", "model", "input_price_per_mtok", "output_price_per_mtok", "requests",
                        "from_cache", "answered", "failed", "failure_reasons", "prompts_answered",
                        "rows_chosen", "rows_chosen_by_split", "prompt_tokens", "completion_tokens",
                        "cost_usd" (this stage's answers; null when unpriced), "ledger" (every call in the
                        cache under its name, evaluation's too)}},
    "splits": {split: {"prompts", "rows_chosen", "unanswered", "dropped": {why: n}, "funnel"}},
    "funnel": [{"teacher", "in", "accepted", "escalated", "kept_failing", "reasons": {check: n}}] (cascade,
              both splits summed),
    "agreement": [{"teachers": [a, b], "rows": n, "agree": k, "rate": k / n}],   rows both answered
    "cost": {"actual_usd", "reference", "all_to_reference_usd", "saved_usd", "saved_pct", "how"} | null}
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any

from ..config import JobSpec
from ..config_teachers import price, reference_teacher
from .multi import SplitResult, TeacherSet


def teaching_summary(
    spec: JobSpec, teaching: Any, ts: TeacherSet, results: dict[str, SplitResult], ledger: dict[str, Any]
) -> dict[str, Any]:
    teachers = {}
    for name, t in spec.named_teachers().items():
        st = ts.stats[name]
        teachers[name] = {
            "kind": t.kind,
            "model": t.model,
            "input_price_per_mtok": getattr(t, "input_price_per_mtok", None),
            "output_price_per_mtok": getattr(t, "output_price_per_mtok", None),
            "requests": st.requests,
            "from_cache": st.from_cache,
            "answered": st.requests - st.failed,
            "failed": st.failed,
            "failure_reasons": dict(st.reasons.most_common(10)),
            "prompts_answered": len(st.prompts),
            "rows_chosen": sum(st.selected.values()),
            "rows_chosen_by_split": dict(st.selected),
            "prompt_tokens": st.prompt_tokens,
            "completion_tokens": st.completion_tokens,
            "cost_usd": round(st.cost_usd, 6) if st.priced else None,
            "ledger": (ledger.get("teachers") or {}).get(name),
        }
    splits = {
        split: {
            "prompts": r.prompts,
            "rows_chosen": len(r.chosen),
            "unanswered": r.unanswered,
            "dropped": dict(r.dropped),
            "funnel": r.funnel,
        }
        for split, r in results.items()
    }
    return {
        "strategy": teaching.strategy,
        "teaching": teaching.model_dump(mode="json", exclude_none=True),
        "teachers": teachers,
        "splits": splits,
        "funnel": merged_funnel([r.funnel for r in results.values()]),
        "agreement": agreement(ts, results),
        "cost": cost_saved(spec, ts, results),
    }


def merged_funnel(funnels: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The cascade's steps summed over the splits (a split may stop early: no row left to escalate)."""
    out: list[dict[str, Any]] = []
    for funnel in funnels:
        for i, step in enumerate(funnel):
            if i == len(out):
                out.append({"teacher": step["teacher"], "in": 0, "accepted": 0, "escalated": 0, "kept_failing": 0})
                out[i]["reasons"] = {}
            for k in ("in", "accepted", "escalated", "kept_failing"):
                out[i][k] += step.get(k, 0)
            for why, n in step["reasons"].items():
                out[i]["reasons"][why] = out[i]["reasons"].get(why, 0) + n
    return out


def agreement(ts: TeacherSet, results: dict[str, SplitResult]) -> list[dict[str, Any]]:
    """For each pair of teachers: on the rows both answered, how often their answers agree (each teacher's
    majority answer over its samples, compared as the task compares answers)."""
    task = ts.task
    votes: dict[tuple[str, str], dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for split, res in results.items():
        for r in res.answers:
            if r.get("answer") is None or r.get("teacher") is None:
                continue
            key = task.answer_key(r["answer"])
            mine = votes[(split, str(r["id"]))][r["teacher"]]
            mine[key] = mine.get(key, 0) + 1
    out = []
    for a, b in combinations(ts.names, 2):
        both = [v for v in votes.values() if a in v and b in v]
        agree = sum(1 for v in both if _top(v[a]) == _top(v[b]))
        out.append({"teachers": [a, b], "rows": len(both), "agree": agree, "rate": agree / len(both) if both else None})
    return out


def _top(counts: dict[str, int]) -> str:
    return max(counts, key=lambda k: counts[k])


def cost_saved(spec: JobSpec, ts: TeacherSet, results: dict[str, SplitResult]) -> dict[str, Any] | None:
    """This stage's cost against sending every row to the dearest teacher (each answer it did give here at its
    measured cost per answer; else the answers' mean tokens at its prices). None when no teacher is priced."""
    teachers = spec.named_teachers()
    if all(price(t) is None for t in teachers.values()):
        return None
    ref = reference_teacher(spec.teacher_list(), spec.teaching)
    t, st = teachers[ref], ts.stats[ref]
    answered = st.requests - st.failed
    calls = sum(r.prompts for r in results.values()) * spec.generation.samples
    if answered and st.priced:
        per_call, how = st.cost_usd / answered, f"{ref}'s measured cost per answer here ({answered} answers)"
    else:
        n = sum(s.requests - s.failed for s in ts.stats.values()) or 1
        pt = sum(s.prompt_tokens for s in ts.stats.values()) / n
        ct = sum(s.completion_tokens for s in ts.stats.values()) / n
        per_call = (
            pt * (getattr(t, "input_price_per_mtok", 0) or 0) + ct * (getattr(t, "output_price_per_mtok", 0) or 0)
        ) / 1e6
        how = f"the answers' mean tokens ({pt:.0f} prompt, {ct:.0f} completion) at {ref}'s prices"
    actual = sum(s.cost_usd for s in ts.stats.values())
    full = per_call * calls
    return {
        "actual_usd": round(actual, 6),
        "reference": ref,
        "all_to_reference_usd": round(full, 6),
        "saved_usd": round(full - actual, 6),
        "saved_pct": round(100 * (full - actual) / full, 2) if full else None,
        "how": f"{calls} answers ({spec.generation.samples} per prompt) at {how}; unpriced teachers count as free",
    }
