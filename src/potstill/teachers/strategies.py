"""The three ways several teachers share a split's rows (teachers/multi.py runs them; docs/teachers.md).

    route_split(ts, teaching, examples, "train")     # each row to one teacher (a field, the task type, its length)
    cascade_split(...)                                # cheapest first; on to the next teacher when a check fails
    pool_split(...)                                   # every teacher answers; vote, answer check, logprob, agreeing

Each returns a SplitResult: the chosen rows (in input order, each with "teacher" and "chosen": why) and every
answer of every teacher (with "selected" and "why").
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from ..config_teachers import CascadeTeaching, LogprobCheck, PoolTeaching, RouteTeaching, SelfConsistencyCheck
from ..data.checks import REFUSALS
from ..data.jsonl import Example
from ..data.tasks import Task, correct_math
from ..errors import DataError
from .multi import Row, SplitResult, TeacherSet


# --------------------------------------------------------------------------------------------- route
def route_of(teaching: RouteTeaching, ex: Example, task_type: str) -> tuple[str, str]:
    """(teacher name, why) for one row; DataError when the map has no teacher for it."""
    if teaching.by == "length":
        n = len(ex.prompt_text) if teaching.unit == "chars" else len(ex.prompt_text.split())
        for limit in sorted(int(k) for k in teaching.map if k != "*"):
            if n <= limit:
                return teaching.map[str(limit)], f"route: prompt of {n} {teaching.unit} <= {limit}"
        if "*" in teaching.map:
            return teaching.map["*"], f"route: prompt of {n} {teaching.unit} (longer than every limit)"
        raise DataError(
            f"row {ex.id!r}: its prompt has {n} {teaching.unit}, longer than every limit in teaching.map; "
            "add a '*' entry for longer prompts"
        )
    if teaching.by == "task_type":
        value, what = task_type, "task_type"
    else:
        raw = ex.raw.get(teaching.field or "")
        value, what = ("" if raw is None else str(raw)), str(teaching.field)
    if value in teaching.map:
        return teaching.map[value], f"route: {what} = {value!r}"
    if "*" in teaching.map:
        return teaching.map["*"], f"route: {what} = {value!r} (the '*' entry)"
    if teaching.by == "field" and ex.raw.get(what) is None:
        raise DataError(f"row {ex.id!r} has no field {what!r} and teaching.map has no '*' entry; add one for such rows")
    raise DataError(
        f"row {ex.id!r}: {what} {value!r} has no teacher in teaching.map ({sorted(teaching.map)}); add it, or a "
        "'*' entry for every other value"
    )


def route_split(ts: TeacherSet, teaching: RouteTeaching, examples: list[Example], split: str) -> SplitResult:
    routed = [(ex, *route_of(teaching, ex, ts.spec.task_type)) for ex in examples]
    samples = ts.spec.generation.samples
    rows: dict[str, list[Row]] = {}
    for name in ts.names:
        mine = [ex for ex, n, _ in routed if n == name]
        if ts.task.name == "conversation":
            from .turns import regenerate

            convs = regenerate(mine, samples, lambda batch, name=name: ts.ask_messages(name, batch, split))
            for row in convs:
                row["teacher"] = name
                rows.setdefault(row["id"], []).append(row)
            continue
        got = ts.ask(name, mine, samples, split)
        for ex in mine:
            rows[ex.id] = [got[(ex.id, s)] for s in range(samples)]
    res = SplitResult([], [], prompts=len(examples))
    for ex, _, why in routed:
        mine = rows[ex.id]
        if all(r.get("output") is None for r in mine):
            res.unanswered += 1
        for r in mine:
            res.chosen.append({**r, "chosen": why})
            res.answers.append({**r, "selected": True, "why": why})
    return res


# --------------------------------------------------------------------------------------------- checks
def _refusal_pattern(patterns: list[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in (*REFUSALS, *patterns)), re.IGNORECASE)


def is_correct(task: Task, answer: str | None, reference: str | None, tolerance: float) -> bool | None:
    """The answer against the row's gold one (None: the row has none)."""
    if reference is None:
        return None
    if answer is None:
        return False
    if task.name == "math":
        return correct_math(answer, reference, tolerance)
    return bool(task.correct(answer, task.reference_answer(reference)))


