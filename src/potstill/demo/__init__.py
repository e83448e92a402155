"""The offline demo: a small teacher trained here on arithmetic, distilled into a much smaller student.

    potstill demo [--quick]          ≡  potstill.demo.run_demo(Path("runs/demo"), quick=False)

Steps: make the data (labelled rows for the teacher; unlabelled training prompts and labelled validation/test
rows for the job), train the teacher for a minute or two, save a random-init student, write job.yaml, run the
ordinary pipeline on it. The teacher is kept in <run_dir>/assets and reused by the next run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .task import problems

SIZES = {  # labelled rows for the teacher, unlabelled train prompts, validation rows, test rows, teacher steps
    False: {"teacher_rows": 6000, "train": 1500, "validation": 100, "test": 300, "teacher_steps": 1500},
    True: {"teacher_rows": 3000, "train": 400, "validation": 50, "test": 100, "teacher_steps": 800},
}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


SYSTEM = "Solve the arithmetic problem."


def _chat(row: dict[str, str]) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": row["prompt"]},
        {"role": "assistant", "content": row["answer"]},
    ]


def build_assets(assets: Path, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    from ..train.data import encode_chat
    from ..train.trainer import FitConfig, fit
    from .tiny import build_tokenizer, save_model, tiny_llama

    size = SIZES[quick]
    test = problems(size["test"], seed=3)
    val = problems(size["validation"], seed=2, exclude={r["prompt"] for r in test})
    held = {r["prompt"] for r in test + val}
    unlabelled = problems(size["train"], seed=1, exclude=held)
    labelled = problems(size["teacher_rows"], seed=4, exclude=held)
    _write_jsonl(assets / "train.jsonl", [{"prompt": r["prompt"]} for r in unlabelled])
    _write_jsonl(assets / "validation.jsonl", val)
    _write_jsonl(assets / "test.jsonl", test)
    teacher_dir, student_dir = assets / "teacher", assets / "student"
    if not (teacher_dir / "config.json").exists():
        tok = build_tokenizer([r["prompt"] + " " + r["answer"] for r in labelled[:2000]], vocab_size=300)
        teacher = tiny_llama(tok, hidden=128, layers=4, heads=4, seed=0)
        rows = [encode_chat(tok, _chat(r), 64) for r in labelled]
        vrows = [encode_chat(tok, _chat(r), 64) for r in val]
        n = sum(p.numel() for p in teacher.parameters())
        log(f"demo: training the teacher ({n / 1e6:.2f}M parameters, {size['teacher_steps']} steps)")
        cfg = FitConfig(
            learning_rate=3e-3,
            batch_size=32,
            num_epochs=100,
            max_steps=size["teacher_steps"],
            warmup_ratio=0.05,
            weight_decay=0.01,
            save_every=10**9,
            seed=0,
        )
        res = fit(teacher, rows, vrows, cfg, tok.pad_token_id)
        log(f"demo: teacher trained, validation loss {res['val_loss']:.3f}")
        save_model(teacher, tok, teacher_dir)
        save_model(tiny_llama(tok, hidden=48, layers=2, heads=4, seed=1), tok, student_dir)
    return size


def demo_spec(assets: Path, quick: bool) -> dict[str, Any]:
    return {
        "name": "demo-quick" if quick else "demo",
        "task_type": "math",
        "teacher": {"kind": "hf", "model": str(assets / "teacher"), "batch_size": 64},
        "student": {"model": str(assets / "student")},
        "prompts": {"system": SYSTEM},
        "data": {
            "training": str(assets / "train.jsonl"),
            "validation": str(assets / "validation.jsonl"),
            "test": str(assets / "test.jsonl"),
        },
        "generation": {"temperature": 0.0, "max_tokens": 24},
        "filters": ["nonempty", "parse", {"max_tokens": 24}],
        "hyperparameters": {
            "learning_rate": 3e-3,
            "batch_size": 32,
            "num_epochs": 8 if quick else 6,
            "temperature": 0.7,
            "max_seq_len": 64,
            "warmup_ratio": 0.05,
            "save_every": 100,
        },
        "evaluation": {"max_new_tokens": 24, "latency_samples": 16, "batch_size": 64},
    }


def run_demo(run_dir: Path, quick: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Build the demo's data and models (once), then run the whole pipeline on them; returns the run dir."""
    import yaml

    from ..config import validate_spec
    from ..pipeline import run_pipeline

    log = log or (lambda m: None)
    run_dir = Path(run_dir)
    assets = run_dir / "assets"
    build_assets(assets, quick, log)
    spec_dict = demo_spec(assets.resolve(), quick)
    (assets / "job.yaml").write_text(yaml.safe_dump(spec_dict, sort_keys=False))
    spec = validate_spec(spec_dict, source="demo")
    run_pipeline(spec, run_dir, log=log)
    return run_dir
