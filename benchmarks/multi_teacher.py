"""Two local teachers on the demo's task: a cascade and a pool against the strong teacher alone.

    PYTHONPATH=src python benchmarks/multi_teacher.py            # --out runs/bench-multi, --steps, --pool-student

Teachers: the shipped strong teacher (src/potstill/demo/teacher, 2.70M parameters, 18 layers) and a cheap one
(benchmarks/cheap_teacher, 0.34M, 2 layers, trained by `python -m potstill.demo.train_teacher --layers 2
--steps 2400 --rows 40000 --batch-size 16 --packing 192 --lr 3e-3 --schedule linear --weights float32`; trained
here when missing), priced by their compute: a token costs in proportion to the parameters it runs through
(output USD per 1M tokens = parameters in millions, input a quarter of that).
The same splits for every run (the quick demo's 2,000 unlabelled questions and 200 labelled validation rows;
1,000 test rows) and the same student and recipe (the demo's: 2,200 steps; at the quick demo's 800 steps a
student's accuracy still varies by tens of points between runs, docs/ablation.md, too much to compare within 1
point):
    strong            the strong teacher alone, greedy (the demo's setting)
    cascade           the cheap teacher first, 3 samples at T=0.7; a row goes to the strong teacher when its
                      samples disagree or do not parse (escalate_on: [parse, {self_consistency: {samples: 3}}])
    pool              both teachers answer (greedy), majority vote; a tie keeps the strong teacher's answer
    pool (unanimous)  the same answers, min_agreement 1.0: rows the two disagree on are dropped (data only)
The strong-only and cascade students train side by side (one thread each, as the demo trains its two). Prints,
per run: the strong teacher's share of the prompts, the kept data's accuracy against the problems' true answers,
the cost, the distilled student's test accuracy; then the issue's targets, met or not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from potstill.config import validate_spec
from potstill.data.tasks import parse_math, to_number
from potstill.demo import RECIPE, STUDENT, TEACHER_DIR, teacher_card
from potstill.demo.task import SYSTEM, problems
from potstill.errors import PotstillError
from potstill.pipeline import run_pipeline

CHEAP_DIR = Path(__file__).with_name("cheap_teacher")  # committed (1.4 MB); trained here when missing
CHEAP_RECIPE: dict[str, Any] = {
    "layers": 2,
    "steps": 2400,
    "rows": 40000,
    "batch_size": 16,
    "packing": 192,
    "lr": 3e-3,
    "schedule": "linear",
    "weights": "float32",
}
SIZES = {"train": 2000, "validation": 200, "test": 1000, "steps": 2200}
MAX_TOKENS = 96


def prices(card: dict[str, Any]) -> dict[str, float]:
    out = card["parameters"] / 1e6
    return {"input_price_per_mtok": round(out / 4, 4), "output_price_per_mtok": round(out, 4)}


def cheap_teacher(where: Path, log: Any) -> Path:
    if not (where / "teacher_card.json").exists():
        from potstill.demo.train_teacher import train_teacher

        log(f"training the cheap teacher into {where} ({CHEAP_RECIPE})")
        train_teacher(where, **CHEAP_RECIPE, log=log)
    return where


def assets(root: Path, cheap: Path) -> dict[int, int]:
    """The splits (none overlapping either teacher's training problems) and the untrained student; returns the
    true value of each training question by its row index."""
    from potstill.demo.tiny import save_model, tiny_llama
    from potstill.demo.train_teacher import training_rows
    from potstill.teachers.hf import load_tokenizer

    seen: set[str] = set()
    for d in (TEACHER_DIR, cheap):
        card = teacher_card(d)
        seen |= {str(r["prompt"]) for r in training_rows(card["rows"], card["seed"])}
    test = problems(SIZES["test"], seed=3, exclude=seen)
    seen |= {str(r["prompt"]) for r in test}
    val = problems(SIZES["validation"], seed=2, exclude=seen)
    seen |= {str(r["prompt"]) for r in val}
    train = problems(SIZES["train"], seed=1, exclude=seen)
    root.mkdir(parents=True, exist_ok=True)
    for name, rows, answer in (("train", train, False), ("validation", val, True), ("test", test, True)):
        with open(root / f"{name}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps({"prompt": r["prompt"], **({"answer": r["answer"]} if answer else {})}) + "\n")
    if not (root / "student" / "config.json").exists():
        tok = load_tokenizer(str(TEACHER_DIR))
        save_model(tiny_llama(tok, **STUDENT, max_positions=256, seed=1), tok, root / "student")
    return {i: int(r["value"]) for i, r in enumerate(train)}  # type: ignore[call-overload]


def job(
    root: Path,
    name: str,
    teachers: list[dict[str, Any]],
    teaching: dict[str, Any] | None,
    temp: float,
    steps: int,
    evaluate_teachers: bool = False,
) -> Any:
    d: dict[str, Any] = {
        "name": name,
        "task_type": "math",
        "teachers": teachers,
        "student": {"model": str(root / "student")},
        "prompts": {"system": SYSTEM},
        "data": {
            k: str(root / f"{s}.jsonl")
            for k, s in (("training", "train"), ("validation", "validation"), ("test", "test"))
        },
        "generation": {"temperature": temp, "max_tokens": MAX_TOKENS},
        "filters": ["nonempty", "parse", {"max_tokens": MAX_TOKENS}],
        "hyperparameters": {**RECIPE, "max_steps": steps, "num_epochs": 1000, "save_every": 200},
        "evaluation": {
            "baseline": False,
            "teacher": evaluate_teachers,
            "metrics": ["accuracy"],
            "max_new_tokens": MAX_TOKENS,
            "batch_size": 256,
            "bootstrap_samples": 0,
        },
    }
    if teaching is not None:
        d["teaching"] = teaching
    return validate_spec(d, source=name)


def data_accuracy(run: Path, truth: dict[int, int]) -> tuple[float, int, float]:
    """(share of kept training rows whose answer is the true one, kept rows, share answered by 'strong')."""
    rows = [json.loads(x) for x in (run / "data" / "train.jsonl").read_text().splitlines()]
    ok = sum(
        1
        for r in rows
        if (v := to_number(parse_math(r["messages"][-1]["content"]) or "")) is not None
        and v == truth[int(r["id"].split("-")[1])]
    )
    strong = sum(1 for r in rows if r.get("teacher") == "strong")
    return ok / len(rows), len(rows), strong / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-multi"))
    ap.add_argument("--fresh", action="store_true", help="delete --out first")
    ap.add_argument("--steps", type=int, default=SIZES["steps"], help="the students' optimiser steps")
    ap.add_argument("--questions", type=int, default=SIZES["train"], help="unlabelled training questions")
    ap.add_argument("--test", type=int, default=SIZES["test"], help="test rows")
    ap.add_argument("--cheap", type=Path, default=CHEAP_DIR, help="the cheap teacher's folder")
    ap.add_argument("--pool-student", action="store_true", help="also train a student on the pool's data")
    a = ap.parse_args()
    t0 = time.time()
    log = lambda m: print(f"[{time.time() - t0:6.0f} s] {m}", flush=True)  # noqa: E731
    if a.fresh:
        shutil.rmtree(a.out, ignore_errors=True)
    SIZES.update(train=a.questions, test=a.test)
    cheap = cheap_teacher(a.cheap, log)
    root = a.out / "assets"
    truth = assets(root, cheap)
    cards = {"strong": teacher_card(TEACHER_DIR), "cheap": teacher_card(cheap)}
    t = {
        n: {"name": n, "kind": "hf", "model": str(d), "batch_size": 256, **prices(cards[n])}
        for n, d in (("strong", TEACHER_DIR), ("cheap", cheap))
    }
    lscpu = subprocess.run("lscpu | grep -E 'Model name'", shell=True, capture_output=True, text=True).stdout
    cpu = lscpu.split(":", 1)[-1].strip() or "unknown CPU"
    flags = subprocess.run("lscpu | grep Flags", shell=True, capture_output=True, text=True).stdout
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    log(f"{cpu} ({simd}), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
    log(
        f"teachers: strong {cards['strong']['parameters'] / 1e6:.2f}M ({t['strong']['output_price_per_mtok']} USD/1M "
        f"out), cheap {cards['cheap']['parameters'] / 1e6:.2f}M ({t['cheap']['output_price_per_mtok']} USD/1M out)"
    )

    cascade = {
        "strategy": "cascade",
        "order": ["cheap", "strong"],
        "escalate_on": ["parse", {"self_consistency": {"samples": 3}}],
    }
    pool = {"strategy": "pool", "select": "vote", "order": ["strong", "cheap"]}
    runs = {
        "strong": (job(root, "strong", [t["strong"]], None, 0.0, a.steps), True),
        "cascade": (
            job(root, "cascade", [t["cheap"], t["strong"]], cascade, 0.7, a.steps, evaluate_teachers=True),
            True,
        ),
        "pool": (job(root, "pool", [t["strong"], t["cheap"]], pool, 0.0, a.steps), a.pool_student),
        "pool (unanimous)": (
            job(root, "pool-unanimous", [t["strong"], t["cheap"]], {**pool, "min_agreement": 1.0}, 0.0, a.steps),
            False,
        ),
    }
    results: dict[str, dict[str, Any]] = {}
    for name, (spec, _) in runs.items():  # the teachers' data first
        run = a.out / spec.name
        if name.startswith("pool"):  # the strong teacher's greedy answers are the strong run's: its cache
            (run / "teacher").mkdir(parents=True, exist_ok=True)
            src = a.out / ("strong" if name == "pool" else "pool") / "teacher" / "cache.sqlite"
            if src.exists() and not (run / "teacher" / "cache.sqlite").exists():
                with sqlite3.connect(src) as a_db, sqlite3.connect(run / "teacher" / "cache.sqlite") as b_db:
                    a_db.backup(b_db)
        t1 = time.time()
        try:
            run_pipeline(spec, run, only=["generate", "validate"], log=log)
        except PotstillError as exc:  # e.g. the unanimous pool keeps no row: say so, go on
            results[name] = {"error": str(exc).splitlines()[0]}
            log(f"{name}: {results[name]['error']}")
            continue
        acc, kept, share = data_accuracy(run, truth)
        teaching = json.loads((run / "teacher" / "teaching.json").read_text())
        gen = json.loads((run / "state.json").read_text())["stages"]["generate"]["counts"]
        prompts = gen["train"]["prompts"] + gen["validation"]["prompts"]
        results[name] = {
            "kept": kept,
            "data_accuracy": acc,
            "strong_share": share,
            "generate_s": round(time.time() - t1, 1),
            "cost": teaching.get("cost"),
            "strong_prompts": teaching["teachers"]["strong"]["prompts_answered"] / prompts,
            "funnel": teaching.get("funnel"),
            "agreement": teaching.get("agreement"),
        }
        log(f"{name}: {json.dumps(results[name])}")
    # the students, side by side, one thread each (as the demo trains its two), then their evaluation
    students = [(n, a.out / spec.name) for n, (spec, train) in runs.items() if train]
    t1 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "potstill", "train", str(run)],
            env=env,
            stdout=open(run.parent / f"{run.name}-train.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        for _, run in students
    ]
    for (name, run), p in zip(students, procs, strict=True):
        if p.wait() != 0:
            raise SystemExit(f"training {name} failed: see {run.parent / f'{run.name}-train.log'}")
    log(f"{len(students)} students trained side by side in {time.time() - t1:.0f} s")
    for name, run in students:
        run_pipeline(runs[name][0], run, only=["evaluate"], log=log)
        ev = json.loads((run / "eval" / "results.json").read_text())
        results[name]["models"] = {m["name"]: m["accuracy"] for m in ev["models"]}
        log(f"{name}: {results[name]['models']}")

    print(f"\n{cpu} ({simd}); load average {os.getloadavg()[0]:.2f} at the end; {time.time() - t0:.0f} s in all\n")
    ref = results["strong"]["data_accuracy"]
    print(
        "| run | strong teacher answers | training rows kept | kept data accurate | generation cost (USD) | "
        "saved vs strong alone | student accuracy (test) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | {r['error']} | | | | | |")
            continue
        c = r["cost"] or {}
        student = r.get("models", {}).get("distilled")
        print(
            f"| {name} | {100 * r['strong_prompts']:.1f} % of prompts | {r['kept']:,} | "
            f"{100 * r['data_accuracy']:.2f} % | {c.get('actual_usd', 0):.4f} | {c.get('saved_pct', 0):.1f} % | "
            f"{'–' if student is None else f'{100 * student:.1f} %'} |"
        )
    teachers = results["cascade"].get("models", {})
    print(
        f"\nteachers on the {SIZES['test']:,} test rows: strong {100 * teachers.get('teacher', 0):.1f} %, "
        f"cheap {100 * teachers.get('teacher-cheap', 0):.1f} %"
    )
    s, c = results["strong"]["models"]["distilled"], results["cascade"]["models"]["distilled"]
    targets = [
        (
            "cascade: the strong teacher answers <= 40 % of the rows",
            f"{100 * results['cascade']['strong_prompts']:.1f} %",
            results["cascade"]["strong_prompts"] <= 0.40,
        ),
        ("cascade: student within 1 point of the strong-only student", f"{100 * (c - s):+.1f} points", c >= s - 0.01),
        (
            "pool (vote): kept data at least as accurate as the strong teacher's alone",
            f"{100 * results['pool']['data_accuracy']:.2f} % vs {100 * ref:.2f} %",
            results["pool"]["data_accuracy"] >= ref,
        ),
    ]
    print()
    for what, measured, met in targets:
        print(f"- {what}: {measured} ({'met' if met else 'NOT met'})")


if __name__ == "__main__":
    main()
