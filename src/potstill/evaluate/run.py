"""The evaluate stage: teacher, untouched student (baseline), distilled student and any extra model, side by side.

Scores the test split (else validation) with the task's parser, scorer and metrics, with 95 % intervals; times
every local model the same way (same prompts, same max_new_tokens, greedy); measures its tensor-memory peak;
writes eval/predictions/<model>.jsonl, then eval/results.json last. The full schema is in docs/results.md.

results.json (version 2):
    {"version": 2, "split": "test" | "validation", "rows": N, "task_type": ..., "scored_against": "reference" |
     "teacher", "confidence": 0.95, "bootstrap_samples": B, "max_new_tokens": ..., "batch_size": ...,
     "models": [{
        "name": "teacher" | "baseline" | "distilled" | <extra name>, "role": "teacher" | "baseline" |
        "distilled" | "extra", "kind": "local" | "api", "model": path-or-id, "device": str | null,
        "dtype": str | null, "parameters": int | null, "size_on_disk_mb": float | null,
        "accuracy": float | null,                    the task scorer's share of correct rows (0..1)
        "agreement_with_teacher": float | null,      share of rows whose parsed answer the teacher's matches
        "metrics": {name: float},                    task_metrics(): accuracy, macro_f1, exact_match, f1, bleu, ...
        "intervals": {name: {"lo", "hi", "method"}}, 95 % CIs of accuracy, each metric and the agreement
        "n_scored": int,                             rows with a reference (or all rows when scored vs teacher)
        "latency": {"mean_ms", "p50_ms", "p95_ms", "tokens_per_s", "n", "samples_ms", "how"},
        "throughput": {"answers_per_s", "tokens_per_s", "batch_size", "answers", "seconds"} | null,
        "memory": {"peak_tensor_mb", "weights_mb", "rss_mb", "how"} | null,
        "cost_per_1k_answers_usd": float | null}],   the teacher's, from the generation ledger when it has costs
     "comparison": {"accuracy_retention_pct", "accuracy_retention_pct_ci", "gain_over_baseline",
                    "gain_over_baseline_ci", "latency_reduction_pct", "speedup_x", "memory_reduction_pct",
                    "throughput_x", "parameter_ratio", "size_ratio",
                    "by_model": {name: the same keys for that model}}}

The flat comparison keys are the distilled student's (the seed's performance_comparison); ``by_model`` has
them for every evaluated non-teacher model.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

from ..config import HFTeacher, JobSpec
from ..data.cot import student_messages
from ..data.jsonl import Example, read_examples
from ..data.tasks import Task, task_for, teacher_messages
from ..errors import EvaluationError
from ..run_dir import RunDir
from . import perf
from .derived import compare
from .exported import evaluate_exported, is_exported, resolve
from .metrics import task_metrics
from .stats import metric_intervals, proportion_interval

Conversation = list[dict[str, str]]
RESULTS_VERSION = 2


@dataclass
class Candidate:
    name: str
    role: str  # teacher | baseline | distilled | extra
    model: str
    tokenizer: str | None
    device: str
    dtype: str = "auto"
    teacher: str | None = None  # several teachers: the teacher's name (its own row)


def candidates(spec: JobSpec, rd: RunDir) -> list[Candidate]:
    ev, st = spec.evaluation, spec.student
    out = []
    if ev.teacher:
        for row, name, t in teacher_rows(spec):
            out.append(Candidate(row, "teacher", t.model, getattr(t, "tokenizer", None), getattr(t, "device", "")))
            out[-1].teacher = name
            if isinstance(t, HFTeacher):
                out[-1].dtype = t.dtype
    if ev.baseline:
        out.append(Candidate("baseline", "baseline", st.model, st.tokenizer, st.device))
    out.append(Candidate("distilled", "distilled", str(rd.student), None, st.device))
    out += [Candidate(m.name, "extra", resolve(m.model, rd.root), m.tokenizer, m.device) for m in ev.models]
    return out


def teacher_rows(spec: JobSpec) -> list[tuple[str, str | None, Any]]:
    """(row name, teacher name, teacher) per teacher: one teacher is "teacher"; of several, the reference one
    (config_teachers.reference_teacher) is "teacher", first, and each other is "teacher-<name>"."""
    if spec.teachers is None:
        return [("teacher", None, spec.teacher)]
    from ..config_teachers import reference_teacher

    ref = reference_teacher(spec.teacher_list(), spec.teaching)
    named = spec.named_teachers()
    return [("teacher", ref, named[ref])] + [(f"teacher-{n}", n, t) for n, t in named.items() if n != ref]


def evaluate_local(cand: Candidate, convs: list[Conversation], spec: JobSpec) -> tuple[dict[str, Any], list[str]]:
    """Answer every prompt (throughput), time batch-1 answers (latency), measure memory; one model at a time."""
    from ..teachers.hf import LocalModel

    ev = spec.evaluation
    lm = LocalModel.load(cand.model, cand.tokenizer, device=cand.device, dtype=cand.dtype)
    try:
        outs, thr = perf.throughput(lm, convs, ev.max_new_tokens, ev.batch_size)
        row: dict[str, Any] = {
            "kind": "local",
            "device": str(lm.device),
            "dtype": str(next(lm.model.parameters()).dtype).removeprefix("torch."),
            "parameters": lm.num_parameters(),
            "size_on_disk_mb": perf.size_on_disk_mb(cand.model),
            "throughput": thr,
            "latency": perf.latency(lm, convs[: ev.latency_samples], ev.max_new_tokens)
            if "latency" in ev.metrics
            else None,
            "memory": perf.peak_memory(lm, convs[0], ev.max_new_tokens) if "memory" in ev.metrics else None,
        }
        return row, [o.text for o in outs]
    finally:
        _release(lm)


def _release(lm: Any) -> None:
    import torch

    on_cuda = lm.device.type == "cuda"
    lm.model = None
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()


def api_teacher_row(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of an API teacher from its answers ({"text", "latency_s"} each, cached or fresh).

    Latency is that of the recorded calls (the network and the server included); throughput, memory and size
    depend on the provider's hardware, so they are not claimed.
    """
    times = [float(a["latency_s"]) for a in answers if a.get("latency_s") is not None]
    return {
        "kind": "api",
        "device": None,
        "dtype": None,
        "parameters": None,
        "size_on_disk_mb": None,
        "throughput": None,
        "latency": perf.latency_summary(times, None, "recorded API call latencies") or None,
        "memory": None,
    }


