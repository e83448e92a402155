"""The offline demo: a committed 2.7M-parameter teacher distilled into an 11× smaller student, on word problems.

    potstill demo [--quick]          ≡  potstill.demo.run_demo(Path("runs/demo"), quick=False)

The user's situation: 8,000 unlabelled two-step word problems and 500 labelled ones. Steps: write the splits
(none overlaps the problems the teacher was trained on), save a random-init student that shares the teacher's
tokenizer, write job.yaml, run generate → validate, then train the distilled student (the train stage) and, beside
it in a second process, the gold-only baseline (the same student on the 500 labelled problems with the same recipe:
steps, batch size, learning rate; ``gold_only.py``), one CPU thread each, then evaluate and report. ``--quick``
answers 2,000 questions, trains 800 steps and skips the gold-only baseline. The teacher (``demo/teacher``,
trained by ``python -m potstill.demo.train_teacher``) ships with the package, so nothing is downloaded. Every
answer is worked column by column ("47 + 38: 7 + 8 = 15, 4 + 3 + 1 = 8, so 85. ..."): with that scratchpad a
small model learns carrying, where the bare "47 + 38 = 85" stays below 5 %.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .task import SYSTEM, problems

TEACHER_DIR = Path(__file__).with_name("teacher")
# unlabelled training questions the teacher answers; labelled validation rows (also the gold-only student's data);
# labelled test rows; the students' optimiser steps (of RECIPE's batch size). 8,000 answers, not 20,000: on the
# AVX2-only 2-core machine 8,000 / 10,000 / 12,000 answers gave 95.8 / 96.8 / 97.2 % after the same 2,200 steps and
# the whole demo took 7 min 57 s / 9 min 56 s (a slower hour) / 9 min 23 s; 20,000 took over 10 min
# (docs/ablation.md). --quick skips the gold-only baseline; it cannot reach the full demo's accuracy in two minutes.
SIZES = {
    False: {"train": 8000, "validation": 500, "test": 1000, "steps": 2200},
    True: {"train": 2000, "validation": 200, "test": 300, "steps": 800},
}
STUDENT = {"hidden": 80, "layers": 2, "heads": 4}
# how both students train: two worked answers packed in each 192-token row, so a step of 16 rows learns from 32
# answers with less padding; linear decay (measured against other batch sizes, learning rates, schedules and
# initialisations from the teacher: docs/ablation.md)
RECIPE: dict[str, Any] = {
    "batch_size": 16,
    "packing": True,
    "max_seq_len": 192,
    "learning_rate": 3e-3,
    "warmup_ratio": 0.05,
    "lr_schedule": "linear",
    "weight_decay": 0.1,
}
# torch threads per student while the two train side by side (two one-thread processes on 2 cores: 2,200 steps in
# ~300 s; one after the other on two threads each: ~330 s, and far slower when another job holds a core)
SIDE_BY_SIDE_THREADS = 1
MAX_TOKENS = 96  # a worked two-step answer is 45-75 tokens
TARGETS = {
    "teacher_accuracy": 0.90,
    "retention_pct": 95.0,
    "parameter_share": 0.10,
    "gain_over_gold_points": 20.0,
    "speedup_x": 5.0,
    "memory_x": 5.0,
}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def teacher_card(teacher: Path | None = None) -> dict[str, Any]:
    from ..errors import PotstillError

    teacher = teacher or TEACHER_DIR
    card = teacher / "teacher_card.json"
    if not card.exists():
        raise PotstillError(
            f"{teacher}: the demo's teacher is missing; rebuild it with "
            f"`python -m potstill.demo.train_teacher --out {teacher}` (about 40 min on 2 cores)"
        )
    return dict(json.loads(card.read_text()))


def build_assets(assets: Path, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Write the job's splits, none overlapping the teacher's training problems, and the untrained student."""
    from .train_teacher import training_rows

    card = teacher_card()
    size = SIZES[quick]
    seen = {str(r["prompt"]) for r in training_rows(card["rows"], card["seed"])}
    test = problems(size["test"], seed=3, exclude=seen)
    seen |= {str(r["prompt"]) for r in test}
    val = problems(size["validation"], seed=2, exclude=seen)
    seen |= {str(r["prompt"]) for r in val}
    unlabelled = problems(size["train"], seed=1, exclude=seen)
    _write_jsonl(assets / "train.jsonl", [{"prompt": r["prompt"]} for r in unlabelled])
    _write_jsonl(assets / "validation.jsonl", [{"prompt": r["prompt"], "answer": r["answer"]} for r in val])
    _write_jsonl(assets / "test.jsonl", [{"prompt": r["prompt"], "answer": r["answer"]} for r in test])
    if not (assets / "student" / "config.json").exists():
        from ..teachers.hf import load_tokenizer
        from .tiny import save_model, tiny_llama

        tok = load_tokenizer(str(TEACHER_DIR))
        save_model(tiny_llama(tok, **STUDENT, max_positions=256, seed=1), tok, assets / "student")
    log(
        f"demo: teacher {card['parameters'] / 1e6:.2f}M parameters ({card['sample_accuracy']:.1%} on its "
        f"{card['sample_size']}-problem sample); {len(unlabelled):,} unlabelled questions, {len(val)} labelled, "
        f"{len(test):,} test"
    )
    return size


