"""The generate stage with several teachers (`teachers:` + `teaching:`): route, cascade or pool.

    counts = run_generate_multi(spec, run_dir)     # run_generate hands over to it when the job has teachers:

Each teacher answers through the one request cache, its name in every request's key (a teacher's answer is
never confused with another's, and none is paid for twice: a re-run after a crash asks only what is missing,
and the strategy decides again from the same answers). Writes:
    teacher/outputs/<split>.jsonl   the rows the strategy chose (what validation filters): the usual fields plus
                                    "teacher" (its name) and "chosen" (why this answer), "teacher_sample"
    teacher/answers/<split>.jsonl   every answer of every teacher: "teacher", "answer" (as parsed), "selected"
                                    (true/false) and "why"
    teacher/teaching.json           per teacher: requests, answers, failures, rows chosen, tokens, cost; the
                                    cascade's funnel; agreement between teachers; cost against the dearest teacher
The min_success_ratio gate counts per teacher: with route, a teacher whose own rows fail too often fails the
stage; with cascade and pool, a teacher's failed rows go to the others, and only rows no teacher answered count.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..config import HFTeacher, JobSpec
from ..config_teachers import RouteTeaching
from ..data.jsonl import Example, read_examples
from ..data.tasks import Task, task_for, teacher_messages
from ..errors import PotstillError, TeacherError, TrainingError
from ..run_dir import RunDir
from .cache import RequestCache, request_key
from .generate import Answerer, Answers, Request, output_row, request_body, split_paths

Row = dict[str, Any]


@dataclass
class TeacherStats:
    """One teacher's part in this stage (cached answers included: the stage's view, not only this run's)."""

    requests: int = 0
    from_cache: int = 0
    failed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    cost_usd: float = 0.0
    priced: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompts: set[tuple[str, str]] = field(default_factory=set)  # (split, id) it answered
    selected: Counter[str] = field(default_factory=Counter)  # split -> chosen rows


class TeacherSet:
    """Every teacher of the job, each answering through the shared cache with its own settings."""

    def __init__(self, spec: JobSpec, rd: RunDir, cache: RequestCache, task: Task) -> None:
        self.spec, self.rd, self.task = spec, rd, task
        self.names = list(spec.named_teachers())
        self.views = {n: spec.for_teacher(n) for n in self.names}
        self.answerers = {n: Answerer(self.views[n], rd, cache) for n in self.names}
        self.stats = {n: TeacherStats() for n in self.names}

    def ask(
        self, name: str, examples: list[Example], samples: int, split: str, token_logprobs: bool = False
    ) -> dict[tuple[str, int], Row]:
        """Teacher ``name``'s answers: (id, sample) -> output row + "answer" (parsed; None if none)."""
        reqs = []
        for ex in examples:
            for s in range(samples):
                body = request_body(self.views[name], teacher_messages(ex.messages, self.task), s)
                if token_logprobs:
                    body["token_logprobs"] = True
                reqs.append(Request(ex, s, body, request_key(body)))
        return self._answer(name, reqs, split)

    def ask_messages(self, name: str, batch: list[tuple[list[dict[str, str]], int]], split: str) -> list[Row | None]:
        """Conversation turns (teachers/turns.py's ``ask``): one cache row per (messages, sample), or a failure."""
        reqs = []
        for i, (msgs, s) in enumerate(batch):
            body = request_body(self.views[name], msgs, s)
            reqs.append(Request(Example(f"turn-{i}", msgs), s, body, request_key(body)))
        if not reqs:
            return []
        ans = self.answerers[name].answer(reqs, f"{split}/{name}")
        self._count(name, reqs, ans, split, prompts=False)
        failed = {"finish_reason": "error", "response": None}
        return [ans.rows.get(r.key) or {**failed, "error": ans.failures.get(r.key, "no answer")} for r in reqs]

    def _answer(self, name: str, reqs: list[Request], split: str) -> dict[tuple[str, int], Row]:
        if not reqs:
            return {}
        ans = self.answerers[name].answer(reqs, f"{split}/{name}")
        self._count(name, reqs, ans, split)
        out = {}
        for r in reqs:
            row = output_row(r, ans)
            row["answer"] = self.task.parse(row["output"]) if row["output"] else None
            assert r.example is not None
            out[(r.example.id, r.sample)] = row
        return out

    def _count(self, name: str, reqs: list[Request], ans: Answers, split: str, prompts: bool = True) -> None:
        st = self.stats[name]
        st.requests += len(reqs)
        st.from_cache += len(ans.from_cache & {r.key for r in reqs})
        for r in reqs:
            hit = ans.rows.get(r.key)
            if hit is None:
                st.failed += 1
                st.reasons[ans.failures.get(r.key, "no answer")] += 1
                continue
            if prompts and r.example is not None:
                st.prompts.add((split, r.example.id))
            st.prompt_tokens += hit.get("prompt_tokens") or 0
            st.completion_tokens += hit.get("completion_tokens") or 0
            if hit.get("cost_usd") is not None:
                st.cost_usd += hit["cost_usd"]
                st.priced = True


@dataclass
class SplitResult:
    """What a strategy decided for one split."""

    chosen: list[Row]  # the rows for validation, in input order
    answers: list[Row]  # every answer, with "selected" and "why"
    prompts: int = 0
    unanswered: int = 0  # prompts no teacher answered
    dropped: Counter[str] = field(default_factory=Counter)  # why a prompt (answered) has no chosen row
    funnel: list[dict[str, Any]] = field(default_factory=list)  # cascade: one step per teacher


