"""How small can the student be? A tune over a ladder of student sizes with the constraint "within 2 points of
the teacher" (docs/tuning.md, "Benchmarks"; issue #14's target: ≥ 4 sizes, the smallest that meets it named with
its speed-up over the teacher).

    PYTHONPATH=src python benchmarks/tune_ladder.py [--steps 2200] [--run-dir runs/bench-tune-ladder]
    PYTHONPATH=src python benchmarks/tune_ladder.py --small        # a few minutes: checks that the script works

1. The full demo's assets (its splits; --small: the --quick splits cut to 300 / 64 / 100 rows), generate and
   validate; the teacher's accuracy on the validation split is measured (the same greedy decoder and scorer).
2. A ladder of untrained students, smallest to largest (hidden 32 / 48 / 64 / 80, two layers, the teacher's
   tokenizer; --small: 16 / 24 / 32 / 48), each trained with the demo's recipe for ``--steps`` steps as a trial
   (the start_with rows), then ``--extra`` sampled trials (student and learning rate).
3. Two objectives, the validation accuracy and the parameter count, and the constraint
   ``accuracy >= teacher - 0.02``: summary.json's Pareto front. The smallest feasible trial is the answer; the
   tune promotes the most accurate feasible one (the front's best by the metric) and tests it beside the teacher.
4. Prints every trial, the smallest student within 2 points of the teacher, its parameters against the teacher's,
   and its latency (batch 1, p50) against the teacher's on the same machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import yaml
from _tune_common import machine

from potstill.config import validate_spec
from potstill.data.tasks import teacher_messages
from potstill.demo import RECIPE, SIZES, TEACHER_DIR, build_assets, demo_spec
from potstill.demo.tiny import save_model, tiny_llama
from potstill.pipeline import run_pipeline
from potstill.teachers.hf import load_causal_lm, load_tokenizer
from potstill.train.probe import MetricProbe
from potstill.tune import run_tune
from potstill.tune.summary import trials_table

LADDER = [32, 48, 64, 80]
SMALL = {"train": 300, "validation": 64, "test": 100, "steps": 100, "ladder": [16, 24, 32, 48]}


def _truncate(path: Path, n: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:n]))


def ladder(assets: Path, widths: list[int]) -> list[str]:
    tok = load_tokenizer(str(TEACHER_DIR))
    out = []
    for w in widths:
        folder = assets / "ladder" / f"h{w}"
        if not (folder / "config.json").exists():
            save_model(tiny_llama(tok, hidden=w, layers=2, heads=4, max_positions=256, seed=1), tok, folder)
        out.append(str(folder.resolve()))
    return out


def teacher_accuracy(spec: dict[str, Any]) -> float:
    """The teacher on every validation row, asked as evaluation asks it (with the task's system prompt)."""
    model = load_causal_lm(str(TEACHER_DIR), torch.device("cpu"), torch.float32)
    probe = MetricProbe(validate_spec(spec), "accuracy", rows=10**6)
    probe.convs = [teacher_messages(c, probe.task) for c in probe.convs]
    return probe(model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="a small version that checks the script works")
    ap.add_argument("--steps", type=int, default=SIZES[False]["steps"], help="training steps of every trial")
    ap.add_argument("--extra", type=int, default=4, help="sampled trials after the ladder's")
    ap.add_argument("--widths", type=int, nargs="+", default=LADDER, help="the ladder's hidden sizes, smallest first")
    ap.add_argument("--points", type=float, default=2.0, help="the largest accuracy loss allowed, in points")
    ap.add_argument("--run-dir", type=Path, default=None)
    a = ap.parse_args()
    rd = a.run_dir or Path("runs/bench-tune-ladder-small" if a.small else "runs/bench-tune-ladder")
    print(f"machine: {machine()}", flush=True)
    assets = rd / "assets"
    build_assets(assets, quick=a.small, log=print)
    widths, steps = (SMALL["ladder"], SMALL["steps"]) if a.small else (a.widths, a.steps)
    if a.small:
        for name in ("train", "validation", "test"):
            _truncate(assets / f"{name}.jsonl", SMALL[name])
    spec = demo_spec(assets.resolve(), quick=a.small)
    spec["hyperparameters"]["max_steps"] = steps
    spec["evaluation"]["models"] = []
    run_pipeline(validate_spec(spec), rd, only=["generate", "validate"], log=print)
    teacher = teacher_accuracy(spec)
    bound = teacher - a.points / 100
    print(f"teacher: {teacher:.1%} on the validation split; constraint accuracy >= {bound:.4f}", flush=True)

    students = ladder(assets, widths)
    lr = RECIPE["learning_rate"]
    spec["tune"] = {
        "space": {
            "student.model": {"choices": students},
            "hyperparameters.learning_rate": {"low": 1e-3, "high": 1e-2, "log": True},
        },
        "trials": len(students) + a.extra,
        "objective": {"metrics": ["accuracy", "parameters"], "constraints": [f"accuracy >= {bound:.4f}"]},
        "start_with": [{"student.model": m, "hyperparameters.learning_rate": lr} for m in students],
    }
    (assets / "job.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        run_tune(validate_spec(spec), rd, log=print)
    except Exception as exc:  # no feasible trial: the table still says how close each came
        print(f"tune: {exc}")
    s = json.loads((rd / "tune" / "summary.json").read_text())
    header, rows, title = trials_table(s)
    print(f"\n{title}")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(r))
    ok = [t for t in s["trials"] if t["state"] == "complete" and t["feasible"]]
    results = rd / "eval" / "results.json"
    teacher_row = (
        next((m for m in json.loads(results.read_text())["models"] if m["role"] == "teacher"), None)
        if results.exists()
        else None
    )
    if not ok:
        print(f"\nno student of the ladder came within {a.points:g} points of the teacher ({teacher:.1%})")
    else:
        small = min(ok, key=lambda t: (t["parameters"], -t["value"]))
        line = (
            f"\nsmallest within {a.points:g} points of the teacher ({teacher:.1%}): #{small['number']:03d} "
            f"{Path(small['params']['student.model']).name}, {small['parameters']:,} parameters, "
            f"{small['value']:.1%} on validation, latency p50 {small['latency_ms_p50']:.1f} ms"
        )
        if teacher_row is not None:
            t_lat, t_par = teacher_row["latency"]["p50_ms"], teacher_row["parameters"]
            line += (
                f"; the teacher: {t_par:,} parameters ({t_par / small['parameters']:.1f}x), {t_lat:.1f} ms "
                f"({t_lat / small['latency_ms_p50']:.1f}x speed-up, batch 1)"
            )
        print(line)
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