def judge(
    rows: list[Row], checks: list[tuple[str, Any]], task: Task, reference: str | None
) -> tuple[str | None, list[Row], str]:
    """(the first check that fails, or None; the samples still standing; a note). A check narrows the samples
    to those passing it; self_consistency looks at every sample: the majority answer's share of them."""
    alive = [r for r in rows if r.get("output") is not None]
    if not alive:
        return "no answer", [], "the teacher call failed"
    notes = []
    for name, opts in checks:
        match name:
            case "parse":
                alive = [r for r in alive if r["answer"] is not None]
            case "answer_check":
                alive = [r for r in alive if is_correct(task, r["answer"], reference, opts.tolerance) is not False]
            case "refusal":
                pat = _refusal_pattern(opts.patterns)
                alive = [r for r in alive if not pat.search(r.get("output") or "")]
            case "logprob":
                assert isinstance(opts, LogprobCheck)
                alive = [r for r in alive if r.get("mean_logprob") is not None and r["mean_logprob"] >= opts.min_mean]
            case "self_consistency":
                assert isinstance(opts, SelfConsistencyCheck)
                votes = Counter(task.answer_key(r["answer"]) for r in rows if r.get("answer") is not None)
                top, n = votes.most_common(1)[0] if votes else (None, 0)
                notes.append(f"{n} of {len(rows)} samples agree")
                if n / len(rows) < opts.min_agreement:
                    return name, [], notes[-1]
                alive = [r for r in alive if r.get("answer") is not None and task.answer_key(r["answer"]) == top]
        if not alive:
            return name, [], "; ".join(notes)
    return None, alive, "; ".join(notes)


# --------------------------------------------------------------------------------------------- cascade
def cascade_split(ts: TeacherSet, teaching: CascadeTeaching, examples: list[Example], split: str) -> SplitResult:
    checks = teaching.checks()
    sc = dict(checks).get("self_consistency")
    order = teaching.order or ts.names
    want = ts.spec.generation.samples
    res = SplitResult([], [], prompts=len(examples))
    chosen: dict[str, list[Row]] = {}
    pending = list(examples)
    for level, name in enumerate(order):
        last = level == len(order) - 1
        n = want if last else max(want, sc.samples if isinstance(sc, SelfConsistencyCheck) else 1)
        got = ts.ask(name, pending, n, split, token_logprobs=not last and any(c == "logprob" for c, _ in checks))
        # the last teacher is asked as generation says (no logprobs, no extra samples): checked on what it gives
        mine = [(c, o) for c, o in checks if not last or (c != "logprob" and (c != "self_consistency" or n > 1))]
        step: dict[str, Any] = {"teacher": name, "in": len(pending), "accepted": 0, "escalated": 0, "kept_failing": 0}
        reasons: Counter[str] = Counter()
        where = f"cascade step {level + 1} of {len(order)} ({name})"
        nxt = []
        for ex in pending:
            rows = [got[(ex.id, s)] for s in range(n)]
            failed, alive, note = judge(rows, mine, ts.task, ex.reference)
            if failed is not None:
                reasons[failed] += 1
            if failed is not None and not last:
                step["escalated"] += 1
                why = f"escalated: {failed}" + (f" ({note})" if note else "")
                res.answers += [{**r, "selected": False, "why": why} for r in rows]
                nxt.append(ex)
                continue
            if failed is None:
                step["accepted"] += 1
                why = f"{where}: passed {', '.join(c for c, _ in mine) or 'no check'}" + (f" ({note})" if note else "")
            elif failed == "no answer":
                res.unanswered += 1
                why = f"{where}, the last: {note}"
            else:
                step["kept_failing"] += 1
                why = f"{where}, the last: kept although it fails {failed}"
            keep = (alive or [r for r in rows if r.get("output") is not None] or rows)[:want]
            chosen[ex.id] = [{**_renumbered(r, k), "chosen": why} for k, r in enumerate(keep)]
            res.answers += [{**r, "selected": any(r is x for x in keep), "why": why} for r in rows]
        step["reasons"] = dict(reasons)
        res.funnel.append(step)
        pending = nxt
        if not pending:
            break
    res.chosen = [r for ex in examples for r in chosen.get(ex.id, [])]
    return res