def evaluate_api_teacher(
    spec: JobSpec, rd: RunDir, convs: list[Conversation], ledger: dict[str, Any] | None
) -> tuple[dict[str, Any], list[str]]:
    """An API teacher's answers to the evaluation prompts, through the request cache: prompts already asked
    (by the generate stage or an earlier evaluation) are not asked, or paid for, again."""
    from ..teachers.generate import teacher_answers

    answers = teacher_answers(spec, rd, convs)
    failed = sum(1 for a in answers if a.get("text") is None)
    if failed:
        rd.event("evaluate", "teacher_failures", rows=failed)
    row = api_teacher_row(answers)
    row["failed"] = failed
    row["from_cache"] = sum(1 for a in answers if a.get("from_cache"))
    return row, [a.get("text") or "" for a in answers]


def cost_per_1k(ledger: dict[str, Any] | None) -> float | None:
    if not ledger or not ledger.get("calls") or ledger.get("cost_usd") is None:
        return None
    return 1000 * float(ledger["cost_usd"]) / int(ledger["calls"])


def _score(task: Task, outputs: list[str], refs: list[str | None]) -> tuple[list[str | None], list[bool | None]]:
    parsed = [task.parse(o) for o in outputs]
    correct = [
        None if r is None else task.correct(p, task.reference_answer(r)) for p, r in zip(parsed, refs, strict=True)
    ]
    return parsed, correct


def score_row(
    task: Task,
    spec: JobSpec,
    texts: list[str],
    refs: list[str | None],
    teacher_parsed: list[str | None] | None,
    is_teacher: bool = False,
) -> tuple[dict[str, Any], list[str | None], list[bool | None]]:
    """Accuracy, task metrics, agreement with the teacher and their intervals; plus the per-row verdicts.

    Without any reference the teacher's answers stand in for them: accuracy is then the agreement (for the
    teacher itself: the share of rows where its answer parses).
    """
    ev = spec.evaluation
    parsed, correct = _score(task, texts, refs)
    has_refs = any(r is not None for r in refs)
    if is_teacher:
        teacher_parsed = None if has_refs else parsed
    metrics = task_metrics(spec.task_type, texts, parsed, refs, correct)
    intervals = metric_intervals(spec.task_type, texts, parsed, refs, correct, ev.bootstrap_samples, ev.seed)
    agree: list[bool | None] | None = None
    if teacher_parsed is not None:
        pairs = zip(parsed, teacher_parsed, strict=True)
        agree = [p is not None and t is not None and task.correct(p, t) for p, t in pairs]
        if ci := proportion_interval(agree):
            intervals["agreement_with_teacher"] = ci
    if not has_refs and agree is not None:
        correct = list(agree)
        intervals["accuracy"] = intervals["agreement_with_teacher"]
    vals = [c for c in correct if c is not None]
    row = {
        "accuracy": sum(vals) / len(vals) if vals else None,
        "agreement_with_teacher": sum(map(bool, agree)) / len(agree) if agree else None,
        "metrics": metrics,
        "intervals": intervals,
        "n_scored": len(vals),
    }
    return row, parsed, correct