def run_generate_multi(spec: JobSpec, rd: RunDir) -> dict[str, Any]:
    from .multi_stats import teaching_summary
    from .strategies import cascade_split, pool_split, route_of, route_split

    check_kd_tokenizers(spec)
    task = task_for(spec)
    teaching = spec.teaching or RouteTeaching(by="task_type", map={"*": spec.teacher_list()[0].name or "teacher"})
    counts: dict[str, Any] = {}
    results: dict[str, SplitResult] = {}
    splits = {split: list(read_examples(path, split, spec.prompts.template)) for split, path in split_paths(spec)}
    if isinstance(teaching, RouteTeaching):  # every row of every split has a teacher before anything is asked
        for examples in splits.values():
            for ex in examples:
                route_of(teaching, ex, spec.task_type)
    with RequestCache(rd.cache_db) as cache:
        ts = TeacherSet(spec, rd, cache, task)
        for split, examples in splits.items():
            match teaching.strategy:
                case "route":
                    res = route_split(ts, teaching, examples, split)  # type: ignore[arg-type]
                case "cascade":
                    res = cascade_split(ts, teaching, examples, split)  # type: ignore[arg-type]
                case _:
                    res = pool_split(ts, teaching, examples, split)  # type: ignore[arg-type]
            results[split] = res
            with rd.open_jsonl(rd.outputs / f"{split}.jsonl") as write:
                for row in res.chosen:
                    write({k: v for k, v in row.items() if k != "answer"})
            with rd.open_jsonl(rd.teacher / "answers" / f"{split}.jsonl") as write:
                for row in res.answers:
                    write(row)
            for row in res.chosen:
                if row.get("teacher") in ts.stats and row.get("output") is not None:
                    ts.stats[row["teacher"]].selected[split] += 1
            counts[split] = {
                "prompts": res.prompts,
                "rows": len(res.chosen),
                "unanswered": res.unanswered,
                "dropped": sum(res.dropped.values()),
            }
        ledger = cache.stats()
        ledger["teachers"] = cache.stats_by_teacher()
    summary = teaching_summary(spec, teaching, ts, results, ledger)
    rd.write_json(rd.teacher / "teaching.json", summary)
    counts["ledger"] = ledger
    counts["teachers"] = {
        n: {k: v for k, v in t.items() if k in ("requests", "answered", "failed", "rows_chosen", "cost_usd")}
        for n, t in summary["teachers"].items()
    }
    if ledger["cost_usd"] is not None:
        counts["cost_usd"] = round(ledger["cost_usd"], 6)
    check_gate(spec, teaching.strategy, ts, results)
    for split, res in results.items():
        if res.prompts and not res.chosen:
            why = ", ".join(f"{n} × {w}" for w, n in res.dropped.most_common(3)) or "no answers"
            raise TeacherError(
                f"{split}: no row was chosen by teaching ({teaching.strategy}): {why}; every answer and why it was "
                f"not chosen is in teacher/answers/{split}.jsonl"
            )
    return counts


def check_kd_tokenizers(spec: JobSpec) -> None:
    """Logit distillation from several teachers: refuse a local teacher whose tokenizer is not the student's
    before anything is asked (the train stage checks again, remote teachers too, on the rows themselves)."""
    kd = spec.hyperparameters.kd
    local = {n: t for n, t in spec.named_teachers().items() if isinstance(t, HFTeacher)}
    if kd is None or kd.source != "logprobs" or not local:
        return
    from ..train.kd import check_tokenizers
    from ..train.stage import teacher_refused
    from .hf import load_tokenizer

    try:
        student = load_tokenizer(spec.student.tokenizer or spec.student.model)
    except PotstillError:
        return  # the train stage reports a student it cannot load
    for name, t in local.items():
        try:
            check_tokenizers(student, load_tokenizer(t.tokenizer or t.model))
        except TrainingError as exc:
            raise teacher_refused(name, str(exc).split("; ")[0]) from None


def check_gate(spec: JobSpec, strategy: str, ts: TeacherSet, results: dict[str, SplitResult]) -> None:
    """min_success_ratio, per teacher. route: each teacher's own rows; cascade, pool: the rows no teacher answered
    against the strictest teacher's ratio (a failing teacher's rows were passed to the others)."""
    teachers = spec.named_teachers()
    if strategy == "route":
        for name, st in ts.stats.items():
            need = getattr(teachers[name], "min_success_ratio", 0.0)
            if st.requests and (st.requests - st.failed) / st.requests < need:
                raise TeacherError(
                    f"teacher {name!r}: only {st.requests - st.failed} of {st.requests} of its rows got an answer "
                    f"({(st.requests - st.failed) / st.requests:.0%} < its min_success_ratio {need:.0%}): "
                    f"{_reasons(st.reasons)}. Route sends these rows to {name!r} alone; answers so far are cached, "
                    "fix the cause and run again (or use strategy: cascade / pool to let another teacher answer)"
                )
        return
    prompts = sum(r.prompts for r in results.values())
    unanswered = sum(r.unanswered for r in results.values())
    need = max((getattr(t, "min_success_ratio", 0.0) for t in teachers.values()), default=0.0)
    if prompts == 0 or (prompts - unanswered) / prompts >= need:
        return
    per = "; ".join(f"{n}: {st.failed} of {st.requests} failed ({_reasons(st.reasons)})" for n, st in ts.stats.items())
    raise TeacherError(
        f"only {prompts - unanswered} of {prompts} rows got an answer from any teacher "
        f"({(prompts - unanswered) / prompts:.0%} < min_success_ratio {need:.0%}, the strictest teacher's). {per}. "
        "Answers so far are cached; fix the cause and run again (details in logs/events.jsonl)"
    )


def _reasons(reasons: Counter[str]) -> str:
    return "; ".join(f"{n} × {msg}" for msg, n in reasons.most_common(3)) or "no failures"
