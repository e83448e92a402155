"""The generate stage: the teacher answers every training and validation prompt, through the request cache.

Reads data.training / data.validation; writes teacher/cache.sqlite (journal of every call) and
teacher/outputs/<split>.jsonl (one row per prompt and sample: id, sample, messages, output, finish_reason,
reference; a failed call has "output": null, "finish_reason": "error", "error": <why>). A prompt already in the
cache is never sent again, so an interrupted stage resumes where it stopped.

    answers = Answerer(spec, rd, cache).answer(requests, label="train")   # the hook for every caller: answers a
    answers.rows[key] / answers.failures[key]                              # list of requests through the cache
    teacher_answers(spec, run_dir, conversations)                          # evaluation: sample 0, same cache keys

Optional per-row field for logit distillation (generation.logprobs = k), passed through validation into
data/train.jsonl:
    "logprobs": {"tokens": [str, ...],            the generated tokens as text pieces, one per position
                 "top": [[[str, float], ...], ...], the k most likely tokens and their logprobs, per position
                 "token_ids": [int, ...],          only from a local teacher: ids in the teacher's vocabulary
                 "top_ids": [[int, ...], ...]}     only from a local teacher
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import HFTeacher, JobSpec
from ..data.jsonl import Example, read_examples
from ..data.tasks import Task, task_for, teacher_messages
from ..errors import TeacherError
from ..progress import progress
from ..run_dir import RunDir
from .cache import RequestCache, extra_fields, request_key


@dataclass
class Request:
    example: Example | None
    sample: int
    body: dict[str, Any]
    key: str


def request_body(spec: JobSpec, messages: list[dict[str, str]], sample: int) -> dict[str, Any]:
    """The canonical request (the cache key hashes it): model, messages, sampling, sample index, logprobs, and
    the teacher's name when it has one."""
    gen, t = spec.generation, spec.teacher
    assert t is not None, "one teacher's request: see JobSpec.for_teacher"
    body = {
        "model": t.model,
        "messages": messages,
        "temperature": spec.sampling_temperature,
        "top_p": gen.top_p,
        "max_tokens": gen.max_tokens,
        "sample": sample,
        "seed": gen.seed,
        "stop": gen.stop,
    }
    if gen.logprobs:  # only when set, so the keys of earlier runs stay valid
        body["logprobs"] = gen.logprobs
    if t.name is not None:  # a named teacher (teachers:): its identity is part of every key
        body["teacher"] = spec.teacher.name
    return body


def build_request(spec: JobSpec, task: Task, ex: Example | None, sample: int, messages: Any = None) -> Request:
    body = request_body(spec, messages if messages is not None else teacher_messages(ex.messages, task), sample)
    return Request(ex, sample, body, request_key(body))


def split_paths(spec: JobSpec) -> list[tuple[str, Any]]:
    return [("train", spec.data.training), ("validation", spec.data.validation)]


@dataclass
class Answers:
    rows: dict[str, dict[str, Any]]  # key -> cache row (response, finish_reason, tokens, latency, cost, extra)
    failures: dict[str, str] = field(default_factory=dict)  # key -> why the call failed
    from_cache: set[str] = field(default_factory=set)