def run_evaluate(spec: JobSpec, rd: RunDir) -> dict[str, Any]:
    split = "test" if spec.data.test else "validation"
    path = spec.data.test or spec.data.validation
    examples = list(read_examples(path, split, spec.prompts.template))[: spec.evaluation.max_examples]
    if not examples:
        raise EvaluationError(f"{path}: no rows to evaluate; add rows with prompts (and answers to score them)")
    task = task_for(spec)
    refs = [ex.reference for ex in examples]
    raw_convs = [ex.messages for ex in examples]
    student_convs = [student_messages(m, spec.generation.cot) for m in raw_convs]  # multitask: '[answer] ...'
    ledger = (rd.stage("generate").get("counts") or {}).get("ledger")
    if not spec.evaluation.teacher and all(r is None for r in refs):
        raise EvaluationError(
            f"{path}: no row has a reference answer and the teacher is not evaluated, so nothing can be scored; "
            "add answers to the rows or set evaluation.teacher: true"
        )

    rows: list[dict[str, Any]] = []
    verdicts: dict[str, list[bool | None]] = {}
    teacher_parsed: list[str | None] | None = None
    for cand in candidates(spec, rd):
        rd.event("evaluate", "model_start", model=cand.name)
        if cand.role == "teacher":
            convs = [teacher_messages(m, task) for m in raw_convs]
            tspec = spec if cand.teacher is None else spec.for_teacher(cand.teacher)
            if isinstance(tspec.teacher, HFTeacher):
                row, texts = evaluate_local(cand, convs, spec)
            else:
                row, texts = evaluate_api_teacher(tspec, rd, convs, ledger)
            mine = ledger if cand.teacher is None else ((ledger or {}).get("teachers") or {}).get(cand.teacher)
            row["cost_per_1k_answers_usd"] = cost_per_1k(mine)
            if cand.teacher is not None:
                row["teacher"] = cand.teacher
        else:
            if is_exported(cand.model):  # potstill export's onnx / onnx-int8 folder
                row, texts = evaluate_exported(cand.model, student_convs, spec.evaluation)
            else:
                row, texts = evaluate_local(cand, student_convs, spec)
            row["cost_per_1k_answers_usd"] = None
        is_ref = cand.role == "teacher" and teacher_parsed is None
        scores, parsed, correct = score_row(task, spec, texts, refs, teacher_parsed, is_ref)
        if cand.role == "teacher" and teacher_parsed is None:  # several teachers: the first is the reference
            teacher_parsed = parsed
        rows.append({"name": cand.name, "role": cand.role, "model": cand.model, **scores, **row})
        verdicts[cand.name] = correct
        _write_predictions(rd, cand.name, examples, texts, parsed, correct)
        rd.event("evaluate", "model_done", model=cand.name, accuracy=scores["accuracy"])

    ev = spec.evaluation
    results = {
        "version": RESULTS_VERSION,
        "split": split,
        "rows": len(examples),
        "task_type": spec.task_type,
        "scored_against": "reference" if any(r is not None for r in refs) else "teacher",
        "confidence": 0.95,
        "bootstrap_samples": ev.bootstrap_samples,
        "max_new_tokens": ev.max_new_tokens,
        "batch_size": ev.batch_size,
        "models": rows,
        "comparison": compare(rows, verdicts, ev.bootstrap_samples, ev.seed),
    }
    rd.write_json(rd.eval / "results.json", results)
    return {"rows": len(examples), **{r["name"]: r["accuracy"] for r in rows}}


def _write_predictions(
    rd: RunDir,
    name: str,
    examples: list[Example],
    texts: list[str],
    parsed: list[str | None],
    correct: list[bool | None],
) -> None:
    with rd.open_jsonl(rd.eval / "predictions" / f"{name}.jsonl") as write:
        for ex, text, p, c in zip(examples, texts, parsed, correct, strict=True):
            row = {"id": ex.id, "prompt": ex.prompt_text, "output": text, "parsed": p, "reference": ex.reference}
            write({**row, "correct": c})
