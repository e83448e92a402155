"""The report stage, built from the run's files alone (never from a stage's memory):

eval/results.json, data/filter_report.json, state.json, logs/events.jsonl, teacher/outputs/, job.yaml
    -> report/report.md, report/report.html (self-contained: CSS inline, plots as data: URIs), report/*.png

build_report(run_dir)   -> {"markdown": path, "html": path, "plots": [names]}   (also the stage's work)
load_context(run_dir)   -> everything the report shows, as plain data
"""

from __future__ import annotations

import base64
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import JobSpec
from ..errors import EvaluationError
from ..run_dir import RunDir, read_jsonl
from ..train.advice import still_improving
from . import plots
from .tables import comparison_rows, derived_lines, derived_table, fmt, funnel_rows, ledger_rows, markdown_table
from .teaching import teaching_markdown, teaching_section
from .tuning import render_tuning, tuning_notes


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def loss_history(rd: RunDir) -> list[dict[str, Any]]:
    """The "step" events of the latest training, joined across a crash and its resume (logs/events.jsonl)."""
    steps: dict[int, dict[str, Any]] = {}
    fresh = False
    for e in rd.events(stage="train"):
        match e.get("event"):
            case "start":
                fresh = True
            case "resume":
                steps = {s: v for s, v in steps.items() if s <= int(e.get("step", 0))}
                fresh = False
            case "step":
                if fresh:
                    steps, fresh = {}, False
                steps[int(e["step"])] = e
    return [steps[s] for s in sorted(steps)]


def generation_ledger(rd: RunDir) -> dict[str, Any]:
    """The generate stage's ledger (calls, tokens, cost) and the answers that failed (teacher/outputs/)."""
    ledger = dict((rd.stage("generate").get("counts") or {}).get("ledger") or {})
    if "failures" not in ledger and rd.outputs.is_dir():
        ledger["failures"] = sum(
            1 for f in sorted(rd.outputs.glob("*.jsonl")) for r in read_jsonl(f) if r.get("finish_reason") == "error"
        )
    return ledger


