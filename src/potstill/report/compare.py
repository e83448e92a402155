"""Several runs side by side (e.g. different students or KD settings), from their files alone.

    runs = load_runs(["runs/a", "runs/b"])
    header, rows = compare_rows(runs, models=["distilled"])   # one row per (run, model)
    header, rows = spec_differences(runs)                      # the job settings that differ between the runs

``potstill compare RUN_DIR... [--model NAME] [--markdown FILE]`` prints both tables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import EvaluationError
from .tables import fmt, get, markdown_table, metric_keys, metric_label, ordered, params, score


def load_runs(run_dirs: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Each run's label, results.json and job spec; EvaluationError naming a run that has no results."""
    runs = []
    for d in run_dirs:
        root = Path(d)
        path = root / "eval" / "results.json"
        if not path.exists():
            raise EvaluationError(f"{path} not found: evaluate that run first (`potstill evaluate {root}`)")
        job = root / "job.yaml"
        runs.append(
            {
                "label": str(d),
                "results": json.loads(path.read_text()),
                "job": yaml.safe_load(job.read_text()) if job.exists() else {},
            }
        )
    return runs


def compare_rows(runs: list[dict[str, Any]], models: Sequence[str] | None = None) -> tuple[list[str], list[list[str]]]:
    keys: list[str] = []
    for run in runs:
        keys += [k for k in metric_keys(run["results"]) if k not in keys]
    header = [
        "run",
        "model",
        "parameters",
        "accuracy (95 % CI)",
        *[metric_label(k) for k in keys],
        "p50 ms/answer",
        "tensor peak MB",
        "answers/s",
        "retention %",
        "gain over baseline (points)",
    ]
    rows = []
    for run in runs:
        res = run["results"]
        by = (res.get("comparison") or {}).get("by_model") or {}
        for m in ordered(res["models"]):
            if models and m["name"] not in models:
                continue
            vs = by.get(m["name"], {})
            gain = vs.get("gain_over_baseline")
            rows.append(
                [
                    run["label"],
                    m["name"],
                    params(m.get("parameters")),
                    score(m.get("accuracy"), "accuracy", get(m, "intervals", "accuracy")),
                    *[score(get(m, "metrics", k), k, get(m, "intervals", k)) for k in keys],
                    fmt(get(m, "latency", "p50_ms"), "{:.1f}"),
                    fmt(get(m, "memory", "peak_tensor_mb"), "{:.2f}"),
                    fmt(get(m, "throughput", "answers_per_s"), "{:.1f}"),
                    fmt(vs.get("accuracy_retention_pct"), "{:.1f}"),
                    fmt(None if gain is None else 100 * gain, "{:+.1f}"),
                ]
            )
    if models and not rows:
        raise EvaluationError(f"no run has a model named {', '.join(models)}; see the names in eval/results.json")
    return header, rows


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def spec_differences(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Job-spec settings whose values differ between the runs (absent = "–")."""
    flat = [_flatten(r["job"]) for r in runs]
    keys = sorted({k for f in flat for k in f})
    rows = []
    for k in keys:
        vals = [json.dumps(f[k]) if k in f else "–" for f in flat]
        if len(set(vals)) > 1:
            rows.append([k, *vals])
    return ["setting", *[r["label"] for r in runs]], rows


def compare_markdown(runs: list[dict[str, Any]], models: Sequence[str] | None = None) -> str:
    parts = ["# potstill compare", "", markdown_table(*compare_rows(runs, models)), ""]
    header, rows = spec_differences(runs)
    if rows:
        parts += ["## Settings that differ", "", markdown_table(header, rows), ""]
    return "\n".join(parts)