def _renumbered(r: Row, k: int) -> Row:
    """The row as the k-th chosen sample of its prompt (the teacher's own sample index kept beside it)."""
    return {**r, "sample": k, "teacher_sample": r["sample"]}


# --------------------------------------------------------------------------------------------- pool
def pool_split(ts: TeacherSet, teaching: PoolTeaching, examples: list[Example], split: str) -> SplitResult:
    order = teaching.order or ts.names
    n = ts.spec.generation.samples
    got = {name: ts.ask(name, examples, n, split, token_logprobs=teaching.select == "logprob") for name in order}
    res = SplitResult([], [], prompts=len(examples))
    for ex in examples:
        rows = [got[name][(ex.id, s)] for name in order for s in range(n)]
        answered = [r for r in rows if r.get("output") is not None]
        if not answered:
            res.unanswered += 1
            for r in rows:
                res.answers.append({**r, "selected": False, "why": "no teacher answered"})
            continue
        keep, why = select(teaching, ts.task, answered, ex.reference)
        if not keep:
            res.dropped[why] += 1
        for k, r in enumerate(keep):
            res.chosen.append({**_renumbered(r, k), "chosen": why})
        for r in rows:
            picked = any(r is x for x in keep)
            res.answers.append({**r, "selected": picked, "why": why if picked or not keep else f"not chosen: {why}"})
    return res


def select(teaching: PoolTeaching, task: Task, answered: list[Row], reference: str | None) -> tuple[list[Row], str]:
    """(the kept answers, why) among one prompt's answers from every teacher (in preference order)."""
    if teaching.select == "answer_check" and reference is not None:
        right = [r for r in answered if is_correct(task, r["answer"], reference, teaching.tolerance)]
        if not right:
            return [], "no teacher's answer matches the gold answer"
        return right[:1], f"pool answer_check: {right[0]['teacher']}'s answer matches the gold answer"
    if teaching.select == "logprob":
        scored = [r for r in answered if r.get("mean_logprob") is not None]
        if not scored:
            return answered[:1], f"pool logprob: no teacher sent logprobs; {answered[0]['teacher']} preferred"
        best = max(scored, key=lambda r: r["mean_logprob"])  # max keeps the first of equals: preference order
        return [best], f"pool logprob: {best['teacher']}'s mean token logprob {best['mean_logprob']:.3f} is highest"
    votes = Counter(task.answer_key(r["answer"]) for r in answered if r["answer"] is not None)
    if not votes:
        return [], "no teacher gave a parseable answer"
    first_seen = {}
    for i, r in enumerate(answered):
        if r["answer"] is not None:
            first_seen.setdefault(task.answer_key(r["answer"]), i)
    top = max(votes, key=lambda a: (votes[a], -first_seen[a]))  # ties: the answer a preferred teacher gave
    share = votes[top] / len(answered)
    agreed = f"{votes[top]} of {len(answered)} answers agree"
    if share < teaching.min_agreement:
        return [], f"pool vote: only {agreed} (< min_agreement {teaching.min_agreement:g})"
    carriers = [r for r in answered if r["answer"] is not None and task.answer_key(r["answer"]) == top]
    if teaching.select == "all_agreeing":
        return carriers, f"pool all_agreeing: {agreed}"
    label = "vote" if teaching.select == "vote" else "vote (no gold answer to check)"
    return carriers[:1], f"pool {label}: {agreed}; {carriers[0]['teacher']}'s kept"
