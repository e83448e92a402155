"""The report's plots as PNG bytes (matplotlib's Agg canvas: no display, no global backend switch).

    metric_bars(results)             scores per model with 95 % CI whiskers
    latency_plot(results)            per-answer latency distribution per model (batch 1)
    loss_plot(history)               training and validation loss per optimiser step (+ on-policy share and KL)
    funnel_plot(filter_report)       teacher outputs -> kept, rejected by each filter
    accuracy_vs_parameters(results)  accuracy (with CI) against parameter count

Each returns None when the run has nothing to draw (e.g. no latency measured), so the report leaves it out.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from .tables import get, metric_keys, metric_label, metric_scale, ordered

COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]


def _figure(width: float = 7.5, height: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _scores(m: dict[str, Any], key: str) -> tuple[float | None, dict[str, Any] | None]:
    if key == "accuracy":
        return m.get("accuracy"), get(m, "intervals", "accuracy")
    if key == "agreement_with_teacher":
        return m.get(key), get(m, "intervals", key)
    return get(m, "metrics", key), get(m, "intervals", key)


def metric_bars(results: dict[str, Any]) -> bytes | None:
    models = ordered(results["models"])
    keys = ["accuracy", *metric_keys(results), "agreement_with_teacher"]
    keys = [k for k in keys if any(_scores(m, k)[0] is not None for m in models)]
    groups = [g for g in (["pct"], ["num"]) if any(metric_scale(k) in g for k in keys)]
    if not keys:
        return None
    fig = _figure(7.5, 3.8)
    ratios = [max(1, sum(metric_scale(k) in g for k in keys)) for g in groups]
    axes = fig.subplots(1, len(groups), squeeze=False, width_ratios=ratios)[0]
    for ax, g in zip(axes, groups, strict=True):
        ks = [k for k in keys if metric_scale(k) in g]
        width = 0.8 / len(models)
        for i, m in enumerate(models):
            vals, lo, hi = [], [], []
            for k in ks:
                v, ci = _scores(m, k)
                mult = 100 if metric_scale(k) == "pct" else 1
                v = (v or 0.0) * mult
                vals.append(v)
                lo.append(max(0.0, v - mult * ci["lo"]) if ci else 0.0)
                hi.append(max(0.0, mult * ci["hi"] - v) if ci else 0.0)
            xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(ks))]
            ax.bar(xs, vals, width, yerr=[lo, hi], capsize=3, label=m["name"], color=COLOURS[i % len(COLOURS)])
        ax.set_xticks(range(len(ks)), [metric_label(k) for k in ks], rotation=15)
        ax.set_ylabel("% (95 % CI)" if g == ["pct"] else "score 0–100 (95 % CI)")
        ax.set_ylim(0, 100 if g == ["pct"] else None)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper right")
    fig.suptitle("Task metrics per model")
    return _png(fig)


def latency_plot(results: dict[str, Any]) -> bytes | None:
    models = [m for m in ordered(results["models"]) if get(m, "latency", "samples_ms")]
    if not models:
        return None
    fig = _figure(7.5, 0.6 * len(models) + 1.6)
    ax = fig.subplots()
    data = [m["latency"]["samples_ms"] for m in models]
    ax.boxplot(data, orientation="horizontal", tick_labels=[m["name"] for m in models], showmeans=True)
    for i, xs in enumerate(data, start=1):
        ax.scatter(xs, [i] * len(xs), s=8, alpha=0.4, color=COLOURS[(i - 1) % len(COLOURS)])
    lo, hi = min(min(d) for d in data), max(max(d) for d in data)
    if lo > 0 and hi / lo > 20:
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds per answer (batch 1)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Latency per answer")
    return _png(fig)


def on_policy_series(history: list[dict[str, Any]]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]] | None:
    """On-policy distillation's curves: (step, share of the steps so far whose completions the student sampled)
    and (step, the teacher-scored divergence on that step's sampled completions); None without on-policy."""
    flagged = [h for h in history if "on_policy" in h]
    if not flagged:
        return None
    share, on = [], 0
    for n, h in enumerate(flagged, start=1):
        on += int(h["on_policy"])
        share.append((int(h["step"]), on / n))
    return share, [(int(h["step"]), float(h["gkd"])) for h in flagged if h.get("gkd") is not None]


def loss_plot(history: list[dict[str, Any]]) -> bytes | None:
    op = on_policy_series(history)
    # with on-policy steps the training loss line keeps the teacher-data steps; sampled steps have the panel below
    train = [(h["step"], h["loss"]) for h in history if h.get("loss") is not None and h.get("gkd") is None]
    val = [(h["step"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if not train and not val and not op:
        return None
    fig = _figure(7.5, 5.8 if op else 3.6)
    ax, low = fig.subplots(2, 1, sharex=True) if op else (fig.subplots(), None)
    if train:
        ax.plot(*zip(*train, strict=True), label="training loss", color=COLOURS[0])
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", color=COLOURS[1])
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("cross-entropy per target token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Training and validation loss")
    if op is not None and low is not None:
        share, gkd = op
        lines = low.plot(*zip(*share, strict=True), color=COLOURS[2], label="on-policy share of steps so far")
        low.set_ylim(0, 1.05)
        low.set_ylabel("share of steps")
        low.set_xlabel("optimiser step")
        low.grid(alpha=0.3)
        if gkd:
            kl = low.twinx()
            lines += kl.plot(*zip(*gkd, strict=True), ".", color=COLOURS[3], label="teacher-scored divergence")
            kl.set_ylabel("generalised JSD per token")
        low.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="upper right")
        low.set_title("On-policy distillation: student-sampled steps and the teacher's score of them")
    return _png(fig)


def funnel_plot(report: dict[str, Any]) -> bytes | None:
    splits = report.get("splits") or {}
    if not splits:
        return None
    filters = list(dict.fromkeys(f for v in splits.values() for f in (v.get("rejected_by_filter") or {})))
    fig = _figure(7.5, 0.9 * len(splits) + 1.6)
    ax = fig.subplots()
    names = list(splits)
    ys = range(len(names))
    kept = [splits[s].get("kept", 0) for s in names]
    ax.barh(ys, kept, color=COLOURS[2], label="kept")
    left = list(kept)
    for i, f in enumerate(filters):
        n = [(splits[s].get("rejected_by_filter") or {}).get(f, 0) for s in names]
        ax.barh(ys, n, left=left, color=COLOURS[(i + 3) % len(COLOURS)], label=f"rejected: {f}")
        left = [a + b for a, b in zip(left, n, strict=True)]
    for y, s in zip(ys, names, strict=True):
        total = splits[s].get("rows_in", 0)
        ax.text(left[y], y, f"  {splits[s].get('kept', 0)}/{total} kept", va="center", fontsize=8)
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlabel("teacher outputs")
    ax.set_xlim(0, max([*left, 1]) * 1.25)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Validation funnel: teacher outputs kept and rejected")
    return _png(fig)


def accuracy_vs_parameters(results: dict[str, Any]) -> bytes | None:
    models = [m for m in ordered(results["models"]) if m.get("parameters") and m.get("accuracy") is not None]
    if not models:
        return None
    fig = _figure()
    ax = fig.subplots()
    for i, m in enumerate(models):
        acc, ci = 100 * m["accuracy"], get(m, "intervals", "accuracy")
        err = [[max(0.0, acc - 100 * ci["lo"])], [max(0.0, 100 * ci["hi"] - acc)]] if ci else None
        ax.errorbar([m["parameters"]], [acc], yerr=err, fmt="o", capsize=4, color=COLOURS[i % len(COLOURS)])
        same = sum(1 for o in models[:i] if o["parameters"] == m["parameters"])  # stack labels of equal sizes
        ax.annotate(
            m["name"], (m["parameters"], acc), textcoords="offset points", xytext=(6, 4 + 11 * same), fontsize=8
        )
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("accuracy % (95 % CI)")
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy against size")
    return _png(fig)


PLOTS: dict[str, tuple[str, Callable[[dict[str, Any]], bytes | None]]] = {
    "metrics": ("Scores with 95 % confidence intervals", lambda ctx: metric_bars(ctx["results"])),
    "latency": ("Latency distribution (batch 1)", lambda ctx: latency_plot(ctx["results"])),
    "loss": ("Training and validation loss", lambda ctx: loss_plot(ctx["history"])),
    "funnel": ("Filter funnel", lambda ctx: funnel_plot(ctx["filter_report"])),
    "accuracy_vs_parameters": ("Accuracy vs parameters", lambda ctx: accuracy_vs_parameters(ctx["results"])),
}


def render_all(ctx: dict[str, Any]) -> dict[str, tuple[str, bytes]]:
    """name -> (title, PNG bytes) for every plot the run has data for."""
    out = {}
    for name, (title, fn) in PLOTS.items():
        png = fn(ctx)
        if png:
            out[name] = (title, png)
    return out
