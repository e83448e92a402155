"""The evaluate stage: teacher, untouched student (baseline) and distilled student, side by side.

Scores the test split (else validation) with the task's parser and scorer, times each local model at batch 1,
measures its tensor-memory peak, and writes eval/results.json and eval/predictions/<model>.jsonl.

results.json:
    {"split": "test", "rows": N, "task_type": ..., "scored_against": "reference" | "teacher",
     "models": [{"name": "teacher" | "baseline" | "distilled", "model": path-or-id, "parameters": int,
                 "size_on_disk_mb": float | null, "accuracy": float | null, "agreement_with_teacher": float | null,
                 "metrics": {task metrics: accuracy, macro_f1 | exact_match, f1 | bleu, chrf, rouge1/2/L},
                 "latency": {"mean_ms", "p50_ms", "p95_ms", "tokens_per_s", "n", "samples_ms"},
                 "throughput": {"answers_per_s", "tokens_per_s", "batch_size"},
                 "memory": {"peak_tensor_mb", "weights_mb", "rss_mb", "how"}}],
     "comparison": {"accuracy_retention_pct", "gain_over_baseline", "latency_reduction_pct",
                    "memory_reduction_pct", "throughput_x", "parameter_ratio"}}
"""

from __future__ import annotations

import gc
import time
from typing import Any

from ..config import HFTeacher, JobSpec
from ..data.cot import student_messages
from ..data.jsonl import read_examples
from ..data.tasks import Task, task_for, teacher_messages
from ..errors import EvaluationError
from ..run_dir import RunDir
from ..teachers.hf import LocalModel
from . import perf
from .metrics import task_metrics


def _score(task: Task, outputs: list[str], refs: list[str | None]) -> tuple[list[str | None], list[bool | None]]:
    parsed = [task.parse(o) for o in outputs]
    correct = [
        None if r is None else task.correct(p, task.reference_answer(r)) for p, r in zip(parsed, refs, strict=True)
    ]
    return parsed, correct