class Answerer:
    """Answers lists of requests through the cache (each distinct request is paid once); loads the teacher lazily."""

    def __init__(self, spec: JobSpec, rd: RunDir, cache: RequestCache, stage: str = "generate") -> None:
        self.spec, self.rd, self.cache, self.stage = spec, rd, cache, stage
        self._local: Any = None

    def answer(self, reqs: list[Request], label: str) -> Answers:
        keys = [r.key for r in reqs]
        hits = self.cache.get_many(keys)
        pending = list({r.key: r for r in reqs if r.key not in hits}.values())
        self.rd.event(self.stage, "split", split=label, requests=len(reqs), cached=len(reqs) - len(pending))
        failures = self._ask(pending, label) if pending else {}
        return Answers(self.cache.get_many(keys), failures, set(hits))

    def _ask(self, pending: list[Request], label: str) -> dict[str, str]:
        match self.spec.teacher:
            case HFTeacher():
                self._answer_local(pending, label)
                return {}
            case _:
                from .openai import answer_remote

                return answer_remote(self.spec, self.rd, self.cache, pending, label, stage=self.stage)

    def _answer_local(self, pending: list[Request], label: str) -> None:
        """Local teacher: every pending prompt through one run of the continuous-batching decoder (a freed slot
        takes the next prompt until none is left, so only the run's end has a partly filled batch), each answer
        committed to the cache as it ends, in groups of ``batch_size`` (a crash loses at most one group). Each
        request samples with a seed derived from its cache key, so an answer does not depend on batching, order
        or what an earlier run already answered."""
        from .hf import Completion, LocalModel

        t, gen = self.spec.teacher, self.spec.generation
        assert isinstance(t, HFTeacher)
        # top-k logprobs (generation.logprobs), else the picked tokens' own when a request asks for them (0)
        k = gen.logprobs or (0 if any(r.body.get("token_logprobs") for r in pending) else None)
        if self._local is None:
            self._local = LocalModel.load(t.model, t.tokenizer, t.device, t.dtype)
        lm, bs = self._local, t.batch_size
        group: list[tuple[Request, Completion]] = []

        def commit() -> None:
            if gen.stop:
                for _, o in group:
                    cut = min((o.text.find(s) for s in gen.stop if s in o.text), default=-1)
                    if cut >= 0:
                        o.text, o.finish_reason = o.text[:cut], "stop"
            self.cache.put_many(
                (
                    r.key,
                    r.body,
                    o.text,
                    {
                        "finish_reason": o.finish_reason,
                        "prompt_tokens": o.prompt_tokens,
                        "completion_tokens": o.completion_tokens,
                        "latency_s": o.latency_s,
                        "cost_usd": local_cost(t, o.prompt_tokens, o.completion_tokens),
                        "extra": extra_fields(o.logprobs, o.mean_logprob),
                    },
                )
                for r, o in group
            )
            self.rd.event(self.stage, "teacher_batch", split=label, n=len(group))
            bar.advance(len(group))
            group.clear()

        def ended(i: int, c: Completion) -> None:
            group.append((pending[i], c))
            if len(group) >= bs:
                commit()

        with progress(f"teacher answers ({label})", len(pending)) as bar:
            lm.generate(
                [r.body["messages"] for r in pending],
                max_new_tokens=gen.max_tokens,
                temperature=self.spec.sampling_temperature,
                top_p=gen.top_p,
                batch_size=bs,
                seeds=[int(r.key[:15], 16) for r in pending],
                logprobs=k,
                done=ended,
            )
            if group:
                commit()


def local_cost(t: HFTeacher, pt: int | None, ct: int | None) -> float | None:
    """What a priced local teacher's answer cost (its compute, at the prices the job gives it)."""
    if t.input_price_per_mtok is None and t.output_price_per_mtok is None:
        return None
    return ((pt or 0) * (t.input_price_per_mtok or 0.0) + (ct or 0) * (t.output_price_per_mtok or 0.0)) / 1e6


def output_row(r: Request, ans: Answers) -> dict[str, Any]:
    hit = ans.rows.get(r.key)
    ex = r.example
    row: dict[str, Any] = {
        "id": ex.id if ex else None,
        "sample": r.sample,
        "messages": ex.messages if ex else r.body["messages"],
        "output": hit["response"] if hit else None,
        "finish_reason": hit["finish_reason"] if hit else "error",
        "completion_tokens": hit["completion_tokens"] if hit else None,
        "reference": ex.reference if ex else None,
    }
    if r.body.get("teacher") is not None:
        row["teacher"] = r.body["teacher"]
    if hit is None:
        row["error"] = ans.failures.get(r.key, "no answer")
    else:
        extra = hit.get("extra") or {}
        if extra.get("logprobs"):
            row["logprobs"] = extra["logprobs"]
        if extra.get("mean_logprob") is not None:
            row["mean_logprob"] = extra["mean_logprob"]
    return row


