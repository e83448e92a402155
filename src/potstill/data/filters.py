"""The validate stage: check every teacher output before the student sees it; keep the good, explain the rest.

Filters run in the order the job lists them; the first that rejects a row gives its reason.
    nonempty                 the output has text
    parse                    the task's parser extracts an answer
    max_tokens / {max_tokens: N}   the output was not cut off (finish_reason "length") and has <= N tokens

Writes data/train.jsonl and data/validation.jsonl (chat rows: the prompt + the teacher's answer as the assistant
turn), data/rejected.jsonl (each dropped output with filter and reason) and data/filter_report.json.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from ..config import JobSpec
from ..errors import DataError
from ..run_dir import RunDir, read_jsonl
from .tasks import Task, get_task

Check = Callable[[dict[str, Any]], str | None]  # row -> reason it is rejected, or None


def make_filter(name: str, arg: Any, task: Task) -> Check:
    match name:
        case "nonempty":
            return lambda r: (
                None
                if (r.get("output") or "").strip()
                else ("teacher call failed" if r.get("finish_reason") == "error" else "empty output")
            )
        case "parse":
            return lambda r: None if task.parse(r.get("output") or "") is not None else "no parseable answer"
        case "max_tokens":
            limit = int(arg) if arg not in (None, True) else None

            def check(r: dict[str, Any]) -> str | None:
                if r.get("finish_reason") == "length":
                    return "cut off at generation.max_tokens"
                n = r.get("completion_tokens")
                if limit is not None and n is not None and n > limit:
                    return f"{n} tokens > max_tokens {limit}"
                return None

            return check
    raise ValueError(f"unknown filter {name!r}")


def build_filters(spec: JobSpec, task: Task) -> list[tuple[str, Check]]:
    out = []
    for item in spec.filters:
        pairs = [(item, None)] if isinstance(item, str) else list(item.items())
        out.extend((name, make_filter(name, arg, task)) for name, arg in pairs)
    return out


def run_validate(spec: JobSpec, rd: RunDir) -> dict[str, Any]:
    task = get_task(spec.task_type, spec.prompts)
    filters = build_filters(spec, task)
    report: dict[str, Any] = {"filters": [n for n, _ in filters], "splits": {}}
    with rd.open_jsonl(rd.data / "rejected.jsonl") as reject:
        for split, out_name in (("train", "train.jsonl"), ("validation", "validation.jsonl")):
            rows_in = 0
            rejected: Counter[str] = Counter()
            reasons: Counter[str] = Counter()
            kept = 0
            with rd.open_jsonl(rd.data / out_name) as keep:
                for row in read_jsonl(rd.outputs / f"{split}.jsonl"):
                    rows_in += 1
                    verdict = next(((n, why) for n, f in filters if (why := f(row)) is not None), None)
                    if verdict:
                        rejected[verdict[0]] += 1
                        reasons[f"{verdict[0]}: {verdict[1]}"] += 1
                        reject(
                            {
                                "split": split,
                                "id": row["id"],
                                "sample": row["sample"],
                                "filter": verdict[0],
                                "reason": verdict[1],
                                "output": row.get("output"),
                            }
                        )
                        continue
                    kept += 1
                    keep(
                        {
                            "id": row["id"],
                            "sample": row["sample"],
                            "messages": [*row["messages"], {"role": "assistant", "content": row["output"]}],
                            "answer": task.parse(row["output"]),
                            "reference": row.get("reference"),
                            **({"logprobs": row["logprobs"]} if row.get("logprobs") else {}),
                        }
                    )
            report["splits"][split] = {
                "rows_in": rows_in,
                "kept": kept,
                "rejected": sum(rejected.values()),
                "rejected_by_filter": dict(rejected),
                "reasons": dict(reasons),
            }
    rd.write_json(rd.data / "filter_report.json", report)
    if report["splits"]["train"]["kept"] == 0:
        raise DataError(
            f"no teacher output passed validation ({report['splits']['train']['rows_in']} rows in); "
            "see data/rejected.jsonl for the reasons, then fix the teacher or relax `filters`"
        )
    return {s: {"in": v["rows_in"], "kept": v["kept"]} for s, v in report["splits"].items()}
