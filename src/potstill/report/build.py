"""The report stage, built from files alone: eval/results.json, data/filter_report.json, state.json -> report/.

run_report(spec, run_dir)    # writes report/report.md
comparison_rows(results)     # the seed's table as rows of strings (also printed by the CLI)
"""

from __future__ import annotations

import json
from typing import Any

from ..config import JobSpec
from ..run_dir import RunDir

ORDER = ("teacher", "baseline", "distilled")


def _fmt(v: Any, spec: str = "{:.3g}") -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return spec.format(v)
    return str(v)


def _params(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _get(r: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        r = r.get(k) if isinstance(r, dict) else None
    return r


def comparison_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    models = sorted(results["models"], key=lambda r: ORDER.index(r["name"]) if r["name"] in ORDER else 9)
    header = ["", *[m["name"] for m in models]]
    rows = [
        ["parameters", *[_params(m.get("parameters")) for m in models]],
        ["memory (tensor peak, MB)", *[_fmt(_get(m, "memory", "peak_tensor_mb"), "{:.2f}") for m in models]],
        ["inference time (ms/answer, p50)", *[_fmt(_get(m, "latency", "p50_ms"), "{:.1f}") for m in models]],
        ["accuracy", *[_fmt(m.get("accuracy"), "{:.1%}") for m in models]],
        ["throughput (answers/s)", *[_fmt(_get(m, "throughput", "answers_per_s"), "{:.1f}") for m in models]],
    ]
    return header, rows


def derived_lines(results: dict[str, Any]) -> list[str]:
    c = results.get("comparison", {})
    labels = [
        ("accuracy_retention_pct", "accuracy retention", "{:.1f} %"),
        ("gain_over_baseline", "gain over baseline (accuracy points)", "{:+.1%}"),
        ("latency_reduction_pct", "inference time reduction", "{:.1f} %"),
        ("memory_reduction_pct", "memory reduction", "{:.1f} %"),
        ("throughput_x", "throughput", "{:.2f}×"),
        ("parameter_ratio", "student / teacher parameters", "{:.3f}"),
    ]
    return [f"{label}: {fmt.format(c[k])}" for k, label, fmt in labels if c.get(k) is not None]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def teacher_lines(counts: dict[str, Any]) -> list[str]:
    """The generate stage's ledger: calls, tokens, cost (when prices are set), failed rows."""
    led = counts.get("ledger")
    if not led:
        return []
    line = (
        f"- {led['calls']} teacher calls, {led['prompt_tokens']} prompt + {led['completion_tokens']} completion tokens"
    )
    if counts.get("cost_usd") is not None:
        line += f", cost ${counts['cost_usd']:.4f} (this run ${counts.get('cost_usd_this_run', 0):.4f})"
    failed = sum(v.get("failed", 0) for v in counts.values() if isinstance(v, dict))
    return ["", "## Teacher", "", line + (f", {failed} rows failed" if failed else "")]


def run_report(spec: JobSpec, rd: RunDir) -> dict[str, Any]:
    results = json.loads((rd.eval / "results.json").read_text())
    header, rows = comparison_rows(results)
    parts = [
        f"# potstill report: {spec.name}",
        "",
        f"Task: **{spec.task_type}** · teacher `{spec.teacher.model}` → student `{spec.student.model}` · "
        f"evaluated on {results['rows']} {results['split']} rows (accuracy against {results['scored_against']}).",
        "",
        "## Comparison",
        "",
        markdown_table(header, rows),
        "",
        *[f"- {line}" for line in derived_lines(results)],
    ]
    fr = rd.data / "filter_report.json"
    if fr.exists():
        rep = json.loads(fr.read_text())
        parts += ["", "## Teacher outputs kept", ""]
        parts.append(
            markdown_table(
                ["split", "in", "kept", "rejected", "reasons"],
                [
                    [
                        s,
                        str(v["rows_in"]),
                        str(v["kept"]),
                        str(v["rejected"]),
                        ", ".join(f"{k} ({n})" for k, n in v["reasons"].items()) or "–",
                    ]
                    for s, v in rep["splits"].items()
                ],
            )
        )
    st = rd.state().get("stages", {})
    parts += teacher_lines(st.get("generate", {}).get("counts") or {})
    parts += ["", "## Stages", ""]
    parts.append(
        markdown_table(
            ["stage", "status", "seconds"],
            [[n, s.get("status", "–"), _fmt(s.get("elapsed_s"), "{:.1f}")] for n, s in st.items()],
        )
    )
    rd.write_text(rd.report / "report.md", "\n".join(parts) + "\n")
    return {"report": str(rd.report / "report.md")}