def run_generate(spec: JobSpec, rd: RunDir) -> dict[str, Any]:
    if spec.teachers is not None:  # several teachers: route, cascade or pool (teachers/multi.py)
        from .multi import run_generate_multi

        return run_generate_multi(spec, rd)
    task = task_for(spec)
    counts: dict[str, Any] = {}
    total = failed = 0
    reasons: dict[str, int] = {}
    with RequestCache(rd.cache_db) as cache:
        cost_before = cache.stats()["cost_usd"] or 0.0
        answerer = Answerer(spec, rd, cache)
        for split, path in split_paths(spec):
            if task.name == "conversation":  # issue 4: every assistant turn regenerated in order (teachers/turns.py)
                from .turns import generate_split

                examples = list(read_examples(path, split, spec.prompts.template))
                counts[split], why = generate_split(spec, task, examples, answerer, rd, split)
                total, failed = total + counts[split]["conversations"], failed + counts[split]["failed"]
                for msg, n in why.items():
                    reasons[msg] = reasons.get(msg, 0) + n
                continue
            reqs = [
                build_request(spec, task, ex, s)
                for ex in read_examples(path, split, spec.prompts.template)
                for s in range(spec.generation.samples)
            ]
            ans = answerer.answer(reqs, split)
            with rd.open_jsonl(rd.outputs / f"{split}.jsonl") as write:
                for r in reqs:
                    write(output_row(r, ans))
            n_failed = sum(1 for r in reqs if r.key not in ans.rows)
            for r in reqs:
                if r.key not in ans.rows:
                    why = ans.failures.get(r.key, "no answer")
                    reasons[why] = reasons.get(why, 0) + 1
            total, failed = total + len(reqs), failed + n_failed
            counts[split] = {"prompts": len(reqs), "from_cache": len(ans.from_cache & {r.key for r in reqs})}
            counts[split]["failed"] = n_failed
        ledger = cache.stats()
    counts["ledger"] = ledger
    if ledger["cost_usd"] is not None:
        counts["cost_usd"] = round(ledger["cost_usd"], 6)
        counts["cost_usd_this_run"] = round(ledger["cost_usd"] - cost_before, 6)
    check_success(spec, total, failed, reasons)
    return counts


def check_success(spec: JobSpec, total: int, failed: int, reasons: dict[str, int]) -> None:
    """The min_success_ratio gate: too many failed rows fail the stage, with the commonest reasons."""
    need = getattr(spec.teacher, "min_success_ratio", 0.0)
    if total == 0 or (total - failed) / total >= need:
        return
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
    why = "; ".join(f"{n} × {msg}" for msg, n in top)
    raise TeacherError(
        f"only {total - failed} of {total} rows got a teacher answer ({(total - failed) / total:.0%} < "
        f"min_success_ratio {need:.0%}): {why}. Answers so far are cached; fix the cause and run again "
        "(details in logs/events.jsonl, rows in teacher/outputs/)"
    )


def teacher_answers(
    spec: JobSpec, run_dir: RunDir | str | Path, conversations: list[list[dict[str, str]]]
) -> list[dict[str, Any]]:
    """Answers for evaluation (sample 0, the generation settings): cache hits cost nothing, the rest are asked.

    Each item: {"text": str | None, "finish_reason", "latency_s" (of the original call), "from_cache", "error"}.
    """
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    task = task_for(spec)
    reqs = [build_request(spec, task, None, 0, messages=c) for c in conversations]
    with RequestCache(rd.cache_db) as cache:
        ans = Answerer(spec, rd, cache, stage="evaluate").answer(reqs, "evaluate")
    out = []
    for r in reqs:
        hit = ans.rows.get(r.key)
        out.append(
            {
                "text": hit["response"] if hit else None,
                "finish_reason": hit["finish_reason"] if hit else "error",
                "latency_s": hit["latency_s"] if hit else None,
                "from_cache": r.key in ans.from_cache,
                "error": None if hit else ans.failures.get(r.key, "no answer"),
            }
        )
    return out