def demo_spec(assets: Path, quick: bool) -> dict[str, Any]:
    size = SIZES[quick]
    return {
        "name": "demo-quick" if quick else "demo",
        "task_type": "math",
        "teacher": {"kind": "hf", "model": str(TEACHER_DIR), "batch_size": 256},
        "student": {"model": str(assets / "student")},
        "prompts": {"system": SYSTEM},
        "data": {
            "training": str(assets / "train.jsonl"),
            "validation": str(assets / "validation.jsonl"),
            "test": str(assets / "test.jsonl"),
        },
        "generation": {"temperature": 0.0, "max_tokens": MAX_TOKENS},
        "filters": ["nonempty", "parse", {"max_tokens": MAX_TOKENS}],
        "hyperparameters": {
            **RECIPE,
            "max_steps": size["steps"],
            "num_epochs": 1000,  # max_steps ends the training
            "temperature": 0.7,
            "save_every": 200,
        },
        "evaluation": {
            "models": [] if quick else [{"name": "gold-only", "model": str(assets / "gold-only")}],
            "max_new_tokens": MAX_TOKENS,
            "latency_samples": 16,
            "batch_size": 256,
            "bootstrap_samples": 200,
        },
    }


def default_run_dir(quick: bool) -> Path:
    """Where `potstill demo` writes: the full demo and --quick never share a student."""
    return Path("runs/demo-quick" if quick else "runs/demo")


def run_demo(run_dir: Path, quick: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Build the demo's data and student, then run the whole pipeline on them; returns the run dir.
    The full demo and ``quick`` write to different folders by default (runs/demo, runs/demo-quick); sharing one
    is safe too: each stage's fingerprint covers the splits, so a changed size trains a new student."""
    from ..pipeline import run_lock
    from ..run_dir import RunDir

    log = log or (lambda m: None)
    run_dir = Path(run_dir)
    with run_lock(RunDir(run_dir)):  # the assets too are written under the run folder's lock
        return _run_demo(run_dir, quick, log)


def _run_demo(run_dir: Path, quick: bool, log: Callable[[str], None]) -> Path:
    import yaml

    from ..config import validate_spec
    from ..pipeline import run_pipeline
    from ..run_dir import RunDir

    assets = run_dir / "assets"
    build_assets(assets, quick, log)
    spec_dict = demo_spec(assets.resolve(), quick)
    (assets / "job.yaml").write_text(yaml.safe_dump(spec_dict, sort_keys=False))
    spec = validate_spec(spec_dict, source="demo")
    run_pipeline(spec, run_dir, only=["generate", "validate"], log=log)
    train_students(spec, run_dir, assets, quick, log)
    run_pipeline(spec, run_dir, only=["evaluate"], log=log)
    if not quick:  # the targets are the full demo's; the report shows them
        results = json.loads((run_dir / "eval" / "results.json").read_text())
        targets = [{"target": w, "measured": m, "met": ok} for w, m, ok in check_targets(results)]
        RunDir(run_dir).write_json(run_dir / "eval" / "targets.json", {"targets": targets})
    run_pipeline(spec, run_dir, log=log)
    return run_dir


def train_students(spec: Any, run_dir: Path, assets: Path, quick: bool, log: Callable[[str], None]) -> None:
    """The train stage (the distilled student) and, in a second process at the same time, the gold-only student
    (full demo only), with the same steps and RECIPE: SIDE_BY_SIDE_THREADS threads each while both train."""
    from ..pipeline import run_pipeline
    from . import gold_only

    steps = SIZES[quick]["steps"]
    proc = None
    try:
        if not quick:
            proc = gold_only.start(assets / "student", assets / "gold-only", assets / "validation.jsonl", steps, RECIPE)
            if proc is not None:
                log(
                    f"demo: training the gold-only student on the {SIZES[quick]['validation']} labelled problems "
                    f"({steps} steps, the distilled student's recipe) beside the distilled student"
                )
        with _torch_threads(SIDE_BY_SIDE_THREADS if proc is not None else None):
            run_pipeline(spec, run_dir, only=["train"], log=log)
        gold_only.wait(proc, assets / "gold-only")
    finally:
        gold_only.stop(proc)


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """``n`` torch threads inside the block (None: as they are)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The demo's targets against a run's results.json: (what, measured, met) per target."""
    by = {m["name"]: m for m in results["models"]}
    t, d, g = by["teacher"], by["distilled"], by.get("gold-only")
    ret = 100 * d["accuracy"] / t["accuracy"] if t["accuracy"] else 0.0
    out = [
        ("teacher accuracy ≥ 90 %", f"{t['accuracy']:.1%}", t["accuracy"] >= TARGETS["teacher_accuracy"]),
        ("retention ≥ 95 % of the teacher", f"{ret:.1f} %", ret >= TARGETS["retention_pct"]),
        (
            "parameters ≤ 1/10 of the teacher's",
            f"1/{t['parameters'] / d['parameters']:.1f}",
            d["parameters"] <= TARGETS["parameter_share"] * t["parameters"],
        ),
    ]
    if g is not None:
        gain = 100 * (d["accuracy"] - g["accuracy"])
        out.append(("≥ 20 points above gold-only", f"{gain:+.1f} points", gain >= TARGETS["gain_over_gold_points"]))
    tl, dl = t.get("latency", {}).get("p50_ms"), d.get("latency", {}).get("p50_ms")
    if tl and dl:
        out.append(("≥ 5× faster per answer (p50, batch 1)", f"{tl / dl:.1f}×", tl / dl >= TARGETS["speedup_x"]))
    tm, dm = t.get("memory", {}).get("peak_tensor_mb"), d.get("memory", {}).get("peak_tensor_mb")
    if tm and dm:
        out.append(("≥ 5× less model memory (tensor peak)", f"{tm / dm:.1f}×", tm / dm >= TARGETS["memory_x"]))
    return out
