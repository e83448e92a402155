"""What ``potstill export`` measures after exporting a run's student: the torch student and each exported format
on the same rows of the run's test split (its validation split when there is none), with the evaluation's
prompts, greedy decoding and scoring (``evaluate/``): accuracy with its 95 % interval, how often the format's
answer equals the torch student's, latency p50 at batch 1, throughput and size on disk. When the run's teacher is
a local model it is measured too, in torch on the same rows, and every format gets its speed-up over the teacher
(p50 at batch 1) and how many times less memory its weights take (the teacher's tensors against the format's:
torch's parameters, or the exported file). Written to ``export/manifest.json`` ("measured") and printed as a small
table.

Latency is timed in pairs: each format (and the teacher) beside the torch student, on the same prompts, each prompt
answered by both in turn (which goes first alternates), so a speed-up compares times taken seconds apart. A shared
or throttled machine drifts by tens of percent over a minute; formats timed one after another, each in its own
block, moved their ratios by as much (the demo's q8_0 and f16 GGUFs, the same work, 2.2× and 3.4× in one run).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..config import HFTeacher, load_spec
from ..data.cot import student_messages
from ..data.jsonl import read_examples
from ..data.tasks import task_for, teacher_messages
from ..evaluate.exported import evaluate_exported, is_exported
from ..evaluate.run import Candidate, evaluate_local, score_row
from ..evaluate.stats import percentile

LATENCY_ROWS = 200  # prompts each format is timed on, beside torch


def measure(run_root: Path, done: dict[str, Path], rows: int) -> dict[str, Any]:
    """{"split", "rows", "formats": [{format, accuracy, accuracy_ci, same_as_torch, p50_ms, answers_per_s,
    size_mb}]} for the torch student and each folder in ``done``."""
    spec = load_spec(run_root / "job.yaml")
    split = "test" if spec.data.test else "validation"
    path = spec.data.test or spec.data.validation
    examples = list(read_examples(path, split, spec.prompts.template))[:rows]
    task = task_for(spec)
    refs = [ex.reference for ex in examples]
    convs = [student_messages(ex.messages, spec.generation.cot) for ex in examples]
    ev = spec.evaluation
    models: list[tuple[str, str]] = [("torch", str(run_root / "student")), *((f, str(p)) for f, p in done.items())]
    teacher = spec.teacher if isinstance(spec.teacher, HFTeacher) else None
    if teacher is not None:
        models.insert(0, ("teacher (torch)", teacher.model))
    out: list[dict[str, Any]] = []
    torch_parsed: list[str | None] = []
    for fmt, folder in models:
        if teacher is not None and fmt == "teacher (torch)":
            cand = Candidate(fmt, "teacher", folder, teacher.tokenizer, "cpu", teacher.dtype)
            row, texts = evaluate_local(cand, [teacher_messages(ex.messages, task) for ex in examples], spec)
        elif is_exported(folder):
            row, texts = evaluate_exported(folder, convs, ev)
        else:
            row, texts = evaluate_local(Candidate(fmt, "distilled", folder, None, "cpu"), convs, spec)
        scores, parsed, _ = score_row(task, spec, texts, refs, None)
        if fmt == "torch":
            torch_parsed = parsed
        both = torch_parsed and parsed and not fmt.startswith("teacher")
        same = sum(p == t for p, t in zip(parsed, torch_parsed, strict=True)) / len(parsed) if both else None
        ci = scores["intervals"].get("accuracy") or {}
        out.append(
            {
                "format": fmt,
                "accuracy": scores["accuracy"],
                "accuracy_ci": [ci.get("lo"), ci.get("hi")] if ci else None,
                "same_as_torch": same,
                "p50_ms": (row.get("latency") or {}).get("p50_ms"),
                "answers_per_s": (row.get("throughput") or {}).get("answers_per_s"),
                "size_mb": row.get("size_on_disk_mb"),
                "weights_mb": (row.get("memory") or {}).get("weights_mb"),
            }
        )
    if "latency" in ev.metrics:
        asked = [teacher_messages(ex.messages, task) for ex in examples]
        paired_latency(out, models, convs, asked, ev.max_new_tokens, teacher)
    return {"split": split, "rows": len(examples), "formats": out}


def paired_latency(
    out: list[dict[str, Any]],
    models: list[tuple[str, str]],
    convs: list[Any],
    asked: list[Any],
    max_new: int,
    teacher: HFTeacher | None,
) -> None:
    """Time each format beside the torch student (``LATENCY_ROWS`` prompts, batch 1, greedy, alternating which
    answers first) and set its ``p50_ms`` and ``speedup`` (torch's p50 in the same pairs over its own); torch's
    ``p50_ms`` is the median of all its pairs' times."""
    from ..server.backends import load_model
    from ..teachers.hf import LocalModel

    n = min(len(convs), LATENCY_ROWS)
    folders = dict(models)
    base = LocalModel.load(folders["torch"], None, device="cpu")
    mine: list[float] = []
    for entry in out:
        fmt = entry["format"]
        if fmt == "torch":
            continue
        if fmt.startswith("teacher"):
            assert teacher is not None
            other: Any = LocalModel.load(teacher.model, teacher.tokenizer, device="cpu", dtype=teacher.dtype)
            theirs = asked[:n]
        else:
            other, theirs = load_model(folders[fmt]), convs[:n]
        t_base, t_other = _pairs(base, other, convs[:n], theirs, max_new)
        del other
        mine += t_base
        entry["p50_ms"] = 1000 * percentile(t_other, 0.5)
        entry["speedup"] = percentile(t_base, 0.5) / percentile(t_other, 0.5)
        entry["latency_how"] = f"batch 1, greedy, {n} prompts, each answered by torch and this format in turn"
    for entry in out:
        if entry["format"] == "torch" and mine:
            entry["p50_ms"], entry["speedup"] = 1000 * percentile(mine, 0.5), 1.0


def _pairs(a: Any, b: Any, a_convs: list[Any], b_convs: list[Any], max_new: int) -> tuple[list[float], list[float]]:
    """Seconds per answer of ``a`` and ``b`` on the same prompts, each prompt answered by both in turn."""

    def timed(lm: Any, conv: Any) -> float:
        t0 = time.perf_counter()
        lm.generate([conv], max_new_tokens=max_new)
        return time.perf_counter() - t0

    timed(a, a_convs[0]), timed(b, b_convs[0])  # warm-up
    t_a, t_b = [], []
    for i, (x, y) in enumerate(zip(a_convs, b_convs, strict=True)):
        if i % 2:
            t_b.append(timed(b, y))
            t_a.append(timed(a, x))
        else:
            t_a.append(timed(a, x))
            t_b.append(timed(b, y))
    return t_a, t_b


def table(measured: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The printed table: one row per format, the speed-up against torch at batch 1."""

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f} %"

    base = next((f for f in measured["formats"] if f["format"] == "torch"), None)
    rows = []
    for f in measured["formats"]:
        speed = f.get("speedup") or (base and base["p50_ms"] and f["p50_ms"] and base["p50_ms"] / f["p50_ms"])
        rows.append(
            [
                f["format"],
                pct(f["accuracy"]),
                pct(f["same_as_torch"]),
                "–" if f["p50_ms"] is None else f"{f['p50_ms']:.1f}",
                "–" if not speed else f"{speed:.2f}×",
                "–" if f["answers_per_s"] is None else f"{f['answers_per_s']:.1f}",
                "–" if f["size_mb"] is None else f"{f['size_mb']:.2f}",
            ]
        )
    header = ["format", "accuracy", "= torch", "p50 ms", "speed-up", "answers/s", "MB"]
    return header, rows


def teacher_table(measured: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """Each student format against the teacher in torch: p50 speed-up and memory ratio; None without a teacher."""
    formats = measured["formats"]
    teacher = next((f for f in formats if f["format"].startswith("teacher")), None)
    if teacher is None:
        return None

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}×" if a and b else "–"

    def faster(f: dict[str, Any]) -> str:
        if f.get("speedup") and teacher.get("speedup"):  # both timed beside torch: chained through it
            return ratio(f["speedup"], teacher["speedup"])
        return ratio(teacher["p50_ms"], f["p50_ms"])

    rows = [
        [f["format"], faster(f), ratio(teacher.get("weights_mb"), f.get("weights_mb"))]
        for f in formats
        if f is not teacher
    ]
    return ["format", "faster than the teacher", "less memory than the teacher"], rows
