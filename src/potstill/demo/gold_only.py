"""The demo's gold-only baseline, trained in its own process beside the distilled student.

    python -m potstill.demo.gold_only STUDENT_DIR OUT_DIR LABELLED_JSONL --steps N --hp '{"batch_size": 16, ...}'

The baseline a user has without a teacher: the demo's untrained student trained on the labelled rows alone, with
the distilled student's recipe (steps, batch size, learning rate, schedule: the same compute). ``potstill demo``
starts it (``start``) as the distilled student's training starts, each on one CPU thread, so the two students
train side by side on a 2-core machine, then collects it (``wait``). OUT_DIR/recipe.json names what was trained:
a re-run with the same recipe trains nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import PotstillError


def recipe(rows: int, steps: int, hp: dict[str, Any]) -> dict[str, Any]:
    """What OUT_DIR/recipe.json records: the labelled rows, the steps and the training settings."""
    return {"rows": rows, "steps": steps, **hp}


def _labelled(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_trained(out: Path, want: dict[str, Any]) -> bool:
    return (out / "recipe.json").exists() and json.loads((out / "recipe.json").read_text()) == want


def train_gold_only(student_dir: Path, out: Path, labelled: Path, steps: int, hp: dict[str, Any]) -> None:
    """Train the student of ``student_dir`` on the rows of ``labelled`` (question, worked answer) for exactly
    ``steps`` steps with the settings ``hp`` (the job spec's hyperparameters: batch_size, learning_rate, packing,
    max_seq_len, ...) and save it to ``out``."""
    import torch

    from ..teachers.hf import load_causal_lm, load_tokenizer, pick_device
    from ..train.data import encode_chat
    from ..train.packing import pack
    from ..train.trainer import FitConfig, fit
    from .tiny import save_model

    rows = _labelled(labelled)
    tok = load_tokenizer(str(student_dir))
    model = load_causal_lm(str(student_dir), pick_device("cpu"), torch.float32)
    fit_hp = {k: v for k, v in hp.items() if k not in ("packing", "max_seq_len")}
    max_len = int(hp.get("max_seq_len", 1024))
    enc = [encode_chat(tok, _chat(r), max_len) for r in rows]
    if hp.get("packing"):
        enc = pack(enc, max_len)
    cfg = FitConfig(**{"seed": 42, **fit_hp}, num_epochs=10**6, max_steps=steps, save_every=10**9)
    fit(model, enc, [], cfg, tok.pad_token_id)
    save_model(model, tok, out)
    (out / "recipe.json").write_text(json.dumps(recipe(len(rows), steps, hp)) + "\n")


def _chat(row: dict[str, Any]) -> list[dict[str, str]]:
    """What the student sees: the question alone (as in the job's rows), then the worked answer."""
    return [{"role": "user", "content": str(row["prompt"])}, {"role": "assistant", "content": str(row["answer"])}]


def start(
    student_dir: Path, out: Path, labelled: Path, steps: int, hp: dict[str, Any]
) -> subprocess.Popen[bytes] | None:
    """Start ``train_gold_only`` in a one-thread child process (its output in OUT_DIR.log); None when ``out``
    already holds the student of this recipe."""
    if is_trained(out, recipe(len(_labelled(labelled)), steps, hp)):
        return None
    args = [str(student_dir), str(out), str(labelled), "--steps", str(steps), "--hp", json.dumps(hp)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = out.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "potstill.demo.gold_only", *args], stdout=f, stderr=subprocess.STDOUT, env=env
        )


def wait(proc: subprocess.Popen[bytes] | None, out: Path) -> None:
    """Wait for ``start``'s process; PotstillError with the end of its log when it failed."""
    if proc is None:
        return
    if proc.wait() != 0:
        log = out.with_suffix(".log")
        tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.exists() else []
        raise PotstillError(
            f"the gold-only student's training failed (exit {proc.returncode}); its log, {log}, ends: "
            + " | ".join(tail)
        )


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """End ``start``'s process if it still runs (the demo failed or was interrupted meanwhile)."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None, log: Callable[[str], None] = print) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("student_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("labelled", type=Path, help="JSONL rows with prompt and answer (the worked solution)")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument(
        "--hp", default="{}", help='FitConfig settings as JSON, e.g. {"batch_size": 16, "learning_rate": 0.004}'
    )
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    train_gold_only(a.student_dir, a.out, a.labelled, a.steps, json.loads(a.hp))
    log(f"gold-only student: {a.steps} steps, saved to {a.out}")


if __name__ == "__main__":
    main()
