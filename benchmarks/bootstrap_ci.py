"""How long the 95 % bootstrap intervals take: verified fast paths vs task_metrics on every resample.

    PYTHONPATH=src python benchmarks/bootstrap_ci.py [--rows 300] [--samples 100]

Both sides use the same seeded resamples and give the same intervals; the script prints both times, the ratio,
and the largest difference between the two intervals' ends.
"""

from __future__ import annotations

import argparse
import random
import time
from unittest import mock

import potstill.evaluate.stats as stats

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "rug", "today", "big", "small", "red", "blue"]
LABELS = ["entailment", "neutral", "contradiction"]


def rows(task: str, n: int, rng: random.Random) -> tuple[list, list, list, list]:
    if task == "nli":
        refs = [rng.choice(LABELS) for _ in range(n)]
        outs = [r if rng.random() < 0.7 else rng.choice(LABELS) for r in refs]
    else:
        refs = [" ".join(rng.choice(WORDS) for _ in range(40 if task == "summarization" else 8)) for _ in range(n)]
        outs = [" ".join(w if rng.random() < 0.7 else rng.choice(WORDS) for w in r.split()) for r in refs]
    return outs, list(outs), refs, [o == r for o, r in zip(outs, refs, strict=True)]


def timed(task: str, cols: tuple, samples: int) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = stats.metric_intervals(task, *cols, samples=samples, seed=0)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--samples", type=int, default=100)
    args = ap.parse_args()
    print(f"{args.rows} rows, {args.samples} resamples")
    print(f"{'task':14} {'fast s':>8} {'slow s':>8} {'ratio':>7} {'max |Δ| of CI ends':>20}")
    for task in ("qa", "nli", "summarization", "conversation"):
        cols = rows(task, args.rows, random.Random(0))
        fast_s, fast = timed(task, cols, args.samples)
        with mock.patch.object(stats, "fast_paths", lambda *a: {}):
            slow_s, slow = timed(task, cols, args.samples)
        diff = max(abs(fast[k][e] - slow[k][e]) for k in fast for e in ("lo", "hi"))
        print(f"{task:14} {fast_s:8.2f} {slow_s:8.2f} {slow_s / fast_s:6.0f}× {diff:20.2e}")


if __name__ == "__main__":
    main()