def load_context(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    rd = RunDir(Path(run_dir))
    results = _json(rd.eval / "results.json")
    if not results:
        raise EvaluationError(f"{rd.eval / 'results.json'} not found: run `potstill evaluate {rd.root}` first")
    job_text = rd.job_yaml.read_text() if rd.job_yaml.exists() else ""
    return {
        "results": results,
        "filter_report": _json(rd.data / "filter_report.json"),
        "state": rd.state(),
        "job": yaml.safe_load(job_text) or {},
        "job_text": job_text,
        "history": loss_history(rd),
        "ledger": generation_ledger(rd),
        "targets": _json(rd.eval / "targets.json").get("targets") or [],
        "tuning": _json(rd.root / "tune" / "summary.json"),
        "teaching": teaching_section(rd.root),  # several teachers (report/teaching.py), else None
    }


def _summary(ctx: dict[str, Any]) -> str:
    job, res = ctx["job"], ctx["results"]
    teacher = f"`{(job.get('teacher') or {}).get('model', '?')}`"
    if job.get("teachers"):  # several teachers
        names = ", ".join(f"{t.get('name')} `{t.get('model')}`" for t in job["teachers"])
        teacher = f"{(job.get('teaching') or {}).get('strategy', 'route')} over {names}"
    student = (job.get("student") or {}).get("model", "?")
    return (
        f"Task **{res.get('task_type')}** · teacher {teacher} → student `{student}` · evaluated on "
        f"{res.get('rows')} {res.get('split')} rows (accuracy against the {res.get('scored_against')}) · "
        f"greedy, max_new_tokens {res.get('max_new_tokens')}, batch size {res.get('batch_size')} for throughput."
    )


def _advice(ctx: dict[str, Any]) -> str:
    """The warning that the student was still improving when its training ended ("" when it was not)."""
    more = still_improving(ctx["history"])
    if more is None:
        return ""
    msg = more.message()
    return msg[0].upper() + msg[1:] + "."


def _tuning(ctx: dict[str, Any]) -> tuple[list[str], list[list[str]], str] | None:
    """The table of a tune's trials (tune/summary.json), or None for a run that was not tuned."""
    if not ctx.get("tuning"):
        return None
    from ..tune.summary import trials_table

    return trials_table(ctx["tuning"])


def _notes(ctx: dict[str, Any]) -> list[str]:
    models = ctx["results"]["models"]
    notes = []
    for m in models:
        bits = [f"{m['name']}: {m.get('kind', 'local')} model `{m.get('model')}`"]
        if m.get("device"):
            bits.append(f"on {m['device']} ({m.get('dtype')})")
        if (m.get("memory") or {}).get("how"):
            bits.append(f"memory = {m['memory']['how']}")
        if (m.get("latency") or {}).get("how"):
            bits.append(f"latency = {m['latency']['how']}")
        notes.append(", ".join(bits))
    notes.append(
        "95 % intervals: Wilson for accuracies and exact match, percentile bootstrap over rows for the other "
        f"metrics ({ctx['results'].get('bootstrap_samples')} resamples), paired bootstrap for retention and gain."
    )
    return notes


def _stage_rows(ctx: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    st = ctx["state"].get("stages", {})
    return ["stage", "status", "seconds"], [
        [n, s.get("status", "–"), fmt(s.get("elapsed_s"), "{:.1f}")] for n, s in st.items()
    ]


def render_markdown(
    ctx: dict[str, Any], figures: dict[str, tuple[str, bytes]], tune_figures: dict[str, tuple[str, bytes]] | None = None
) -> str:
    res = ctx["results"]
    parts = [f"# potstill report: {ctx['job'].get('name', '')}", "", _summary(ctx), "", "## Comparison", ""]
    parts += [markdown_table(*comparison_rows(res)), ""]
    parts += [f"- {line}" for line in derived_lines(res)]
    if advice := _advice(ctx):
        parts += ["", f"> **{advice}**"]
    header, rows = derived_table(res)
    if len(header) > 2:
        parts += ["", "### Every model against the teacher and the baseline", "", markdown_table(header, rows)]
    if ctx["targets"]:
        rows = [[t["target"], t["measured"], "yes" if t["met"] else "no"] for t in ctx["targets"]]
        parts += ["", "### Targets", "", markdown_table(["target", "measured", "met"], rows)]
    parts += ["", "### How it was measured", "", *[f"- {n}" for n in _notes(ctx)], ""]
    for name, (title, _) in figures.items():
        parts += [f"## {title}", "", f"![{title}]({name}.png)", ""]
    if ctx["filter_report"]:
        parts += ["## Teacher outputs kept", "", markdown_table(*funnel_rows(ctx["filter_report"])), ""]
    if ctx["ledger"]:
        parts += ["## Generation ledger", "", markdown_table(*ledger_rows(ctx["ledger"])), ""]
    parts += teaching_markdown(ctx.get("teaching"))
    if tuning := _tuning(ctx):
        header, rows, title = tuning
        parts += [
            "## Tuning",
            "",
            f"{title} (Optuna; each trial scored on the validation split; the winner was then tested once).",
            "",
            markdown_table(header, rows),
            "",
        ]
        for name, (title, _) in (tune_figures or {}).items():
            parts += [f"### {title}", "", f"![{title}]({name}.png)", ""]
        if notes := tuning_notes(ctx["tuning"]):
            parts += [*notes, ""]
    parts += ["## Stages", "", markdown_table(*_stage_rows(ctx)), ""]
    parts += ["## Job spec", "", "```yaml", ctx["job_text"].rstrip(), "```", ""]
    return "\n".join(parts)


def _embedded(figures: dict[str, tuple[str, bytes]]) -> list[dict[str, str]]:
    return [
        {"name": n, "title": t, "src": "data:image/png;base64," + base64.b64encode(png).decode("ascii")}
        for n, (t, png) in figures.items()
    ]


def render_html(
    ctx: dict[str, Any], figures: dict[str, tuple[str, bytes]], tune_figures: dict[str, tuple[str, bytes]] | None = None
) -> str:
    import jinja2

    template = (resources.files("potstill.report") / "template.html").read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    res = ctx["results"]
    header, rows = derived_table(res)
    return env.from_string(template).render(
        title=f"potstill report: {ctx['job'].get('name', '')}",
        summary=_summary(ctx).replace("**", "").replace("`", ""),
        comparison=comparison_rows(res),
        derived=derived_lines(res),
        advice=_advice(ctx),
        derived_table=(header, rows) if len(header) > 2 else None,
        notes=[n.replace("`", "") for n in _notes(ctx)],
        targets=ctx["targets"],
        figures=_embedded(figures),
        funnel=funnel_rows(ctx["filter_report"]) if ctx["filter_report"] else None,
        ledger=ledger_rows(ctx["ledger"]) if ctx["ledger"] else None,
        teaching=ctx.get("teaching"),
        stages=_stage_rows(ctx),
        tuning=_tuning(ctx),
        tuning_figures=_embedded(tune_figures or {}),
        tuning_notes=tuning_notes(ctx["tuning"]) if ctx.get("tuning") else [],
        job_text=ctx["job_text"],
    )


def build_report(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    rd = RunDir(Path(run_dir))
    ctx = load_context(rd.root)
    figures = plots.render_all(ctx)
    tune_figures = render_tuning(ctx["tuning"])
    for name, (_, png) in {**figures, **tune_figures}.items():
        if rd.writer:
            tmp = rd.report / f".{name}.png.tmp"
            rd.report.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(png)
            tmp.replace(rd.report / f"{name}.png")
    rd.write_text(rd.report / "report.md", render_markdown(ctx, figures, tune_figures))
    rd.write_text(rd.report / "report.html", render_html(ctx, figures, tune_figures))
    return {
        "markdown": str(rd.report / "report.md"),
        "html": str(rd.report / "report.html"),
        "plots": list(figures),
        "tuning_plots": list(tune_figures),
    }


def run_report(spec: JobSpec, rd: RunDir) -> dict[str, Any]:
    out = build_report(rd.root)
    return {"report": out["html"], "plots": len(out["plots"])}
