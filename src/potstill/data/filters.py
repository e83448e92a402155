"""The validate stage: check every teacher output before the student sees it; keep the good, explain the rest.

Filters run in the order the job lists them (settings in config.py, code in data/checks.py); a row rejected by
one filter is not seen by the next.
    nonempty                          the output has text
    parse / {parse: {pattern: R}}     an answer can be extracted (R, prompts.answer_marker: the job's own place)
    max_tokens / {max_tokens: N}      not cut off (finish_reason "length"), at most N tokens
    answer_check                      the answer matches the row's gold answer (rows without one pass)
    self_consistency                  the prompt's samples agree on a majority answer; one sample carrying it is kept
    length                            min/max tokens (or words)
    dedup                             exact (normalised) and near (word n-gram overlap) duplicates of prompt+output
    refusal                           refusal and apology patterns
    balance                           no label (NLI, multiple-choice letter) above max_share of the kept rows

When a filter rejects more than half of the rows it sees, the stage logs a warning (logger "potstill"; the
same lines land in filter_report.json's "warnings") with three rejected outputs' last 80 characters and the
setting to change; when no training row is left, those lines are part of the DataError.

Writes data/train.jsonl and data/validation.jsonl (chat rows: the prompt + the teacher's answer as the assistant
turn, shaped by generation.cot), data/rejected.jsonl (each dropped output with filter and reason) and
data/filter_report.json:
    {"filters": [...], "splits": {split: {"rows_in", "kept", "rejected", "rejected_by_filter", "reasons",
     "funnel": [{"filter", "in", "rejected", "out"}], "labels_before", "labels_after", "training_rows",
     "warnings"}}}
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from ..config import JobSpec
from ..errors import DataError
from ..filter_spec import filter_steps
from ..run_dir import RunDir, read_jsonl
from .checks import Row, make_step
from .cot import targets
from .tasks import Task, task_for

log = logging.getLogger("potstill")

_READ_ANSWERS = (
    "if the teacher marks its answer its own way, set prompts.answer_marker (the text before the answer, e.g. "
    "'Verdict:') or filters: [{parse: {pattern: 'Verdict:\\s*(.+)$'}}] (a regex with one group around the answer)"
)
HINTS = {  # filter -> what to change when it rejects most rows
    "nonempty": "the teacher gave no text: see the failures in teacher/outputs/ and the generate stage's log",
    "parse": f"no answer found where the task's parser looks; {_READ_ANSWERS}",
    "answer_check": f"answers differ from the gold ones; if they were misread, {_READ_ANSWERS}; "
    "else check the teacher, or {answer_check: {tolerance: ...}}",
    "self_consistency": f"samples disagree: lower {{self_consistency: ...}} or raise generation.samples; "
    f"if answers were misread, {_READ_ANSWERS}",
    "max_tokens": "outputs were cut off or too long: raise generation.max_tokens or {max_tokens: N}",
    "length": "outputs fall outside the range: widen {length: {min: ..., max: ...}}",
    "dedup": "outputs repeat: raise {dedup: {near: ...}} (null: exact duplicates only) or generation.temperature",
    "refusal": "the teacher refused: change prompts.system, or {refusal: ...}'s patterns if these are no refusals",
    "balance": "one label dominates: raise {balance: ...} (max_share)",
}


def heavy_rejections(split: str, funnel: list[dict[str, Any]], rejected: list[tuple[Row, str, str]]) -> list[str]:
    """One message per filter that rejected more than half of the rows it saw: three examples and the fix."""
    out = []
    for step in funnel:
        name, seen, dropped = step["filter"], step["in"], step["rejected"]
        if seen == 0 or 2 * dropped <= seen:
            continue
        mine = [r for r, f, _ in rejected if f == name]
        tails = [(r.get("output") or "") for r in mine[:3]]
        examples = "\n".join(f"    {'...' if len(t) > 80 else ''}{t[-80:]!r}" for t in tails)
        out.append(
            f"filter {name!r} rejected {dropped} of {seen} {split} outputs; e.g. (their last 80 characters):\n"
            f"{examples}\n  fix: {HINTS.get(name, 'relax this filter in `filters`')}"
        )
    return out


def apply_filters(
    rows: list[Row], steps: list[tuple[str, Any]], task: Task
) -> tuple[list[Row], list[tuple[Row, str, str]], list[dict[str, Any]]]:
    """(kept rows in input order, [(row, filter, reason)], funnel) after running ``steps`` in order."""
    alive = list(rows)
    rejected: list[tuple[Row, str, str]] = []
    funnel = []
    for name, opts in steps:
        reasons = make_step(name, opts, task, rows)(alive)
        nxt = []
        for r, why in zip(alive, reasons, strict=True):
            if why is None:
                nxt.append(r)
            else:
                rejected.append((r, name, why))
        funnel.append({"filter": name, "in": len(alive), "rejected": len(alive) - len(nxt), "out": len(nxt)})
        alive = nxt
    return alive, rejected, funnel


def label_counts(rows: list[Row], task: Task) -> dict[str, int]:
    counts = Counter(lab for r in rows if (lab := task.label(r["answer"])) is not None)
    return dict(sorted(counts.items()))


def training_rows(row: Row, task: Task, cot: str) -> list[dict[str, Any]]:
    """The chat rows the student learns from one kept output (two with cot: multitask)."""
    pairs = targets(task, row["messages"], row["output"], row["answer"], cot)
    out = []
    for k, (msgs, target) in enumerate(pairs):
        full_output = target == row["output"]
        out.append(
            {
                "id": row["id"] if k == 0 else f"{row['id']}#rationale",
                "sample": row["sample"],
                "messages": [*msgs, {"role": "assistant", "content": target}],
                "answer": row["answer"],
                "reference": row.get("reference"),
                **({"logprobs": row["logprobs"]} if full_output and row.get("logprobs") else {}),
                **{k: row[k] for k in ("teacher", "chosen") if k in row},  # several teachers: whose, and why
            }
        )
    return out


def run_validate(spec: JobSpec, rd: RunDir) -> dict[str, Any]:
    task = task_for(spec)
    steps = filter_steps(spec.filters)
    report: dict[str, Any] = {"filters": [n for n, _ in steps], "splits": {}}
    with rd.open_jsonl(rd.data / "rejected.jsonl") as reject:
        for split, out_name in (("train", "train.jsonl"), ("validation", "validation.jsonl")):
            rows = list(read_jsonl(rd.outputs / f"{split}.jsonl"))
            for r in rows:
                r["answer"] = task.parse(r.get("output") or "")
            kept, rejected, funnel = apply_filters(rows, steps, task)
            for r, name, why in rejected:
                reject(
                    {
                        "split": split,
                        "id": r["id"],
                        "sample": r["sample"],
                        "filter": name,
                        "reason": why,
                        "output": r.get("output"),
                        "answer": r["answer"],
                        "reference": r.get("reference"),
                        **({"teacher": r["teacher"]} if "teacher" in r else {}),
                    }
                )
            n_train = 0
            with rd.open_jsonl(rd.data / out_name) as keep:
                for r in kept:
                    for t in training_rows(r, task, spec.generation.cot):
                        keep(t)
                        n_train += 1
            report["splits"][split] = {
                "rows_in": len(rows),
                "kept": len(kept),
                "rejected": len(rejected),
                "rejected_by_filter": dict(Counter(name for _, name, _ in rejected)),
                "reasons": dict(Counter(f"{name}: {why}" for _, name, why in rejected)),
                "funnel": funnel,
                "labels_before": label_counts(rows, task),
                "labels_after": label_counts(kept, task),
                "training_rows": n_train,
                "warnings": heavy_rejections(split, funnel, rejected),
            }
    rd.write_json(rd.data / "filter_report.json", report)
    train = report["splits"]["train"]
    if train["kept"] == 0:
        raise DataError(
            "\n".join(
                [
                    f"no teacher output passed validation ({train['rows_in']} rows in); see data/rejected.jsonl "
                    "for the reasons, then fix the teacher or relax `filters`",
                    *train["warnings"],
                ]
            )
        )
    for split in report["splits"].values():
        for warning in split["warnings"]:
            log.warning("warning: validate: %s", warning)
    return {s: {"in": v["rows_in"], "kept": v["kept"]} for s, v in report["splits"].items()}
