"""On-policy distillation on the demo's task, measured: accuracy at equal wall-clock, and speed against TRL's GKD.

    PYTHONPATH=src python benchmarks/on_policy.py                  # both parts, ~25 min on 2 busy cores
    PYTHONPATH=src python benchmarks/on_policy.py --part accuracy  # or --part speed, or --part steps

1. Accuracy (the ``--quick`` demo: its 2,000 worked answers, its untrained 242K-parameter student, its recipe:
   16 packed rows of 192 tokens a step, lr 3e-3, linear decay; greedy accuracy on its 300 test problems). The
   student's rows have no system message (as the demo's data/train.jsonl); on-policy scoring gives the teacher
   the demo's system prompt, as the train stage does (the prompt it was asked with at generation); so does
   dense KD (``kd.source: teacher``: the teacher reads each row after that prompt, its logits moved to the
   student's positions). SFT
   trains the demo's 800 steps and sets the budget B. Dense logit KD (the committed teacher's forward pass,
   forward KL, alpha 0.5, T 1) and on-policy distillation (an SFT warm-up of half SFT's steps, then steps that are
   on-policy with probability lmbda 0.5 or 1.0: the student samples its answers at T 0.9, the teacher scores them,
   generalised JSD with beta 0.5) get as many steps as fit in B: their step times are measured first (dense KD on
   the untrained student; on-policy steps on the SFT student, whose answers have their final length). B is
   counted in CPU seconds of the training process (one thread: its wall-clock on a machine of its own), because
   other jobs on the shared machine stretch wall-clock unevenly between runs; both are printed for every row.
2. Speed: potstill's on-policy steps (fit() with lmbda 1: the fast decoder, one teacher forward per micro-batch)
   against TRL's GKDTrainer (lmbda 1: ``model.generate``) on the same student (the SFT student of part 1; with
   ``--part speed`` the untrained one or ``--student DIR``), teacher, rows, batch, max_new_tokens, temperature
   and beta, fp32, one thread each (the teacher reads the student's rows in both: TRL has no other prompt for it);
   steps/s over the steps after the first two, alternately (potstill, TRL, twice).

3. ``--part steps`` (not in "all"): SFT's 800 steps against 400 SFT steps then 400 on-policy steps (lmbda 1):
   what a sampled step is worth when time is not counted.

4. ``--part captured [--k 20] [--warm-share 0.5]`` (not in "all"): GKD as its paper has it, at equal compute: the
   warm-up and the steps that are not sampled train against the teacher's top-k logprobs captured at generation
   (``generation.logprobs`` + ``kd.source: logprobs``: no teacher forward pass in them); SFT, top-k KD alone,
   and on-policy for each of ``--lmbdas``.

5. ``--part seeds [--seeds 42 1 2 3]`` (not in "all"): SFT and top-k KD (captured) at SFT's steps, once per
   training seed (the data order): how far one training's accuracy moves with its seed alone.

Prints the CPU (model, AVX flags) and the load average before and after each part: the 2-core development
machine is shared with other jobs, so seconds move between runs. trl is a benchmark/test dependency only
(``pip install -c constraints.txt "trl>=0.20"``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch

sys.path.insert(0, str(Path(__file__).parent))
from demo_recipe import accuracy, chat, splits

from potstill.config import KDSpec, OnPolicySpec
from potstill.decode import stop_token_ids
from potstill.demo import RECIPE, SIZES, STUDENT, TEACHER_DIR
from potstill.demo.task import SYSTEM
from potstill.demo.tiny import tiny_llama
from potstill.teachers.hf import load_causal_lm, load_tokenizer
from potstill.train.data import EncodedRow, collate, encode_chat
from potstill.train.kd import Distiller, attach_teacher_prompt, last_target_start
from potstill.train.on_policy import OnPolicy, end_of_turn, prompts_of
from potstill.train.packing import pack
from potstill.train.trainer import FitConfig, fit

MAX_NEW = 96  # the demo's answer budget (45-75 tokens)
CPU = torch.device("cpu")


def machine() -> str:
    info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln for ln in info.splitlines() if ln.startswith("Flags")), "")
    avx = sorted({f for f in flags.split() if f.startswith("avx")})
    return f"{model}; {' '.join(avx) or 'no avx'}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cfg(steps: int, seed: int = 42) -> FitConfig:
    return FitConfig(
        learning_rate=RECIPE["learning_rate"],
        batch_size=RECIPE["batch_size"],
        num_epochs=10**6,
        max_steps=steps,
        warmup_ratio=RECIPE["warmup_ratio"],
        lr_schedule=RECIPE["lr_schedule"],
        weight_decay=RECIPE["weight_decay"],
        save_every=10**9,
        seed=seed,
    )


class Bench:
    def __init__(self) -> None:
        self.tok = load_tokenizer(str(TEACHER_DIR))
        self.sp = splits(quick=True)
        rows = [encode_chat(self.tok, chat(r), 160) for r in self.sp["train"]]
        self.plain = rows
        self.packed = pack(rows, RECIPE["max_seq_len"])
        self.teacher = load_causal_lm(str(TEACHER_DIR), CPU, torch.float32).requires_grad_(False)
        self.stops = stop_token_ids(self.tok)
        # the student's rows have no system message (as the demo's data/train.jsonl); the teacher was asked with
        # the demo's (it answers 100 % of the test problems with it, 9 % without), so it scores after that prompt
        self.asked = {}
        for r, row in zip(self.sp["train"], rows, strict=True):
            msgs = [{"role": "system", "content": SYSTEM}, *chat(r, False)]
            text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            self.asked[tuple(prompts_of(row)[0])] = self.tok(text, add_special_tokens=False)["input_ids"]
        told = copy.deepcopy(rows)  # dense KD: each row also as the teacher was asked it
        for row in told:
            attach_teacher_prompt(row, self.asked[tuple(prompts_of(row)[0])])
        self.kd_packed = pack(told, RECIPE["max_seq_len"])

    def student(self) -> Any:
        return tiny_llama(self.tok, **STUDENT, max_positions=256, seed=1)

    def captured(self, k: int) -> float:
        """Give every training row the teacher's top-k logprobs over its answer, as ``generation.logprobs: k``
        captures them while the teacher writes it (its greedy answer's distributions are those of a forward pass
        over the answer after the prompt it was asked with); ``self.topk_packed``. Returns the CPU seconds (not
        counted in any budget: in a run they come with generation, which every method shares)."""
        c0 = time.process_time()
        rows = copy.deepcopy(self.plain)
        for i in range(0, len(rows), 64):
            chunk = rows[i : i + 64]
            starts = [last_target_start(r.labels) or 0 for r in chunk]
            asked = [self.asked[tuple(prompts_of(r)[0])] for r in chunk]
            seqs = [a + r.input_ids[s:] for a, r, s in zip(asked, chunk, starts, strict=True)]
            tb = collate([EncodedRow(x, x) for x in seqs], self.tok.pad_token_id)
            with torch.no_grad():
                lp = torch.log_softmax(
                    self.teacher(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"]).logits.float(), -1
                )
            for j, (r, a, s) in enumerate(zip(chunk, asked, starts, strict=True)):
                n = len(r.input_ids) - s  # answer tokens; the one at teacher position a + m is predicted at a + m - 1
                v, ids = lp[j, len(a) - 1 : len(a) - 1 + n].topk(k, -1)
                r.top_ids, r.top_lps, r.top_start = ids.tolist(), v.tolist(), s
        self.topk_packed = pack(rows, RECIPE["max_seq_len"])
        return time.process_time() - c0

    def topk_kd(self, model: Any) -> Distiller:
        return Distiller(KDSpec(alpha=0.5, source="logprobs"), 1.0, student=model)

    def on_policy(self, lmbda: float, after: int, asked: bool = True) -> OnPolicy:
        spec = OnPolicySpec(lmbda=lmbda, beta=0.5, temperature=0.9, max_new_tokens=MAX_NEW, after_steps=after)
        end = end_of_turn(self.plain, self.stops)
        kw = {"teacher": self.teacher, "teacher_prompts": self.asked if asked else None}
        return OnPolicy(spec, 42, self.stops, self.tok.pad_token_id, RECIPE["max_seq_len"], end, **kw)

    def kd(self, model: Any) -> Distiller:
        return Distiller(KDSpec(alpha=0.5, source="teacher"), 1.0, teacher=self.teacher, student=model)

    def train(self, model: Any, steps: int, **kw: Any) -> tuple[float, float, dict[str, Any]]:
        """(CPU seconds, wall seconds, fit's result)."""
        t0, c0 = time.perf_counter(), time.process_time()
        rows = kw.pop("rows", None) or (self.kd_packed if kw.get("distiller") is not None else self.packed)
        res = fit(model, rows, [], cfg(steps), self.tok.pad_token_id, **kw)
        return time.process_time() - c0, time.perf_counter() - t0, res

    def score(self, model: Any) -> float:
        return accuracy(model, self.tok, self.sp["test"])


def sft_row(b: Bench, sft_steps: int) -> tuple[Any, list[dict[str, Any]]]:
    """The SFT student trained for ``sft_steps`` (the budget of the equal-compute parts) and its row."""
    sft = b.student()
    budget, wall, _ = b.train(sft, sft_steps)
    row = {"method": "SFT", "steps": sft_steps, "sampled_steps": 0, "cpu_s": budget, "wall_s": wall}
    row["accuracy"] = b.score(sft)
    print(json.dumps(row), flush=True)
    return sft, [row]


def print_table(rows: list[dict[str, Any]]) -> None:
    """The markdown table of an equal-compute part; the first row (SFT) is the baseline."""
    print("| method | steps (of them student-sampled) | training CPU s | wall s | test accuracy | vs SFT |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        gain = 100 * (r["accuracy"] - rows[0]["accuracy"])
        print(
            f"| {r['method']} | {r['steps']} ({r['sampled_steps']}) | {r['cpu_s']:.0f} | {r['wall_s']:.0f} | "
            f"{100 * r['accuracy']:.1f} % | {gain:+.1f} points |"
        )


def part_accuracy(b: Bench, sft_steps: int, out: list[dict[str, Any]], lmbdas: tuple[float, ...] = (0.5, 1.0)) -> Any:
    print(f"\n## accuracy at equal wall-clock (load average before: {load()})", flush=True)
    sft, rows = sft_row(b, sft_steps)
    budget = rows[0]["cpu_s"]
    t_sft = budget / sft_steps

    # step times: dense KD does not depend on the student; on-policy steps measured on the SFT student
    probe = 12
    kd_probe = b.student()
    t_kd = b.train(kd_probe, probe, distiller=b.kd(kd_probe))[0] / probe
    t_op = b.train(copy.deepcopy(sft), probe, on_policy=b.on_policy(1.0, 0))[0] / probe if lmbdas else float("nan")
    print(f"step CPU seconds: SFT {t_sft:.3f}, dense KD {t_kd:.3f}, on-policy {t_op:.3f} (load {load()})", flush=True)

    kd_model = b.student()
    n_kd = int(budget / t_kd)
    cpu, wall, _ = b.train(kd_model, n_kd, distiller=b.kd(kd_model))
    rows.append({"method": "dense logit KD", "steps": n_kd, "sampled_steps": 0, "cpu_s": cpu, "wall_s": wall})
    rows[-1]["accuracy"] = b.score(kd_model)
    print(json.dumps(rows[-1]), flush=True)

    warm = sft_steps // 2
    for lmbda in lmbdas:
        n = warm + int((budget - warm * t_sft) / (lmbda * t_op + (1 - lmbda) * t_sft))
        model = b.student()
        op = b.on_policy(lmbda, warm)
        cpu, wall, res = b.train(model, n, on_policy=op)
        sampled = sum(h.get("on_policy", 0) for h in res["history"])
        rows.append({"method": f"on-policy, lmbda {lmbda}", "steps": n, "sampled_steps": sampled, "cpu_s": cpu})
        rows[-1]["wall_s"] = wall
        rows[-1]["accuracy"] = b.score(model)
        print(json.dumps(rows[-1]), flush=True)
    print(f"load average after: {load()}\n")
    print_table(rows)
    if lmbdas:
        best, base = max(r["accuracy"] for r in rows[2:]), rows[0]["accuracy"]
        verdict = "met" if 100 * (best - base) >= 10 else "NOT met"
        print(
            f"\ntarget on-policy >= SFT + 10 points: {verdict} (best on-policy {100 * best:.1f} %, "
            f"SFT {100 * base:.1f} %)"
        )
    out.extend(rows)
    return sft


def part_captured(
    b: Bench, sft_steps: int, out: list[dict[str, Any]], k: int, warm_share: float, lmbdas: tuple[float, ...]
) -> None:
    """GKD as its paper has it, at equal compute: the steps that are not sampled train on the teacher data against
    the teacher's distributions (top-k logprobs captured at generation, ``kd.source: logprobs``: no teacher
    forward pass), and so does the warm-up. Rows: SFT (the budget), top-k KD alone, on-policy per lmbda."""
    print(f"\n## captured top-{k} logprobs, equal compute (load average before: {load()})", flush=True)
    pre = b.captured(k)
    print(f"top-{k} logprobs over the {len(b.plain)} answers: {pre:.0f} CPU s (generation's work; in no budget)")
    sft, rows = sft_row(b, sft_steps)
    budget = rows[0]["cpu_s"]
    t_sft = budget / sft_steps

    def top_cpu(steps: int) -> float:
        p = b.student()
        return b.train(p, steps, distiller=b.topk_kd(p), rows=b.topk_packed)[0]

    probe = 12
    t_top = (top_cpu(40) - top_cpu(10)) / 30  # a step's own cost, without the rows' one-time tensors (~1 s)
    t_op = b.train(copy.deepcopy(sft), probe, on_policy=b.on_policy(1.0, 0))[0] / probe if lmbdas else float("nan")
    print(f"step CPU seconds: SFT {t_sft:.3f}, top-k KD {t_top:.3f}, on-policy {t_op:.3f} (load {load()})", flush=True)
    model = b.student()
    n = int(budget / t_top)
    cpu, wall, _ = b.train(model, n, distiller=b.topk_kd(model), rows=b.topk_packed)
    rows.append({"method": f"top-{k} logit KD (captured)", "steps": n, "sampled_steps": 0, "cpu_s": cpu})
    rows[-1] |= {"wall_s": wall, "accuracy": b.score(model)}
    print(json.dumps(rows[-1]), flush=True)
    warm = int(sft_steps * warm_share)
    for lmbda in lmbdas:
        n = warm + int((budget - warm * t_top) / (lmbda * t_op + (1 - lmbda) * t_top))
        model = b.student()
        kw = {"on_policy": b.on_policy(lmbda, warm), "distiller": b.topk_kd(model), "rows": b.topk_packed}
        cpu, wall, res = b.train(model, n, **kw)
        sampled = sum(h.get("on_policy", 0) for h in res["history"])
        name = f"on-policy, lmbda {lmbda}, top-{k} KD warm-up ({warm} steps) and teacher-data steps"
        rows.append({"method": name, "steps": n, "sampled_steps": sampled, "cpu_s": cpu, "wall_s": wall})
        rows[-1]["accuracy"] = b.score(model)
        print(json.dumps(rows[-1]), flush=True)
    print(f"load average after: {load()}\n")
    print_table(rows)
    out.extend({**r, "part": "captured", "k": k} for r in rows)


def part_seeds(b: Bench, sft_steps: int, out: list[dict[str, Any]], k: int, seeds: list[int]) -> None:
    """SFT and top-k KD (captured) at ``sft_steps`` steps, one training per seed (the data order): how far one
    training's accuracy moves with its seed alone."""
    print(f"\n## seeds (load average before: {load()})", flush=True)
    b.captured(k)
    rows = []
    for seed in seeds:
        for method in ("SFT", f"top-{k} KD"):
            model = b.student()
            kw = {} if method == "SFT" else {"distiller": b.topk_kd(model), "rows": b.topk_packed}
            c0, t0 = time.process_time(), time.perf_counter()
            fit(model, kw.pop("rows", b.packed), [], cfg(sft_steps, seed), b.tok.pad_token_id, **kw)
            rows.append({"method": method, "seed": seed, "steps": sft_steps, "cpu_s": time.process_time() - c0})
            rows[-1] |= {"wall_s": time.perf_counter() - t0, "accuracy": b.score(model)}
            print(json.dumps(rows[-1]), flush=True)
    print(f"load average after: {load()}\n")
    for method in ("SFT", f"top-{k} KD"):
        accs = [100 * r["accuracy"] for r in rows if r["method"] == method]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{method}: {', '.join(f'{a:.1f}' for a in accs)} %; mean {statistics.mean(accs):.1f} (sd {sd:.1f})")
    out.extend({**r, "part": "seeds"} for r in rows)


def potstill_steps(b: Bench, student: Any, steps: int, bs: int) -> float:
    """Steps/s of fit() with lmbda 1 over the steps after the first two (each step's time from the step log)."""
    times: list[float] = []
    model = copy.deepcopy(student)
    op = b.on_policy(1.0, 0, asked=False)  # TRL's teacher reads the student's rows: the same work here
    c = FitConfig(learning_rate=1e-4, batch_size=bs, num_epochs=10**6, max_steps=steps, warmup_ratio=0.0)
    c.save_every = 10**9

    def log(event: str, **kw: Any) -> None:
        if event == "step":
            times.append(kw["elapsed_s"])

    fit(model, b.plain, [], c, b.tok.pad_token_id, log=log, on_policy=op)
    return (steps - 2) / (times[-1] - times[1])


def trl_steps(b: Bench, student: Any, steps: int, bs: int) -> float:
    """Steps/s of TRL's GKDTrainer (lmbda 1) over the steps after the first two."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            stamps.append(time.perf_counter())

    data = Dataset.from_list([{"messages": chat(r)} for r in b.sp["train"]])
    model = copy.deepcopy(student)
    model.generation_config.eos_token_id = b.stops
    model.generation_config.pad_token_id = b.tok.pad_token_id
    with tempfile.TemporaryDirectory() as outdir:
        args = GKDConfig(
            output_dir=outdir,
            per_device_train_batch_size=bs,
            max_steps=steps,
            learning_rate=1e-4,
            lmbda=1.0,
            beta=0.5,
            temperature=0.9,
            max_new_tokens=MAX_NEW,
            max_length=256,
            logging_steps=10**6,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=42,
        )
        trainer = GKDTrainer(
            model=model,
            teacher_model=b.teacher,
            args=args,
            train_dataset=data,
            processing_class=b.tok,
            callbacks=[Clock()],
        )
        trainer.train()
    return (steps - 2) / (stamps[-1] - stamps[1])


def part_steps(b: Bench, sft_steps: int, out: list[dict[str, Any]], on_policy: bool = True) -> None:
    """Equal steps instead of equal time: SFT's steps, dense KD's, or the second half of them on-policy
    (lmbda 1); without ``on_policy``, SFT and dense KD only."""
    print(f"\n## accuracy at equal steps (load average before: {load()})", flush=True)
    rows = []
    runs: list[tuple[str, str]] = [("SFT", "sft"), ("dense logit KD", "kd")]
    runs += [("on-policy, lmbda 1.0", "op")] if on_policy else []
    for name, kind in runs:
        model = b.student()
        kw: dict[str, Any] = {"on_policy": b.on_policy(1.0, sft_steps // 2)} if kind == "op" else {}
        kw |= {"distiller": b.kd(model)} if kind == "kd" else {}
        cpu, wall, res = b.train(model, sft_steps, **kw)
        sampled = sum(h.get("on_policy", 0) for h in res["history"])
        rows.append({"method": name, "steps": sft_steps, "sampled_steps": sampled, "cpu_s": cpu, "wall_s": wall})
        rows[-1]["accuracy"] = b.score(model)
        print(json.dumps(rows[-1]), flush=True)
    print(f"load average after: {load()}")
    out.extend({**r, "part": "steps"} for r in rows)


def sampling_seconds(b: Bench, student: Any, bs: int) -> tuple[float, float, int, int]:
    """One step's sampling alone, the same ``bs`` prompts: potstill's decoder vs ``model.generate`` as TRL's
    GKDTrainer calls it (do_sample, T 0.9, top_k 0, left-padded prompts). (seconds, seconds, tokens, tokens)."""
    from transformers import GenerationConfig

    ids = [prompts_of(r)[0] for r in b.plain[:bs]]  # what a sampled step sends: each row before its answer
    op = b.on_policy(1.0, 0)
    t0 = time.perf_counter()
    ours = op.sample(student, ids, list(range(bs)), "student")
    t1 = time.perf_counter()
    width = max(len(i) for i in ids)
    x = torch.tensor([[b.tok.pad_token_id] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    gen = GenerationConfig(
        max_new_tokens=MAX_NEW, temperature=0.9, do_sample=True, top_k=0, top_p=1.0, pad_token_id=b.tok.pad_token_id
    )
    gen.eos_token_id = b.stops
    t2 = time.perf_counter()
    with torch.no_grad():
        seqs = student.generate(input_ids=x, attention_mask=mask, generation_config=gen)
    t3 = time.perf_counter()
    theirs = int((seqs[:, width:] != b.tok.pad_token_id).sum())
    return t1 - t0, t3 - t2, sum(len(c) for c in ours), theirs


def part_speed(b: Bench, student: Any, steps: int, bs: int, out: list[dict[str, Any]]) -> None:
    print(f"\n## speed against TRL's GKDTrainer (load average before: {load()})", flush=True)
    for _ in range(3):
        s_ours, s_hf, n_ours, n_hf = sampling_seconds(b, student, bs)
        print(f"sampling {bs} answers: potstill {s_ours:.3f} s ({n_ours} tokens), generate() {s_hf:.3f} s ({n_hf})")
        out.append({"part": "sampling", "potstill_s": s_ours, "generate_s": s_hf, "batch": bs})
    ours, theirs = [], []
    for _ in range(2):
        ours.append(potstill_steps(b, student, steps, bs))
        print(f"potstill {ours[-1]:.3f} steps/s (load {load()})", flush=True)
        theirs.append(trl_steps(b, student, steps, bs))
        print(f"TRL GKDTrainer {theirs[-1]:.3f} steps/s (load {load()})", flush=True)
    ratio = max(ours) / max(theirs)
    print(f"\nload average after: {load()}")
    print("| trainer | steps/s (two runs) | best |")
    print("|---|---|---|")
    print(f"| potstill fit(), on_policy lmbda 1 | {ours[0]:.3f}, {ours[1]:.3f} | {max(ours):.3f} |")
    print(f"| TRL GKDTrainer, lmbda 1 | {theirs[0]:.3f}, {theirs[1]:.3f} | {max(theirs):.3f} |")
    print(f"\npotstill / TRL: {ratio:.2f}x; target >= 2x: {'met' if ratio >= 2 else 'NOT met'}")
    out.append({"part": "speed", "potstill": ours, "trl": theirs, "ratio": ratio, "batch": bs, "steps": steps})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["all", "accuracy", "speed", "steps", "captured", "seeds"], default="all")
    ap.add_argument("--sft-steps", type=int, default=SIZES[True]["steps"], help="SFT's steps: the budget")
    ap.add_argument("--speed-steps", type=int, default=12)
    ap.add_argument("--speed-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--student", type=Path, default=None, help="--part speed: this student folder (default: untrained)")
    ap.add_argument("--out", type=Path, default=Path("runs/on_policy_bench.jsonl"))
    ap.add_argument("--no-on-policy", action="store_true", help="SFT and dense KD only (--part accuracy or steps)")
    ap.add_argument("--k", type=int, default=20, help="--part captured: top-k logprobs per position")
    ap.add_argument("--warm-share", type=float, default=0.5, help="--part captured: warm-up, a share of SFT's steps")
    ap.add_argument("--lmbdas", type=float, nargs="*", default=[0.5, 1.0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[42, 1, 2, 3], help="--part seeds: the training seeds")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"machine: {machine()}")
    b = Bench()
    out: list[dict[str, Any]] = []
    student = load_causal_lm(str(a.student), CPU, torch.float32) if a.student else b.student()
    if a.part in ("all", "accuracy"):
        student = part_accuracy(b, a.sft_steps, out, () if a.no_on_policy else (0.5, 1.0))
    if a.part == "captured":
        part_captured(b, a.sft_steps, out, a.k, a.warm_share, tuple(a.lmbdas))
    if a.part == "seeds":
        part_seeds(b, a.sft_steps, out, a.k, a.seeds)
    if a.part == "steps":
        part_steps(b, a.sft_steps, out, not a.no_on_policy)
    if a.part in ("all", "speed"):
        part_speed(b, student, a.speed_steps, a.speed_batch, out)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("a") as f:
        for r in out:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
