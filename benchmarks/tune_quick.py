"""A tune on the demo's --quick task against its fixed recipe (docs/tuning.md, "Benchmarks"; issue #14's target:
≤ 20 trials in ≤ 30 min on 2 cores, each trial capped at the fixed recipe's training time, ≥ 15 points better on
test than the fixed recipe).

    PYTHONPATH=src python benchmarks/tune_quick.py [--trials 20] [--timeout-min 30] [--run-dir runs/bench-tune-quick]
    PYTHONPATH=src python benchmarks/tune_quick.py --small        # a few minutes: checks that the script works
    PYTHONPATH=src python benchmarks/tune_quick.py --kd           # the space also holds logit KD (alpha 0 = SFT)
    PYTHONPATH=src python benchmarks/tune_quick.py --widths 96 128  # ... and the student's width (the demo's: 80)
    PYTHONPATH=src python benchmarks/tune_quick.py --confirm 3 2    # the best 3 trained with 2 more seeds each

1. The demo's --quick assets (its splits and untrained student; --small: the first 300 / 64 / 100 rows) and the
   fixed recipe (potstill.demo.RECIPE, 800 steps; --small: 100) run as ``potstill run`` does, in one folder:
   generate, validate, train, evaluate. Its test accuracy and training seconds are kept (fixed_results.json).
2. ``potstill tune`` in the same folder (the teacher data are reused: nothing is generated again) searches the
   learning rate, batch size, schedule, warm-up, weight decay and steps, with ``max_minutes`` = the fixed recipe's
   training time, so no trial trains longer than it; the fixed recipe is the first trial. The winner is tested.
3. Prints the machine, the fixed and the tuned test accuracy, the gain in points, the tune's wall time and the
   table of trials.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml
from _tune_common import machine
from tune_ladder import ladder

from potstill.config import validate_spec
from potstill.demo import RECIPE, STUDENT, build_assets, demo_spec
from potstill.pipeline import run_pipeline
from potstill.run_dir import RunDir
from potstill.tune import run_tune
from potstill.tune.summary import trials_table

KD_TOP_K = 20  # --kd: top-k logprobs kept per answer position
SMALL = {"train": 300, "validation": 64, "test": 100, "steps": 100, "trials": 3}


def _truncate(path: Path, n: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:n]))


def distilled(rd: Path, results: str = "eval/results.json") -> dict[str, Any]:
    data = json.loads((rd / results).read_text())
    return next(m for m in data["models"] if m["role"] == "distilled")


def tune_section(
    steps: int, cap_min: float, trials: int, timeout_s: float | None, kd: bool, students: list[str], demo: str
) -> dict[str, Any]:
    fixed = {
        "hyperparameters.learning_rate": RECIPE["learning_rate"],
        "hyperparameters.batch_size": RECIPE["batch_size"],
        "hyperparameters.lr_schedule": RECIPE["lr_schedule"],
        "hyperparameters.warmup_ratio": RECIPE["warmup_ratio"],
        "hyperparameters.weight_decay": RECIPE["weight_decay"],
        "hyperparameters.max_steps": steps,
    }
    extra: dict[str, Any] = {}
    if kd:  # logit KD from the top-k captured at generation; alpha 0 is the fixed recipe's plain SFT
        extra = {
            "hyperparameters.kd.alpha": {"low": 0.0, "high": 0.9},
            "hyperparameters.kd.temperature": {"low": 0.5, "high": 2.0},
        }
        fixed |= {"hyperparameters.kd.alpha": 0.0, "hyperparameters.kd.temperature": 1.0}
    if students:  # the student's width too, the demo's among them (the fixed recipe's)
        extra["student.model"] = {"choices": students}
        fixed["student.model"] = demo
    return {
        "space": {
            **extra,
            "hyperparameters.learning_rate": {"low": 1e-3, "high": 3e-2, "log": True},
            "hyperparameters.batch_size": {"choices": [8, 16, 32]},
            "hyperparameters.lr_schedule": {"choices": ["linear", "cosine", "constant"]},
            "hyperparameters.warmup_ratio": {"low": 0.0, "high": 0.1},
            "hyperparameters.weight_decay": {"low": 0.0, "high": 0.2},
            "hyperparameters.max_steps": {"low": steps // 2, "high": steps * 3, "step": max(1, steps // 4)},
        },
        "trials": trials,
        **({"timeout_s": timeout_s} if timeout_s else {}),
        "pruner": {"kind": "median", "startup_trials": 3},
        "reports": 5,
        "report_rows": 64,
        "start_with": [fixed],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="a small version that checks the script works")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--timeout-min", type=float, default=30.0, help="start no trial after this many minutes")
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument(
        "--kd",
        action="store_true",
        help=f"the teacher's top-{KD_TOP_K} logprobs are captured at generation and the space adds kd.alpha and "
        "kd.temperature (logit KD; alpha 0 is SFT)",
    )
    ap.add_argument(
        "--confirm",
        type=int,
        nargs=2,
        metavar=("TOP", "SEEDS"),
        default=None,
        help="tune.confirm: the best TOP trials trained again with SEEDS more seeds; the best mean wins (run again "
        "in a finished tune's folder, it confirms that study's trials without new ones)",
    )
    ap.add_argument(
        "--widths",
        type=int,
        nargs="*",
        default=[],
        help="the space also holds the student: these hidden sizes (2 layers, as the demo's) beside the demo's 80",
    )
    a = ap.parse_args()
    rd = a.run_dir or Path("runs/bench-tune-quick-small" if a.small else "runs/bench-tune-quick")
    print(f"machine: {machine()}", flush=True)
    assets = rd / "assets"
    size = build_assets(assets, quick=True, log=print)
    steps, trials = (SMALL["steps"], SMALL["trials"]) if a.small else (size["steps"], a.trials)
    if a.small:
        for name in ("train", "validation", "test"):
            _truncate(assets / f"{name}.jsonl", SMALL[name])
    spec = demo_spec(assets.resolve(), quick=True)
    spec["hyperparameters"]["max_steps"] = steps
    if a.kd:
        spec["generation"]["logprobs"] = KD_TOP_K  # the fixed recipe ignores them (no kd section)
    (assets / "job.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))

    first = rd / "tune" / "trials" / "000" / "job.yaml"  # the fixed recipe's trial: the cap it ran under
    if (rd / "fixed_results.json").exists() and first.exists():  # a finished tune's folder (e.g. --confirm)
        fixed = distilled(rd, "fixed_results.json")
        cap_min = float(yaml.safe_load(first.read_text())["hyperparameters"]["max_minutes"])
        print(f"fixed recipe (run earlier): test accuracy {fixed['accuracy']:.1%}, cap {cap_min:.3f} min", flush=True)
    else:
        run_pipeline(validate_spec(spec), rd, log=print)  # the fixed recipe, as potstill run does
        fixed = distilled(rd)
        fixed_s = float(RunDir(rd).stage("train")["counts"]["train_seconds"])  # what max_minutes caps
        (rd / "fixed_results.json").write_text((rd / "eval" / "results.json").read_text())
        print(f"fixed recipe: test accuracy {fixed['accuracy']:.1%}, {steps} steps in {fixed_s:.0f} s", flush=True)
        cap_min = round(fixed_s / 60, 3)
    tuned_spec = {**spec, "hyperparameters": {**spec["hyperparameters"], "max_minutes": cap_min}}
    demo = str((assets / "student").resolve())
    by_width = {STUDENT["hidden"]: demo} | dict(zip(a.widths, ladder(assets, a.widths), strict=True))
    students = [by_width[w] for w in sorted(by_width)] if a.widths else []
    timeout = None if a.small else 60 * a.timeout_min
    tuned_spec["tune"] = tune_section(steps, cap_min, trials, timeout, a.kd, students, demo)
    if a.confirm:
        tuned_spec["tune"]["confirm"] = {"top": a.confirm[0], "seeds": a.confirm[1]}
    t0 = time.perf_counter()
    run_tune(validate_spec(tuned_spec), rd, log=print)
    wall = time.perf_counter() - t0
    tuned = distilled(rd)
    s = json.loads((rd / "tune" / "summary.json").read_text())

    header, rows, title = trials_table(s)
    print(f"\n{title}")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(r))
    gain = 100 * (tuned["accuracy"] - fixed["accuracy"])
    print(
        f"\nfixed recipe {fixed['accuracy']:.1%} -> tuned #{s['best']['number']:03d} {tuned['accuracy']:.1%} on "
        f"{json.loads((rd / 'eval' / 'results.json').read_text())['rows']} test rows: {gain:+.1f} points "
        f"(target +15); {s['finished']} trials ({s['pruned']} pruned) in {wall / 60:.1f} min, each capped at "
        f"{cap_min:.2f} min of training"
    )
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
