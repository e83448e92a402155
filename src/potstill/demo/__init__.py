"""The offline demo: a small teacher trained here on arithmetic word problems, distilled into a smaller student.

    potstill demo [--quick]          ≡  potstill.demo.run_demo(Path("runs/demo"), quick=False)

Steps: make the data (labelled rows for the teacher; unlabelled training prompts and labelled validation/test
rows for the job), train the teacher for a minute or two, save a random-init student that shares its tokenizer,
write job.yaml, and run the ordinary pipeline on it. The teacher is kept in <run_dir>/assets and reused by the
next run. Every answer is worked column by column ("47 + 38: 7 + 8 = 15, 4 + 3 + 1 = 8. Answer: 85"): with
that scratchpad a 1M-parameter model learns carrying in a few hundred steps, where the bare "47 + 38 = 85"
stays below 5 % after the same training (measured while building this demo). The student learns from many
short steps over thousands of teacher answers: 4,000 answers × 20 epochs (2,500 steps of 32) took a 157K-parameter
student to 94.0 % against its 1.1M-parameter teacher's 94.7 %, where 1,000 answers × 12 epochs gave 4 %.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .task import SYSTEM, chat, problems

# labelled rows the teacher learns from = teacher_steps × 32; unlabelled training prompts the teacher answers;
# labelled validation and test rows; the distillation's epochs over the kept teacher answers
SIZES = {
    False: {"train": 6000, "validation": 500, "test": 1000, "teacher_steps": 1000, "epochs": 15},
    True: {"train": 4000, "validation": 200, "test": 300, "teacher_steps": 700, "epochs": 20},
}
TEACHER = {"hidden": 128, "layers": 4, "heads": 4}
STUDENT = {"hidden": 64, "layers": 2, "heads": 4}
MAX_TOKENS = 40  # a worked answer is about 30 tokens


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def build_assets(assets: Path, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Write the job's data; unless already there, train the teacher, save the untrained student and train the
    gold-only student."""
    size = SIZES[quick]
    test = problems(size["test"], seed=3, steps=1)
    val = problems(size["validation"], seed=2, exclude={str(r["prompt"]) for r in test}, steps=1)
    held = {str(r["prompt"]) for r in test + val}
    unlabelled = problems(size["train"], seed=1, exclude=held, steps=1)
    _write_jsonl(assets / "train.jsonl", [{"prompt": r["prompt"]} for r in unlabelled])
    _write_jsonl(assets / "validation.jsonl", [{"prompt": r["prompt"], "answer": r["answer"]} for r in val])
    _write_jsonl(assets / "test.jsonl", [{"prompt": r["prompt"], "answer": r["answer"]} for r in test])
    teacher_dir, student_dir = assets / "teacher", assets / "student"
    if not (teacher_dir / "config.json").exists() or not (student_dir / "config.json").exists():
        _train_teacher(teacher_dir, student_dir, held, val, size, log)
    if not (assets / "gold-only" / "config.json").exists():
        _train_gold_only(student_dir, assets / "gold-only", val, size, log)
    return size


def _student_chat(row: dict[str, Any]) -> list[dict[str, str]]:
    """What the student sees: the question alone (as in the job's rows), then the worked answer."""
    return [{"role": "user", "content": str(row["prompt"])}, {"role": "assistant", "content": str(row["answer"])}]


def _train_gold_only(student_dir: Path, out: Path, labelled: list[Any], size: dict[str, Any], log: Any) -> None:
    """The baseline a user has without a teacher: the same student, trained on the labelled rows only, for the
    same number of steps of the same batch size as the distilled student (the same compute budget)."""
    import math

    import torch

    from ..teachers.hf import load_causal_lm, load_tokenizer, pick_device
    from ..train.data import encode_chat
    from ..train.trainer import FitConfig, fit
    from .tiny import save_model

    tok = load_tokenizer(str(student_dir))
    model = load_causal_lm(str(student_dir), pick_device("cpu"), torch.float32)
    steps = math.ceil(size["train"] / 32) * size["epochs"]
    log(f"demo: training the gold-only student on {len(labelled)} labelled problems ({steps} steps of 32)")
    rows = [encode_chat(tok, _student_chat(r), 96) for r in labelled]
    cfg = FitConfig(
        learning_rate=3e-3,
        batch_size=32,
        num_epochs=10**6,
        max_steps=steps,
        warmup_ratio=0.05,
        weight_decay=0.1,
        save_every=10**9,
        seed=42,
    )
    fit(model, rows, [], cfg, tok.pad_token_id)
    save_model(model, tok, out)


def _train_teacher(
    teacher_dir: Path, student_dir: Path, held: set[str], val: list[Any], size: dict[str, Any], log: Any
) -> None:
    from ..train.data import encode_chat
    from ..train.trainer import FitConfig, fit
    from .tiny import build_tokenizer, save_model, tiny_llama

    labelled = problems(size["teacher_steps"] * 32, seed=4, exclude=held, steps=1)
    tok = build_tokenizer([f"{SYSTEM} {r['prompt']} {r['answer']}" for r in labelled[:3000]], vocab_size=1024)
    teacher = tiny_llama(tok, **TEACHER, seed=0)
    rows = [encode_chat(tok, chat(r), 96) for r in labelled]
    vrows = [encode_chat(tok, chat(r), 96) for r in val]
    n = sum(p.numel() for p in teacher.parameters())
    log(f"demo: training the teacher ({n / 1e6:.2f}M parameters, {size['teacher_steps']} steps of 32 problems)")
    cfg = FitConfig(
        learning_rate=3e-3,
        batch_size=32,
        num_epochs=1,
        max_steps=size["teacher_steps"],
        warmup_ratio=0.05,
        weight_decay=0.1,
        save_every=10**9,
        seed=0,
    )
    res = fit(teacher, rows, vrows, cfg, tok.pad_token_id)
    log(f"demo: teacher trained, validation loss {res['val_loss']:.3f}")
    save_model(teacher, tok, teacher_dir)
    save_model(tiny_llama(tok, **STUDENT, seed=1), tok, student_dir)


def demo_spec(assets: Path, quick: bool) -> dict[str, Any]:
    size = SIZES[quick]
    return {
        "name": "demo-quick" if quick else "demo",
        "task_type": "math",
        "teacher": {"kind": "hf", "model": str(assets / "teacher"), "batch_size": 128},
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
            "learning_rate": 3e-3,
            "batch_size": 32,
            "num_epochs": size["epochs"],
            "temperature": 0.7,
            "max_seq_len": 96,
            "warmup_ratio": 0.05,
            "weight_decay": 0.1,
            "save_every": 200,
        },
        "evaluation": {
            "models": [{"name": "gold-only", "model": str(assets / "gold-only")}],
            "max_new_tokens": MAX_TOKENS,
            "latency_samples": 16,
            "batch_size": 128,
            "bootstrap_samples": 200,
        },
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
