"""The report's Tuning plots, from tune/summary.json alone (the data behind each plot is a plain function).

    history(summary)             -> per finished trial: number, value, state, feasible; and the best so far
    pareto(summary, "parameters") -> the complete trials as (metric, measure) points, the front, the winner
    render_tuning(summary)       -> {name: (title, PNG bytes)} for the plots it has data for
    tuning_notes(summary)        -> sentences shown beside them (e.g. why parameter importances are missing)

The optimisation history draws each trial's validation metric (a pruned trial: its last report, marked x), and
the best feasible value so far as a step line. The Pareto plots draw every complete trial's metric against its
latency (p50, batch 1) and its parameter count, the front (trials no other beats on both) as a line, infeasible
trials hollow, and the winner as a star.
"""

from __future__ import annotations

from typing import Any

from ..tune.pareto import pareto_front
from .plots import COLOURS, _figure, _png
from .tables import metric_label, metric_scale

MEASURE_LABELS = {"latency_ms_p50": "latency p50 (ms per answer, batch 1)", "parameters": "parameters"}


def _sense(direction: str) -> str:
    return "max" if direction == "maximize" else "min"


def history(s: dict[str, Any]) -> tuple[list[dict[str, Any]], list[tuple[int, float]]]:
    """The finished trials in order (complete: their value; pruned: their last report) and the best feasible
    complete value after each trial (from the first complete one on)."""
    sense = _sense(s.get("direction", "maximize"))
    points, best, line = [], None, []
    for t in sorted(s.get("trials") or [], key=lambda t: t["number"]):
        if t["state"] == "complete" and t.get("value") is not None:
            value = float(t["value"])
        elif t["state"] == "pruned" and t.get("last_report") is not None:
            value = float(t["last_report"])
        else:
            continue
        points.append({"number": t["number"], "value": value, "state": t["state"], "feasible": t.get("feasible")})
        counts = t["state"] == "complete" and t.get("feasible") is not False
        if counts and (best is None or (value > best if sense == "max" else value < best)):
            best = value
        if best is not None:
            line.append((t["number"], best))
    return points, line


def pareto(s: dict[str, Any], measure: str) -> dict[str, Any] | None:
    """Complete trials with the metric and ``measure``: {"points": [{number, metric, x, feasible}], "front":
    [indices, by x], "winner": index or None}; None when fewer than two trials have both."""
    pts = [
        {"number": t["number"], "metric": float(t["value"]), "x": float(t[measure]), "feasible": t.get("feasible")}
        for t in s.get("trials") or []
        if t["state"] == "complete" and t.get("value") is not None and t.get(measure) is not None
    ]
    if len(pts) < 2:
        return None
    second = next((o["direction"] for o in (s.get("objectives") or [])[1:] if o["name"] == measure), "minimize")
    front = pareto_front([(p["metric"], p["x"]) for p in pts], (_sense(s.get("direction", "maximize")), _sense(second)))
    best = (s.get("best") or {}).get("number")
    winner = next((i for i, p in enumerate(pts) if p["number"] == best), None)
    return {"points": pts, "front": sorted(front, key=lambda i: (pts[i]["x"], -pts[i]["metric"])), "winner": winner}


def _scaled(metric: str) -> tuple[float, str]:
    pct = metric_scale(metric) == "pct"
    return (100.0 if pct else 1.0), f"{metric_label(metric)} (validation{', %' if pct else ''})"


