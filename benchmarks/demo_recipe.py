"""One training recipe for the demo's student, measured: steps, seconds, accuracy (the rows of docs/ablation.md).

    PYTHONPATH=src python benchmarks/demo_recipe.py --size full --steps 2400 --batch-size 16 --packing 192 \
        --schedule linear [--gold] [--init embeddings] [--kd 0.5,2] [--hidden 1:9,2:18] [--threads 1]

The demo's untrained student (demo.STUDENT, the same seed) learns the worked answers of the demo's splits (the
same questions as ``potstill demo``'s; ``--size quick`` for --quick's) in one process with ``--threads`` CPU
threads; ``--gold`` trains on the labelled rows only (the gold-only baseline). The teacher's worked answers are
taken from the task generator, which writes what the committed teacher answers (99.9 % identical), so no
generation is needed. Prints one JSON line (and appends it to ``--out``): steps, examples seen, training seconds
(wall and CPU), and greedy accuracy on the first ``--test`` test problems. Not a test: it prints what it measures.

``--init``: none (random, as the demo), embeddings (the teacher's embeddings and final norm; needs
``--hidden-size 96``), embeddings-scaled (their directions at the random init's scale), layers:I,J (embeddings
plus teacher layers I and J, MLPs pruned to ``--intermediate`` neurons by weight norm). ``--kd alpha,T``: dense
logit KD against the teacher's forward pass; ``--hidden S:T,...``: hidden-state MSE (both need the teacher at
every step).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from potstill.data.tasks import parse_math, to_number
from potstill.demo import SIZES, STUDENT, TEACHER_DIR, teacher_card
from potstill.demo.task import problems
from potstill.demo.tiny import tiny_llama
from potstill.demo.train_teacher import training_rows
from potstill.teachers.hf import LocalModel, load_causal_lm, load_tokenizer
from potstill.train.data import encode_chat
from potstill.train.packing import pack
from potstill.train.trainer import FitConfig, fit

Row = dict[str, Any]


def splits(quick: bool) -> dict[str, list[Row]]:
    """build_assets' splits, with their worked answers."""
    card, size = teacher_card(), SIZES[quick]
    seen = {str(r["prompt"]) for r in training_rows(card["rows"], card["seed"])}
    test = problems(size["test"], seed=3, exclude=seen)
    seen |= {str(r["prompt"]) for r in test}
    val = problems(size["validation"], seed=2, exclude=seen)
    seen |= {str(r["prompt"]) for r in val}
    return {"train": problems(size["train"], seed=1, exclude=seen), "validation": val, "test": test}


def chat(r: Row, answer: bool = True) -> list[dict[str, str]]:
    """What the student sees: the question alone, then the worked answer."""
    m = [{"role": "user", "content": str(r["prompt"])}]
    return m + ([{"role": "assistant", "content": str(r["answer"])}] if answer else [])


def student(tok: Any, a: argparse.Namespace) -> Any:
    model = tiny_llama(
        tok, **{**STUDENT, "hidden": a.hidden_size}, intermediate=a.intermediate, max_positions=256, seed=1
    )
    if a.init == "none":
        return model
    t = load_causal_lm(str(TEACHER_DIR), torch.device("cpu"), torch.float32).model
    s, e = model.model, t.embed_tokens.weight
    with torch.no_grad():
        if a.init == "embeddings-scaled":
            s.embed_tokens.weight.copy_(e * (s.embed_tokens.weight.std() / e.std()))
            return model
        s.embed_tokens.weight.copy_(e)
        s.norm.weight.copy_(t.norm.weight)
        if a.init.startswith("layers:"):
            for layer, i in zip(s.layers, a.init.removeprefix("layers:").split(","), strict=True):
                layer.load_state_dict(prune_mlp(t.layers[int(i)].state_dict(), layer.mlp.gate_proj.out_features))
    return model


