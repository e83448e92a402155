"""The report's tables as rows of strings, from results.json and the run's other files (markdown, HTML, CLI).

comparison_rows(results)   -> (header, rows)   the seed's table: one column per model, 95 % CIs beside scores
compact_rows(results)      -> (header, rows)   the same for 80 columns: short labels, intervals on their own rows
derived_lines(results)     -> ["accuracy retention: 98.0 % (95 % CI 91.2–104.3)", ...]
funnel_rows(filter_report) -> (header, rows)   teacher outputs in, kept, rejected by each filter
ledger_rows(ledger)        -> (header, rows)   teacher calls, tokens, cost, failures
markdown_table(header, rows)
"""

from __future__ import annotations

import math
from typing import Any

ORDER = ("teacher", "baseline", "distilled")

# metric key -> (label, scale): "pct" for 0..1 values shown as %, "num" for values already on a 0..100 scale
METRICS: dict[str, tuple[str, str]] = {
    "accuracy": ("accuracy", "pct"),
    "exact_match": ("exact match", "pct"),
    "f1": ("token F1", "pct"),
    "macro_f1": ("macro-F1", "pct"),
    "bleu": ("BLEU", "num"),
    "chrf": ("chrF", "num"),
    "rouge1": ("ROUGE-1", "pct"),
    "rouge2": ("ROUGE-2", "pct"),
    "rougeL": ("ROUGE-L", "pct"),
    "agreement_with_teacher": ("agreement with teacher", "pct"),
}


def get(r: Any, *keys: str) -> Any:
    for k in keys:
        r = r.get(k) if isinstance(r, dict) else None
    return r


def _ok(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)


