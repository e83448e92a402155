"""The fixed recipe against a tune's winner over several training seeds, on test (docs/tuning.md).

    PYTHONPATH=src python benchmarks/tune_seeds.py runs/bench-tune-quick4 --seeds 1 2 3 4

A tune's winner is the trial with the best validation score among ~20, each trained once with the job's seed;
the fixed recipe is one training too. On the demo's --quick task one recipe's test accuracy moves by tens of
points from one training seed to the next (the student crosses a steep part of its learning curve inside the
budget), so one run each says little about which recipe is better. This trains trial #000 (the tune's first
trial: the fixed recipe under the cap) and the winner again with each seed (the data order and sampling; the
student's initial weights are the job's), under the same ``max_minutes`` as in the tune, evaluates each on the
test split and prints both recipes' accuracy per seed, their means, and the mean of the paired differences with
a 95 % t-interval. Runs in RUN_DIR/tune/seeds/NNN-seedS/ (a finished one is not trained again).

    PYTHONPATH=src python benchmarks/tune_seeds.py runs/bench-tune-quick4 --best-of 3

The comparison for what ``tune.confirm`` promotes (a recipe's best run on validation): each recipe's best of N
runs on validation (the trial and N - 1 more seeds, trained as confirm trains them), tested.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from _tune_common import machine

from potstill.config import JobSpec
from potstill.pipeline import run_pipeline
from potstill.run_dir import RunDir
from potstill.tune.confirm import train_seed
from potstill.tune.trial import prepare

T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}  # two-sided, by df


def seeded(rd: Path, number: int, seed: int) -> Path:
    """Trial ``number``'s settings trained with ``seed`` and evaluated on the job's test split; the folder."""
    job = yaml.safe_load((rd / "job.yaml").read_text())
    d = yaml.safe_load((rd / "tune" / "trials" / f"{number:03d}" / "job.yaml").read_text())
    d["data"]["test"] = job["data"]["test"]
    d["hyperparameters"]["seed"] = seed
    d["evaluation"].update(metrics=["accuracy"], teacher=False, baseline=False, models=[])
    folder = rd / "tune" / "seeds" / f"{number:03d}-seed{seed}"
    prepare(folder, RunDir(rd))
    run_pipeline(JobSpec.model_validate(d), folder, only=["train", "evaluate"], log=print)
    return folder


def best_of(rd: Path, number: int, n: int) -> tuple[str, float, float]:
    """Trial ``number``'s best of ``n`` runs on validation (the trial and seeds job + 1 .. job + n - 1, trained as
    tune.confirm trains them, in the same folders: a run confirm made is not trained again), tested: (run
    folder, validation score, test accuracy)."""
    spec = JobSpec.model_validate(yaml.safe_load((rd / "job.yaml").read_text()))
    assert spec.tune is not None
    metric = spec.tune.metric(spec.task_type)
    s = json.loads((rd / "tune" / "summary.json").read_text())
    row = next(t for t in s["trials"] if t["number"] == number)
    trial = SimpleNamespace(number=number, params=row["params"], values=[row["value"]])
    n_rows = sum(1 for _ in (rd / "data" / "train.jsonl").open())
    runs = [(row["folder"], float(row["value"]))]
    base = int(
        yaml.safe_load((rd / "tune" / "trials" / f"{number:03d}" / "job.yaml").read_text())["hyperparameters"]["seed"]
    )
    for seed in range(base + 1, base + n):
        runs.append((f"{row['folder']}-seed{seed}", train_seed(spec, RunDir(rd), n_rows, trial, seed, metric)))
        print(f"#{number:03d} seed {seed}: {metric} {runs[-1][1]:.4g} on validation", flush=True)
    folder, val = max(runs, key=lambda r: r[1])  # the first of equals: the trial's own
    tested = rd / "tune" / "seeds" / f"best-of-{n}-{number:03d}"
    shutil.rmtree(tested, ignore_errors=True)
    shutil.copytree(rd / folder, tested, symlinks=True)
    job = yaml.safe_load((rd / "job.yaml").read_text())
    d = yaml.safe_load((tested / "job.yaml").read_text())
    d["data"]["test"] = job["data"]["test"]
    d["evaluation"].update(metrics=["accuracy"], teacher=False, baseline=False, models=[])
    run_pipeline(JobSpec.model_validate(d), tested, only=["evaluate"], log=print)
    return folder, val, accuracy(tested)


def accuracy(folder: Path) -> float:
    res = json.loads((folder / "eval" / "results.json").read_text())
    return float(next(m for m in res["models"] if m["role"] == "distilled")["accuracy"])


def steps(folder: Path) -> int:
    return int(RunDir(folder).stage("train")["counts"]["steps"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--trial", type=int, default=None, help="the tuned trial (default: the tune's winner)")
    ap.add_argument(
        "--best-of",
        type=int,
        default=None,
        metavar="N",
        help="instead: each recipe's best of N runs on validation (as tune.confirm promotes), tested",
    )
    a = ap.parse_args()
    print(f"machine: {machine()}", flush=True)
    s = json.loads((a.run_dir / "tune" / "summary.json").read_text())
    best = s["best"]["number"] if a.trial is None else a.trial
    if a.best_of:
        got = {n: best_of(a.run_dir, n, a.best_of) for n in (0, best)}
        print(f"\n| recipe | best of {a.best_of} on validation | its test accuracy |")
        print("|---|---|---|")
        for n, (folder, val, test) in got.items():
            name = "fixed recipe (#000)" if n == 0 else f"tuned (#{n:03d})"
            print(f"| {name} | {folder}: {100 * val:.1f} % | {100 * test:.1f} % |")
        gain = 100 * (got[best][2] - got[0][2])
        print(f"\ngain of the tuned best-of-{a.best_of} over the fixed one: {gain:+.1f} points")
        return
    rows: list[dict[str, Any]] = []
    for seed in a.seeds:
        for number in (0, best):
            folder = seeded(a.run_dir, number, seed)
            rows.append({"trial": number, "seed": seed, "accuracy": accuracy(folder), "steps": steps(folder)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n| seed | fixed recipe (#000): test, steps | tuned (#{best:03d}): test, steps | difference |")
    print("|---|---|---|---|")
    diffs = []
    for seed in a.seeds:
        f = next(r for r in rows if r["seed"] == seed and r["trial"] == 0)
        t = next(r for r in rows if r["seed"] == seed and r["trial"] == best)
        diffs.append(100 * (t["accuracy"] - f["accuracy"]))
        print(
            f"| {seed} | {100 * f['accuracy']:.1f} %, {f['steps']} | {100 * t['accuracy']:.1f} %, {t['steps']} | "
            f"{diffs[-1]:+.1f} |"
        )
    mean = {n: 100 * statistics.mean(r["accuracy"] for r in rows if r["trial"] == n) for n in (0, best)}
    gain = statistics.mean(diffs)
    half = T95.get(len(diffs) - 1, 2.0) * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0
    print(
        f"\nmean over {len(a.seeds)} seeds: fixed {mean[0]:.1f} %, tuned {mean[best]:.1f} %; gain {gain:+.1f} points "
        f"(95 % interval {gain - half:+.1f} .. {gain + half:+.1f}; target +15)"
    )


if __name__ == "__main__":
    main()