def prune_mlp(sd: dict[str, torch.Tensor], keep_n: int) -> dict[str, torch.Tensor]:
    """The ``keep_n`` MLP neurons with the largest gate × up × down weight norms."""
    g, u, d = sd["mlp.gate_proj.weight"], sd["mlp.up_proj.weight"], sd["mlp.down_proj.weight"]
    keep = (g.norm(dim=1) * u.norm(dim=1) * d.norm(dim=0)).topk(keep_n).indices.sort().values
    return {**sd, "mlp.gate_proj.weight": g[keep], "mlp.up_proj.weight": u[keep], "mlp.down_proj.weight": d[:, keep]}


def distiller(a: argparse.Namespace, model: Any) -> Any:
    if not (a.kd or a.hidden):
        return None
    from potstill.config import HiddenSpec, KDSpec
    from potstill.train.kd import Distiller

    teacher = load_causal_lm(str(TEACHER_DIR), torch.device("cpu"), torch.float32)
    alpha, temp = (float(x) for x in (a.kd or "0,1").split(","))
    kd = KDSpec(alpha=alpha, source="teacher") if a.kd else None
    pairs = [p.split(":") for p in a.hidden.split(",")] if a.hidden else []
    hid = HiddenSpec(layer_map={int(s): int(t) for s, t in pairs}) if pairs else None
    return Distiller(kd, temp, teacher=teacher, hidden=hid, student=model)


def accuracy(model: Any, tok: Any, rows: list[Row]) -> float:
    outs = LocalModel(model, tok).generate([chat(r, False) for r in rows], max_new_tokens=96, batch_size=256)
    ok = 0
    for r, o in zip(rows, outs, strict=True):
        got = parse_math(o.text)
        ok += got is not None and to_number(got) == float(r["value"])
    return ok / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["full", "quick"], default="full")
    ap.add_argument("--gold", action="store_true", help="train on the labelled rows only (the gold-only student)")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=32, help="rows per step (packed rows with --packing)")
    ap.add_argument("--packing", type=int, default=0, help="pack examples into rows of this many tokens")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=float, default=0.05)
    ap.add_argument("--schedule", default="cosine", choices=["cosine", "linear", "constant"])
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=42, help="the training seed (batch order)")
    ap.add_argument("--hidden-size", type=int, default=STUDENT["hidden"])
    ap.add_argument("--intermediate", type=int, default=None)
    ap.add_argument("--init", default="none")
    ap.add_argument("--kd", default="")
    ap.add_argument("--hidden", default="")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--train-rows", type=int, default=0, help="train on the first N questions only (0: all)")
    ap.add_argument("--out", type=Path, default=Path("runs/demo_recipe.jsonl"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sp = splits(a.size == "quick")
    tok = load_tokenizer(str(TEACHER_DIR))
    model = student(tok, a)
    source = sp["validation" if a.gold else "train"]
    rows = [encode_chat(tok, chat(r), 160) for r in source[: a.train_rows or None]]
    examples_per_row = 1.0
    if a.packing:
        packed = pack(rows, a.packing)
        examples_per_row, rows = len(rows) / len(packed), packed
    cfg = FitConfig(
        learning_rate=a.lr,
        batch_size=a.batch_size,
        num_epochs=10**6,
        max_steps=a.steps,
        warmup_ratio=a.warmup,
        lr_schedule=a.schedule,
        weight_decay=a.weight_decay,
        save_every=10**9,
        seed=a.seed,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    res = fit(model, rows, [], cfg, tok.pad_token_id, distiller=distiller(a, model))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    acc = accuracy(model, tok, sp["test"][: a.test])
    rec = {
        **{k: v for k, v in vars(a).items() if k != "out"},
        "parameters": sum(p.numel() for p in model.parameters()),
        "examples": round(res["steps"] * a.batch_size * examples_per_row),
        "train_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "accuracy": round(acc, 4),
    }
    print(json.dumps(rec), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
