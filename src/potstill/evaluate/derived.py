"""The seed's performance_comparison, derived from the evaluated rows: student vs teacher, student vs baseline.

    compare(rows, verdicts, samples, seed) -> {"accuracy_retention_pct", "gain_over_baseline", ...,
                                              "by_model": {name: {...}}}

Every ratio uses numbers measured the same way for both models: latency p50 at batch 1, tensor-memory peak,
answers/s at the evaluation batch size. A number is left out when either side lacks it (e.g. an API teacher has
no memory or throughput of ours to compare with). The two accuracy comparisons carry a paired-bootstrap 95 %
interval over the rows both models answered.
"""

from __future__ import annotations

from typing import Any

from .stats import difference, paired_interval, ratio_pct


def _num(r: dict[str, Any] | None, *keys: str) -> float | None:
    cur: Any = r
    for k in keys:
        cur = cur.get(k) if isinstance(cur, dict) else None
    return cur if isinstance(cur, int | float) and not isinstance(cur, bool) else None


def versus(
    row: dict[str, Any],
    teacher: dict[str, Any] | None,
    baseline: dict[str, Any] | None,
    verdicts: dict[str, list[bool | None]],
    samples: int,
    seed: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if teacher is not None:
        ta, a = _num(teacher, "accuracy"), _num(row, "accuracy")
        if ta and a is not None:
            out["accuracy_retention_pct"] = 100 * a / ta
            out["accuracy_retention_pct_ci"] = paired_interval(
                ratio_pct, verdicts[row["name"]], verdicts[teacher["name"]], samples, seed
            )
        tl, dl = _num(teacher, "latency", "p50_ms"), _num(row, "latency", "p50_ms")
        if tl and dl:
            out["latency_reduction_pct"] = 100 * (1 - dl / tl)
            out["speedup_x"] = tl / dl
        tm, dm = _num(teacher, "memory", "peak_tensor_mb"), _num(row, "memory", "peak_tensor_mb")
        if tm and dm is not None:
            out["memory_reduction_pct"] = 100 * (1 - dm / tm)
        tt, dt = _num(teacher, "throughput", "answers_per_s"), _num(row, "throughput", "answers_per_s")
        if tt and dt is not None:
            out["throughput_x"] = dt / tt
        tp, dp = _num(teacher, "parameters"), _num(row, "parameters")
        if tp and dp:
            out["parameter_ratio"] = dp / tp
        ts, ds = _num(teacher, "size_on_disk_mb"), _num(row, "size_on_disk_mb")
        if ts and ds:
            out["size_ratio"] = ds / ts
    if baseline is not None and baseline is not row:
        ba, a = _num(baseline, "accuracy"), _num(row, "accuracy")
        if ba is not None and a is not None:
            out["gain_over_baseline"] = a - ba
            out["gain_over_baseline_ci"] = paired_interval(
                difference, verdicts[row["name"]], verdicts[baseline["name"]], samples, seed
            )
    return {k: v for k, v in out.items() if v is not None}


def compare(
    rows: list[dict[str, Any]], verdicts: dict[str, list[bool | None]], samples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The flat keys are the distilled student's; ``by_model`` holds the same for every non-teacher row."""
    by_role: dict[str, dict[str, Any]] = {}
    for r in rows:  # the first of a role: with several teachers, the reference teacher's row comes first
        if r["role"] != "extra":
            by_role.setdefault(r["role"], r)
    teacher, baseline = by_role.get("teacher"), by_role.get("baseline")
    by_model = {
        r["name"]: versus(r, teacher, baseline, verdicts, samples, seed) for r in rows if r["role"] != "teacher"
    }
    distilled = next((r["name"] for r in rows if r["role"] == "distilled"), None)
    flat = dict(by_model.get(distilled, {})) if distilled else {}
    return {**flat, "by_model": by_model}