def fmt(v: Any, spec: str = "{:.3g}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return spec.format(v) if isinstance(v, int | float) and not isinstance(v, bool) else str(v)


def params(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def metric_label(key: str) -> str:
    return METRICS.get(key, (key.replace("_", " "), "num"))[0]


def metric_scale(key: str) -> str:
    return METRICS.get(key, (key, "num"))[1]


def score(value: Any, key: str, ci: dict[str, Any] | None = None) -> str:
    """A score with its interval: "62.5 % (40.1–80.3)" or "31.2 (28.0–34.9)"."""
    if not _ok(value):
        return "–"
    pct = metric_scale(key) == "pct"
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.1f}")
    text = f(value) + (" %" if pct else "")
    if ci and _ok(ci.get("lo")) and _ok(ci.get("hi")):
        text += f" ({f(ci['lo'])}–{f(ci['hi'])})"
    return text


def ordered(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(models, key=lambda r: ORDER.index(r["name"]) if r["name"] in ORDER else len(ORDER))


def metric_keys(results: dict[str, Any]) -> list[str]:
    """Every metric some model reports, accuracy first, then in the order of METRICS."""
    keys: list[str] = []
    for m in results["models"]:
        for k in m.get("metrics") or {}:
            if k not in keys:
                keys.append(k)
    known = [k for k in METRICS if k in keys and k != "accuracy"]
    return known + [k for k in keys if k not in METRICS]


def comparison_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    models = ordered(results["models"])
    header = ["", *[m["name"] for m in models]]

    def row(label: str, cell: Any) -> list[str]:
        return [label, *[cell(m) for m in models]]

    rows = [
        row("parameters", lambda m: params(m.get("parameters"))),
        row("size on disk (MB)", lambda m: fmt(m.get("size_on_disk_mb"), "{:.2f}")),
        row("memory (tensor peak, MB)", lambda m: fmt(get(m, "memory", "peak_tensor_mb"), "{:.2f}")),
        row("process RSS (MB)", lambda m: fmt(get(m, "memory", "rss_mb"), "{:.0f}")),
        row("inference time (ms/answer, p50)", lambda m: fmt(get(m, "latency", "p50_ms"), "{:.1f}")),
        row("inference time (ms/answer, p95)", lambda m: fmt(get(m, "latency", "p95_ms"), "{:.1f}")),
        row("accuracy (95 % CI)", lambda m: score(m.get("accuracy"), "accuracy", get(m, "intervals", "accuracy"))),
    ]
    for k in metric_keys(results):
        rows.append(row(metric_label(k), lambda m, k=k: score(get(m, "metrics", k), k, get(m, "intervals", k))))
    if any(m.get("agreement_with_teacher") is not None for m in models):
        k = "agreement_with_teacher"
        rows.append(row(metric_label(k), lambda m: score(m.get(k), k, get(m, "intervals", k))))
    rows += [
        row("throughput (answers/s)", lambda m: fmt(get(m, "throughput", "answers_per_s"), "{:.1f}")),
        row("throughput (tokens/s)", lambda m: fmt(get(m, "throughput", "tokens_per_s"), "{:.0f}")),
    ]
    if any(m.get("cost_per_1k_answers_usd") is not None for m in models):
        rows.append(row("cost per 1,000 answers (USD)", lambda m: fmt(m.get("cost_per_1k_answers_usd"), "{:.4g}")))
    return header, rows


DERIVED = (
    ("accuracy_retention_pct", "accuracy retention (of the teacher's)", "{:.1f} %", 1),
    ("gain_over_baseline", "gain over baseline (accuracy points)", "{:+.1f}", 100),
    ("latency_reduction_pct", "inference time reduction (p50)", "{:.1f} %", 1),
    ("speedup_x", "speed-up (p50)", "{:.2f}×", 1),
    ("memory_reduction_pct", "memory reduction (tensor peak)", "{:.1f} %", 1),
    ("throughput_x", "throughput", "{:.2f}×", 1),
    ("parameter_ratio", "student / teacher parameters", "{:.3f}", 1),
    ("size_ratio", "student / teacher size on disk", "{:.3f}", 1),
)


def derived_lines(results: dict[str, Any], comparison: dict[str, Any] | None = None) -> list[str]:
    """The seed's performance_comparison in words (the distilled student's unless ``comparison`` is given)."""
    c = results.get("comparison", {}) if comparison is None else comparison
    out = []
    for key, label, spec, mult in DERIVED:
        if not _ok(c.get(key)):
            continue
        line = f"{label}: {spec.format(mult * c[key])}"
        ci = c.get(f"{key}_ci")
        if isinstance(ci, list | tuple) and len(ci) == 2 and all(_ok(x) for x in ci):
            lo, hi = (spec.format(mult * x).rstrip(" %×") for x in ci)
            line += f" (95 % CI {lo} to {hi})"
        out.append(line)
    return out


SHORT_LABELS = {
    "size on disk (MB)": "disk MB",
    "memory (tensor peak, MB)": "memory MB",
    "process RSS (MB)": "RSS MB",
    "inference time (ms/answer, p50)": "p50 ms",
    "inference time (ms/answer, p95)": "p95 ms",
    "accuracy (95 % CI)": "accuracy",
    "agreement with teacher": "agreement",
    "throughput (answers/s)": "answers/s",
    "throughput (tokens/s)": "tokens/s",
    "cost per 1,000 answers (USD)": "$ / 1k",
}


def compact_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The comparison for an 80-column terminal or a log: short labels, each interval on its own row."""
    header, rows = comparison_rows(results)
    out = []
    for label, *cells in rows:
        values = [c.split(" (", 1)[0] for c in cells]
        out.append([SHORT_LABELS.get(label, label), *values])
        cis = [c.split(" (", 1)[1].rstrip(")") if " (" in c else "" for c in cells]
        if any(cis):
            out.append(["  95 % CI", *cis])
    return header, out


def funnel_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["split", "teacher outputs", "kept", "rejected", "reasons"]
    rows = []
    for split, v in (report.get("splits") or {}).items():
        reasons = ", ".join(f"{k} ({n})" for k, n in (v.get("reasons") or {}).items()) or "–"
        rows.append([split, str(v.get("rows_in", "–")), str(v.get("kept", "–")), str(v.get("rejected", "–")), reasons])
    return header, rows


def ledger_rows(ledger: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    cost = ledger.get("cost_usd")
    rows = [
        ["teacher calls (cached, each made once)", fmt(ledger.get("calls"), "{:,}")],
        ["prompt tokens", fmt(ledger.get("prompt_tokens"), "{:,}")],
        ["completion tokens", fmt(ledger.get("completion_tokens"), "{:,}")],
        ["mean call latency (s)", fmt(ledger.get("mean_latency_s"), "{:.3f}")],
        ["cost (USD)", fmt(cost, "{:.4f}") if cost is not None else "– (not priced: a local teacher or no prices)"],
        ["failed answers", fmt(ledger.get("failures"), "{:,}")],
    ]
    return ["generation ledger", ""], rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def derived_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The derived comparison for every non-teacher model: one column each, one row per number."""
    by = (results.get("comparison") or {}).get("by_model") or {}
    names = [m["name"] for m in ordered(results["models"]) if m["name"] in by]
    cols = {n: dict(line.split(": ", 1) for line in derived_lines(results, by[n])) for n in names}
    labels = [label for _, label, _, _ in DERIVED if any(label in c for c in cols.values())]
    return ["", *names], [[label, *[cols[n].get(label, "–") for n in names]] for label in labels]
