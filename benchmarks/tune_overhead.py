"""The tuning machinery's own cost (study storage, sampler, per-trial setup, pruning reports) against the trials'
training time, on tiny models (docs/tuning.md, "Overhead").

    PYTHONPATH=src python benchmarks/tune_overhead.py [--trials 8] [--steps 300] [--reports 10] [--report-rows 16]

A tiny teacher that has memorised 48 additions answers them; a tune of ``--trials`` trials (learning rate on a
log range, the median pruner) trains a random-init student ``--steps`` steps per trial in one process. Measured:

- the search's wall time (tune/run.py's ``_search``: every trial, start to end, with Optuna around it);
- each trial's run (its ``run_pipeline`` call: train → evaluate, what a plain run of the same settings does), and
  within it the train and evaluate stages (their elapsed_s in the trial's state.json);
- the pruning reports (the student answering ``--report-rows`` validation prompts ``--reports`` times per trial),
  timed inside the train stage.

machinery = (search − Σ runs) + Σ reports: Optuna's storage and sampler, the trial folders, summary.json (with the
parameter importances), the locks, and the reports; printed against Σ train − Σ reports (the training alone).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from _tune_common import machine

from potstill.config import load_spec
from potstill.tune import pruning
from potstill.tune import run as tune_run
from potstill.tune import trial as tune_trial
from potstill.tune.run import run_tune

PAIRS = [(a, b) for a in range(1, 10) for b in range(1, 10)][:64]


def tiny_models(root: Path) -> dict[str, Path]:
    from potstill.demo.tiny import build_tokenizer, save_model, tiny_llama
    from potstill.train.data import encode_chat
    from potstill.train.trainer import FitConfig, fit

    texts = [f"What is {a} plus {b}? Answer: {a + b}" for a, b in PAIRS] * 10
    tok = build_tokenizer(texts, vocab_size=400)
    teacher = tiny_llama(tok, hidden=48, layers=2, heads=2, seed=0)
    rows = [
        encode_chat(
            tok,
            [
                {"role": "system", "content": "Answer."},
                {"role": "user", "content": f"What is {a} plus {b}?"},
                {"role": "assistant", "content": f"Answer: {a + b}"},
            ],
            64,
        )
        for a, b in PAIRS
    ]
    cfg = FitConfig(learning_rate=1e-2, batch_size=16, num_epochs=10**4, max_steps=400, warmup_ratio=0.0)
    fit(teacher, rows, [], cfg, tok.pad_token_id)
    student = tiny_llama(tok, hidden=32, layers=2, heads=2, seed=1)
    return {
        "teacher": save_model(teacher, tok, root / "teacher"),
        "student": save_model(student, tok, root / "student"),
    }


def job(root: Path, models: dict[str, Path], a: argparse.Namespace) -> Path:
    def write(name: str, rows: list[dict[str, Any]]) -> str:
        path = root / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    spec = {
        "name": "overhead",
        "task_type": "math",
        "teacher": {"kind": "hf", "model": str(models["teacher"]), "batch_size": 64},
        "student": {"model": str(models["student"])},
        "data": {
            "training": write("train.jsonl", [{"prompt": f"What is {a} plus {b}?"} for a, b in PAIRS[:48]]),
            "validation": write(
                "val.jsonl", [{"prompt": f"What is {a} plus {b}?", "answer": f"{a + b}"} for a, b in PAIRS[48:]]
            ),
        },
        "prompts": {"system": "Answer."},
        "generation": {"temperature": 0.0, "max_tokens": 8},
        "filters": ["nonempty"],
        "hyperparameters": {"batch_size": 4, "max_steps": a.steps, "num_epochs": 1000, "warmup_ratio": 0.0},
        "evaluation": {"max_new_tokens": 8, "latency_samples": 4, "batch_size": 16, "metrics": ["accuracy"]},
        "tune": {
            "space": {"hyperparameters.learning_rate": {"low": 1e-3, "high": 5e-2, "log": True}},
            "trials": a.trials,
            "pruner": {"kind": "median", "startup_trials": 2},
            "reports": a.reports,
            "report_rows": a.report_rows,
        },
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _seconds(stage: dict[str, Any]) -> float:
    """A stage's seconds; a pruned trial's train stage failed (TrialPruned): its start to its end."""
    if stage.get("elapsed_s") is not None:
        return float(stage["elapsed_s"])
    return float((stage.get("finished") or 0.0) - (stage.get("started") or 0.0)) if stage.get("started") else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--reports", type=int, default=10)
    ap.add_argument("--report-rows", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"machine: {machine()}; {a.threads} torch thread(s)", flush=True)
    timed: dict[str, float] = {"search": 0.0, "reports": 0.0, "runs": 0.0}
    search, score, pipeline = tune_run._search, pruning.Reporter.score, tune_trial.run_pipeline

    def timed_pipeline(*args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return pipeline(*args, **kw)
        finally:
            timed["runs"] += time.perf_counter() - t0

    def timed_search(*args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return search(*args, **kw)
        finally:
            timed["search"] += time.perf_counter() - t0

    def timed_score(self: Any, model: Any) -> float:
        t0 = time.perf_counter()
        try:
            return score(self, model)
        finally:
            timed["reports"] += time.perf_counter() - t0

    tune_run._search = timed_search  # type: ignore[assignment]
    tune_trial.run_pipeline = timed_pipeline  # type: ignore[assignment]
    pruning.Reporter.score = timed_score  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = load_spec(job(root, tiny_models(root / "models"), a))
        rd = run_tune(spec, root / "run", log=lambda m: print(m, flush=True)).root
        s = json.loads((rd / "tune" / "summary.json").read_text())
        train = evaluate = 0.0
        for t in s["trials"]:
            stages = json.loads((rd / t["folder"] / "state.json").read_text())["stages"]
            train += _seconds(stages.get("train") or {})
            evaluate += _seconds(stages.get("evaluate") or {})
    setup = timed["search"] - timed["runs"]
    machinery = setup + timed["reports"]
    training = train - timed["reports"]
    n = len(s["trials"])
    print(
        f"\n{len(s['trials'])} trials ({s['complete']} complete, {s['pruned']} pruned), {a.steps} steps each at most, "
        f"{a.reports} reports of {a.report_rows} rows"
    )
    print(f"search wall time            {timed['search']:8.1f} s")
    print(f"  trials' runs              {timed['runs']:8.1f} s   (train -> evaluate, as plain runs)")
    print(f"    training                {training:8.1f} s")
    print(f"    evaluation              {evaluate:8.1f} s   (validation split)")
    print(f"    the pipeline's own      {timed['runs'] - train - evaluate:8.1f} s   (state.json, job.yaml, inputs)")
    reports = timed["reports"]
    print(f"  pruning reports           {reports:8.1f} s   = {100 * reports / training:.1f} % of training")
    pct = 100 * setup / training
    print(f"  storage, sampler, setup   {setup:8.1f} s   = {pct:.1f} % of training, {setup / n:.2f} s a trial")
    print(f"machinery overhead          {machinery:8.1f} s   = {100 * machinery / training:.1f} % of the training time")
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