def _mean(xs: list[bool | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def evaluate_local(
    name: str,
    lm: LocalModel,
    convs: list[list[dict[str, str]]],
    refs: list[str | None],
    task: Task,
    spec: JobSpec,
    model_id: str,
) -> tuple[dict[str, Any], list[str]]:
    ev = spec.evaluation
    t0 = time.perf_counter()
    outs = lm.generate(convs, max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size)
    dt = time.perf_counter() - t0
    texts = [o.text for o in outs]
    parsed, correct = _score(task, texts, refs)
    task_scores = task_metrics(spec.task_type, texts, parsed, refs, correct)  # issue 4: the task type's metrics
    row: dict[str, Any] = {
        "name": name,
        "model": model_id,
        "parameters": lm.num_parameters(),
        "size_on_disk_mb": perf.size_on_disk_mb(model_id),
        "accuracy": _mean(correct),
        "metrics": task_scores,
        "throughput": {
            "answers_per_s": len(outs) / dt,
            "tokens_per_s": sum(o.completion_tokens for o in outs) / dt,
            "batch_size": ev.batch_size,
        },
    }
    if "latency" in ev.metrics:
        row["latency"] = perf.latency(lm, convs[: ev.latency_samples], ev.max_new_tokens)
    if "memory" in ev.metrics:
        row["memory"] = perf.peak_memory(lm, convs[0], ev.max_new_tokens)
    row["_parsed"], row["_correct"] = parsed, correct
    return row, texts


def run_evaluate(spec: JobSpec, rd: RunDir) -> dict[str, Any]:
    split = "test" if spec.data.test else "validation"
    path = spec.data.test or spec.data.validation
    examples = list(read_examples(path, split, spec.prompts.template))[: spec.evaluation.max_examples]
    if not examples:
        raise EvaluationError(f"{path}: no rows to evaluate")
    task = task_for(spec)
    refs = [ex.reference for ex in examples]
    convs = [ex.messages for ex in examples]
    student_convs = [student_messages(m, spec.generation.cot) for m in convs]  # cot: multitask asks '[answer] ...'
    candidates: list[tuple[str, str, list[list[dict[str, str]]]]] = []
    if spec.evaluation.teacher:
        if not isinstance(spec.teacher, HFTeacher):
            raise EvaluationError(f"evaluating a {spec.teacher.kind!r} teacher is not supported yet")
        candidates.append(("teacher", spec.teacher.model, [teacher_messages(m, task) for m in convs]))
    if spec.evaluation.baseline:
        candidates.append(("baseline", spec.student.model, student_convs))
    candidates.append(("distilled", str(rd.student), student_convs))

    rows: list[dict[str, Any]] = []
    for name, model_id, convs in candidates:
        rd.event("evaluate", "model_start", model=name)
        tok = spec.teacher.tokenizer if name == "teacher" else (spec.student.tokenizer if name == "baseline" else None)
        device = spec.teacher.device if name == "teacher" else spec.student.device
        lm = LocalModel.load(model_id, tok, device=device)
        row, texts = evaluate_local(name, lm, convs, refs, task, spec, model_id)
        del lm
        gc.collect()
        with rd.open_jsonl(rd.eval / "predictions" / f"{name}.jsonl") as write:
            for ex, text, p, c in zip(examples, texts, row["_parsed"], row["_correct"], strict=True):
                write(
                    {
                        "id": ex.id,
                        "prompt": ex.prompt_text,
                        "output": text,
                        "parsed": p,
                        "reference": ex.reference,
                        "correct": c,
                    }
                )
        rows.append(row)
        rd.event("evaluate", "model_done", model=name, accuracy=row["accuracy"])

    teacher = next((r for r in rows if r["name"] == "teacher"), None)
    scored_against = "reference" if any(r is not None for r in refs) else "teacher"
    for r in rows:
        if teacher is not None:
            agree = [a is not None and a == b for a, b in zip(r["_parsed"], teacher["_parsed"], strict=True)]
            r["agreement_with_teacher"] = sum(agree) / len(agree)
            if scored_against == "teacher":
                r["accuracy"] = r["agreement_with_teacher"]
    for r in rows:
        del r["_parsed"], r["_correct"]
    results = {
        "split": split,
        "rows": len(examples),
        "task_type": spec.task_type,
        "scored_against": scored_against,
        "models": rows,
        "comparison": compare(rows),
    }
    rd.write_json(rd.eval / "results.json", results)
    return {"rows": len(examples), **{r["name"]: r["accuracy"] for r in rows}}


def compare(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The seed's performance_comparison: distilled vs teacher, and vs the untouched baseline."""
    by = {r["name"]: r for r in rows}
    t, d, b = by.get("teacher"), by.get("distilled"), by.get("baseline")
    out: dict[str, Any] = {}

    def get(r: dict[str, Any] | None, *keys: str) -> float | None:
        for k in keys:
            if not isinstance(r, dict):
                return None
            r = r.get(k)
        return r if isinstance(r, int | float) else None

    if t and d:
        ta, da = get(t, "accuracy"), get(d, "accuracy")
        if ta and da is not None:
            out["accuracy_retention_pct"] = 100 * da / ta
        tl, dl = get(t, "latency", "mean_ms"), get(d, "latency", "mean_ms")
        if tl and dl is not None:
            out["latency_reduction_pct"] = 100 * (1 - dl / tl)
            out["speedup_x"] = tl / dl if dl else None
        tm, dm = get(t, "memory", "peak_tensor_mb"), get(d, "memory", "peak_tensor_mb")
        if tm and dm is not None:
            out["memory_reduction_pct"] = 100 * (1 - dm / tm)
        tt, dt = get(t, "throughput", "answers_per_s"), get(d, "throughput", "answers_per_s")
        if tt and dt is not None:
            out["throughput_x"] = dt / tt
        tp, dp = get(t, "parameters"), get(d, "parameters")
        if tp and dp:
            out["parameter_ratio"] = dp / tp
    if b and d:
        ba, da = get(b, "accuracy"), get(d, "accuracy")
        if ba is not None and da is not None:
            out["gain_over_baseline"] = da - ba
    return out