def history_plot(s: dict[str, Any]) -> bytes | None:
    points, line = history(s)
    if not points:
        return None
    mult, label = _scaled(s["metric"])
    fig = _figure()
    ax = fig.subplots()

    def done(p: dict[str, Any], feasible: bool) -> bool:
        return p["state"] == "complete" and (p["feasible"] is not False) == feasible

    groups = [
        ("complete", lambda p: done(p, True), "o", COLOURS[0], "full"),
        ("complete, infeasible", lambda p: done(p, False), "o", COLOURS[0], "none"),
        ("pruned (last report)", lambda p: p["state"] == "pruned", "x", COLOURS[3], "full"),
    ]
    for name, keep, marker, colour, fill in groups:
        sel = [p for p in points if keep(p)]
        if sel:
            ax.plot(
                [p["number"] for p in sel],
                [mult * p["value"] for p in sel],
                marker,
                color=colour,
                fillstyle=fill,
                linestyle="none",
                label=name,
            )
    if line:
        ax.step([n for n, _ in line], [mult * v for _, v in line], where="post", color=COLOURS[2], label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Optimisation history")
    return _png(fig)


def pareto_plot(s: dict[str, Any], measure: str) -> bytes | None:
    data = pareto(s, measure)
    if data is None:
        return None
    mult, label = _scaled(s["metric"])
    pts = data["points"]
    fig = _figure()
    ax = fig.subplots()
    for feasible, fill, name in ((True, "full", "trial"), (False, "none", "trial, infeasible")):
        sel = [p for p in pts if (p["feasible"] is not False) == feasible]
        if sel:
            ax.plot(
                [p["x"] for p in sel],
                [mult * p["metric"] for p in sel],
                "o",
                color=COLOURS[0],
                fillstyle=fill,
                linestyle="none",
                label=name,
            )
    front = [pts[i] for i in data["front"]]
    ax.step(
        [p["x"] for p in front],
        [mult * p["metric"] for p in front],
        where="post",
        color=COLOURS[1],
        label="Pareto front",
    )
    for p in pts:
        ax.annotate(
            f"#{p['number']:03d}", (p["x"], mult * p["metric"]), textcoords="offset points", xytext=(4, 3), fontsize=7
        )
    if data["winner"] is not None:
        w = pts[data["winner"]]
        star = f"winner #{w['number']:03d}"
        ax.plot([w["x"]], [mult * w["metric"]], "*", color=COLOURS[3], markersize=16, label=star)
    xs = [p["x"] for p in pts]
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(MEASURE_LABELS.get(measure, measure))
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    name = metric_label(s["metric"])
    ax.set_title(f"{name[0].upper()}{name[1:]} against {'latency' if 'latency' in measure else 'size'}")
    return _png(fig)


def importance_plot(s: dict[str, Any]) -> bytes | None:
    values = (s.get("importances") or {}).get("values") or {}
    if not values:
        return None
    names = sorted(values, key=lambda k: values[k])
    fig = _figure(7.5, 0.45 * len(names) + 1.6)
    ax = fig.subplots()
    ax.barh(range(len(names)), [values[n] for n in names], color=COLOURS[4])
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("importance (share of the metric's variation; Optuna's PED-ANOVA)")
    ax.set_xlim(0, 1)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Parameter importances")
    return _png(fig)


PLOTS = {
    "tune_history": ("Optimisation history", history_plot),
    "tune_latency": ("Metric against latency (Pareto)", lambda s: pareto_plot(s, "latency_ms_p50")),
    "tune_parameters": ("Metric against parameters (Pareto)", lambda s: pareto_plot(s, "parameters")),
    "tune_importances": ("Parameter importances", importance_plot),
}


def render_tuning(s: dict[str, Any]) -> dict[str, tuple[str, bytes]]:
    """name -> (title, PNG bytes) for each Tuning plot the summary has data for ({} when it was not tuned)."""
    if not s:
        return {}
    out = {}
    for name, (title, fn) in PLOTS.items():
        png = fn(s)
        if png:
            out[name] = (title, png)
    return out


def tuning_notes(s: dict[str, Any]) -> list[str]:
    """Sentences for what a plot could not show (parameter importances that could not be computed) and, with
    tune.confirm, the best trials' runs with other seeds."""
    imp = s.get("importances") or {}
    out = [f"Parameter importances: {imp['note']}"] if imp.get("note") else []
    rows = s.get("confirm") or []
    if rows:
        metric = s.get("metric", "metric")
        each = "; ".join(
            f"#{r['number']:03d} {r['mean']:.4g} ± {r['sd']:.2g} (trial {r['value']:.4g}, then "
            + ", ".join(f"{v:.4g}" for v in r["seeds"].values())
            + ")"
            for r in rows
        )
        out.append(
            f"Confirmed with {len(rows[0]['seeds'])} more training seed(s) each, the mean validation {metric} "
            f"decides: {each}. Winner: #{rows[0]['number']:03d}."
        )
    return out
