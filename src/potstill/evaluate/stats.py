"""95 % confidence intervals for the evaluation numbers, so a reader can tell a real difference from noise.

    wilson(successes, n)                        -> (lo, hi)   score interval of a proportion (accuracy, EM, agreement)
    percentile_interval(values)                 -> (lo, hi)   2.5th and 97.5th percentiles
    metric_intervals(task_type, outputs, parsed, references, correct, samples=1000, seed=0)
        -> {metric: {"lo", "hi", "method"}}     Wilson for per-row proportions, percentile bootstrap for the rest
    paired_interval(stat, a, b, samples, seed)  -> (lo, hi)   bootstrap of stat(a', b') over rows resampled together

The bootstrap resamples row indices (with replacement) and recomputes the metric with ``task_metrics`` on each
resample, so every metric the task reports (including corpus-level BLEU and chrF) gets an interval computed the
same way it is scored. Resampling is seeded: the same predictions always give the same intervals.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from .metrics import task_metrics

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
PROPORTIONS = ("accuracy", "exact_match")  # metrics that are a mean of 0/1 row scores: Wilson intervals


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of ``successes / n``; None when n is 0."""
    if n <= 0:
        return None
    p = min(max(successes / n, 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if p == 0 else max(0.0, centre - half)  # exact ends: no float dust at 0 and 1 successes
    hi = 1.0 if p == 1 else min(1.0, centre + half)
    return lo, hi


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in 0..1."""
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def percentile_interval(values: Sequence[float]) -> tuple[float, float] | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None
    return percentile(vals, 0.025), percentile(vals, 0.975)


def _resamples(n: int, samples: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(n) for _ in range(n)] for _ in range(samples)]


Recompute = Callable[[list[int]], float]


def _close(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def _sacrebleu(name: str, outputs: list[str], refs: list[str]) -> Recompute | None:
    """Corpus BLEU/chrF on a resample from per-row sufficient statistics, as sacrebleu's own bootstrap does."""
    import numpy as np
    from sacrebleu.metrics import BLEU, CHRF

    metric = {"bleu": BLEU, "chrf": CHRF}[name]()
    try:
        stats = np.array(metric._extract_corpus_statistics(outputs, [refs]))
    except Exception:  # an incompatible sacrebleu: the exact slow path is used instead
        return None
    return lambda idx: float(metric._compute_score_from_stats(stats[idx].sum(axis=0)).score)


def fast_paths(
    task_type: str, cols: tuple[list[Any], ...], point: dict[str, float], check: list[int]
) -> dict[str, Recompute]:
    """Cheap recomputations of the metrics on a resample, each kept only where it reproduces ``task_metrics`` on
    all rows and on the ``check`` resample: a per-row mean (accuracy, EM, F1, ROUGE) or corpus statistics
    (BLEU, chrF). Metrics with neither (e.g. macro-F1) are recomputed with task_metrics on every resample."""
    singles = [task_metrics(task_type, *([c[i]] for c in cols)) for i in range(len(cols[0]))]
    paths: dict[str, Recompute] = {}
    for k in point:
        vals = [s.get(k) for s in singles]
        if all(v is not None for v in vals) and _close(sum(vals) / len(vals), point[k]):  # type: ignore[arg-type]
            paths[k] = lambda idx, vals=vals: sum(vals[i] for i in idx) / len(idx)  # type: ignore[misc]
        elif (
            k in ("bleu", "chrf")
            and (fn := _sacrebleu(k, cols[0], cols[2]))
            and _close(fn(list(range(len(cols[0])))), point[k])
        ):
            paths[k] = fn
    if paths:
        again = task_metrics(task_type, *([c[i] for i in check] for c in cols))
        paths = {k: fn for k, fn in paths.items() if _close(fn(check), again.get(k))}
    return paths


def metric_intervals(
    task_type: str,
    outputs: Sequence[str],
    parsed: Sequence[str | None],
    references: Sequence[str | None],
    correct: Sequence[bool | None],
    samples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """A 95 % interval for every metric ``task_metrics`` reports on these predictions."""
    point = task_metrics(task_type, outputs, parsed, references, correct)
    keep = [i for i, r in enumerate(references) if r is not None]
    out: dict[str, dict[str, Any]] = {}
    for name in PROPORTIONS:
        if name in point:
            n = sum(1 for i in keep if name != "accuracy" or correct[i] is not None)
            ci = wilson(round(point[name] * n), n)
            if ci:
                out[name] = {"lo": ci[0], "hi": ci[1], "method": "wilson"}
    rest = {k: v for k, v in point.items() if k not in out}
    if not rest or samples <= 0 or len(keep) < 2:
        return out
    cols = tuple([col[i] for i in keep] for col in (outputs, parsed, references, correct))
    resamples = _resamples(len(keep), samples, seed)
    fast = fast_paths(task_type, cols, rest, resamples[0])
    draws: dict[str, list[float]] = {k: [] for k in rest}
    for idx in resamples:
        slow = task_metrics(task_type, *([c[i] for i in idx] for c in cols)) if set(rest) - set(fast) else {}
        for k in rest:
            v = fast[k](idx) if k in fast else slow.get(k)
            if v is not None:
                draws[k].append(v)
    for k, vals in draws.items():
        ci = percentile_interval(vals)
        if ci:
            out[k] = {"lo": ci[0], "hi": ci[1], "method": f"bootstrap ({samples} resamples)"}
    return out


def proportion_interval(flags: Sequence[bool | None]) -> dict[str, Any] | None:
    """Wilson interval of the share of True among the non-None flags."""
    vals = [bool(f) for f in flags if f is not None]
    ci = wilson(sum(vals), len(vals))
    return {"lo": ci[0], "hi": ci[1], "method": "wilson"} if ci else None


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def paired_interval(
    stat: Callable[[float, float], float | None],
    a: Sequence[bool | None],
    b: Sequence[bool | None],
    samples: int = 1000,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Bootstrap interval of ``stat(mean(a), mean(b))`` over the rows both score, resampled in pairs.

    E.g. the gain over the baseline (stat = a - b) or the accuracy retention (stat = 100 * a / b); pairing
    the rows removes the row-difficulty noise two separate intervals would double count.
    """
    pairs = [(float(x), float(y)) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if len(pairs) < 2 or samples <= 0:
        return None
    vals = []
    for idx in _resamples(len(pairs), samples, seed):
        v = stat(_mean([pairs[i][0] for i in idx]), _mean([pairs[i][1] for i in idx]))
        if v is not None:
            vals.append(v)
    if len(vals) < 0.95 * samples:  # e.g. a ratio whose denominator is often 0: too few rows to bound it
        return None
    return percentile_interval(vals)


def difference(a: float, b: float) -> float:
    return a - b


def ratio_pct(a: float, b: float) -> float | None:
    return 100 * a / b if b else None
