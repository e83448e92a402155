"""The report's section on several teachers, from teacher/teaching.json and data/*.jsonl (markdown and HTML).

    section = teaching_section(run_dir)   # None for a one-teacher run, else
    section == {"strategy", "tables": [{"title", "header", "rows"}], "lines": [str]}

Tables: each teacher (price, rows asked / answered / failed, rows chosen, rows kept after validation, tokens,
cost); the cascade's escalation funnel; agreement between teachers on the rows both answered. Lines: the cost
against sending every row to the dearest teacher.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..run_dir import RunDir, read_jsonl
from .tables import fmt


def kept_by_teacher(rd: RunDir) -> Counter[str]:
    """Training and validation rows (data/) per teacher, after the filters (rationale rows not counted twice)."""
    out: Counter[str] = Counter()
    for name in ("train.jsonl", "validation.jsonl"):
        path = rd.data / name
        if path.exists():
            out.update(
                r["teacher"] for r in read_jsonl(path) if "teacher" in r and not str(r["id"]).endswith("#rationale")
            )
    return out


def teaching_section(run_dir: str | Path) -> dict[str, Any] | None:
    rd = RunDir(Path(run_dir))
    path = rd.teacher / "teaching.json"
    if not path.exists():
        return None
    t = json.loads(path.read_text())
    kept = kept_by_teacher(rd)
    validated = (rd.data / "train.jsonl").exists()
    tables = [_teachers_table(t, kept, validated)]
    if t.get("funnel"):
        tables.append(_funnel_table(t["funnel"]))
    if any(p.get("rows") for p in t.get("agreement") or []):
        tables.append(_agreement_table(t["agreement"]))
    return {"strategy": t.get("strategy"), "tables": tables, "lines": _lines(t)}


def _teachers_table(t: dict[str, Any], kept: Counter[str], validated: bool) -> dict[str, Any]:
    header = ["teacher", "model", "USD / 1M tokens (in / out)", "asked", "answered", "failed", "rows chosen"]
    header += ["rows kept (validated)", "tokens (in / out)", "cost (USD)"]
    rows = []
    for name, v in t["teachers"].items():
        pin, pout = v.get("input_price_per_mtok"), v.get("output_price_per_mtok")
        rows.append(
            [
                name,
                f"{v.get('kind')} · {v.get('model')}",
                "–" if pin is None and pout is None else f"{fmt(pin, '{:g}')} / {fmt(pout, '{:g}')}",
                fmt(v.get("requests"), "{:,}"),
                fmt(v.get("answered"), "{:,}"),
                fmt(v.get("failed"), "{:,}"),
                fmt(v.get("rows_chosen"), "{:,}"),
                f"{kept.get(name, 0):,}" if validated else "–",
                f"{v.get('prompt_tokens', 0):,} / {v.get('completion_tokens', 0):,}",
                fmt(v.get("cost_usd"), "{:.4f}"),
            ]
        )
    return {"title": f"Teachers ({t.get('strategy')})", "header": header, "rows": rows}


def _funnel_table(funnel: list[dict[str, Any]]) -> dict[str, Any]:
    header = ["step", "teacher", "rows in", "accepted", "escalated", "kept failing (last)", "failed checks"]
    rows = []
    for i, s in enumerate(funnel):
        why = ", ".join(f"{k} ({n})" for k, n in sorted(s.get("reasons", {}).items(), key=lambda kv: -kv[1]))
        rows.append(
            [
                str(i + 1),
                s["teacher"],
                f"{s['in']:,}",
                f"{s['accepted']:,}",
                f"{s['escalated']:,}",
                f"{s.get('kept_failing', 0):,}",
                why or "–",
            ]
        )
    return {"title": "Cascade: escalation funnel (train + validation)", "header": header, "rows": rows}


def _agreement_table(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [
        [
            " · ".join(p["teachers"]),
            f"{p['rows']:,}",
            fmt(None if p.get("rate") is None else 100 * p["rate"], "{:.1f} %"),
        ]
        for p in pairs
    ]
    return {
        "title": "Agreement between teachers (rows both answered)",
        "header": ["teachers", "rows both answered", "same answer"],
        "rows": rows,
    }


def _lines(t: dict[str, Any]) -> list[str]:
    c = t.get("cost")
    if not c:
        return ["No teacher is priced: set input_price_per_mtok / output_price_per_mtok to see the cost saved."]
    saved = c.get("saved_usd") or 0.0
    pct = c.get("saved_pct")
    verb = "saved" if saved >= 0 else "spent more than that by"
    return [
        f"Cost: ${c['actual_usd']:.4f} for this generation; every row to {c['reference']} (the dearest teacher) "
        f"would have cost about ${c['all_to_reference_usd']:.4f}: {verb} ${abs(saved):.4f}"
        + (f" ({abs(pct):.1f} %)" if pct is not None else "")
        + f". Estimated from {c['how']}."
    ]


def teaching_markdown(section: dict[str, Any] | None) -> list[str]:
    """The section as markdown lines ([] for a one-teacher run)."""
    if not section:
        return []
    from .tables import markdown_table

    parts = ["## Teachers", ""]
    for tab in section["tables"]:
        parts += [f"### {tab['title']}", "", markdown_table(tab["header"], tab["rows"]), ""]
    parts += [*section["lines"], ""]
    return parts
