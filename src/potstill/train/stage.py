"""The train stage: data/train.jsonl (kept teacher outputs) -> student/ (a Hugging Face model folder).

    run_train(spec, run_dir)     # potstill train RUN_DIR; under `accelerate launch` one process per device

student/ holds the best weights (lowest validation loss), merged when LoRA was used (the adapter alone in
student/adapter/), the tokenizer, and training_summary.json; it is written as a new folder and swapped in whole.
checkpoints/ (beside it) holds the resumable state, tied to this attempt of the stage (RunDir.attempt_key): a
changed input or --force starts from the untouched student, a crashed attempt resumes.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

from ..config import JobSpec, LoraSpec
from ..errors import ConfigError, TrainingError
from ..run_dir import RunDir, atomic_replace_dir, atomic_write_text, read_jsonl
from ..teachers.hf import load_causal_lm, load_tokenizer, pick_device, pick_dtype, quiet_transformers
from .data import EncodedRow, encode_chat
from .dist import Dist
from .kd import Distiller, attach_logprobs, attach_teacher_prompt, check_tokenizers, last_target_start
from .on_policy import OnPolicy, end_of_turn
from .packing import pack
from .tracking import Trackers
from .trainer import FitConfig, OnValidation, fit

_ON_VALIDATION: ContextVar[OnValidation | None] = ContextVar("potstill_on_validation", default=None)


@contextlib.contextmanager
def on_validation(hook: OnValidation) -> Iterator[None]:
    """Training in this block calls ``hook(step, total_steps, val_loss, model)`` after each validation (tune's
    pruning reports; the stage's signature stays that of every stage)."""
    token = _ON_VALIDATION.set(hook)
    try:
        yield
    finally:
        _ON_VALIDATION.reset(token)


def resolve_precision(choice: str, device: torch.device) -> str:
    """auto: bf16 on a GPU that has it, fp16 on other GPUs, full precision elsewhere."""
    if choice != "auto":
        return choice
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


AUTO_EVAL_EVERY = 200  # max_steps: auto without eval_every: the metric is measured this often (and each epoch)


def fit_config(spec: JobSpec, device: torch.device | None = None) -> FitConfig:
    hp = spec.hyperparameters
    auto = hp.max_steps == "auto"
    return FitConfig(
        learning_rate=hp.learning_rate,
        batch_size=hp.batch_size,
        num_epochs=hp.num_epochs,
        max_steps=None if auto or hp.max_steps is None else int(hp.max_steps),
        until_plateau=auto,
        max_seconds=None if hp.max_minutes is None else 60.0 * hp.max_minutes,
        warmup_ratio=hp.warmup_ratio,
        lr_schedule=hp.lr_schedule,
        weight_decay=hp.weight_decay,
        grad_accum_steps=hp.grad_accum_steps,
        max_grad_norm=hp.max_grad_norm,
        eval_every=hp.eval_every or (AUTO_EVAL_EVERY if auto else None),
        save_every=hp.save_every,
        seed=hp.seed,
        mixed_precision=resolve_precision(hp.mixed_precision, device or torch.device("cpu")),
        early_stopping_patience=hp.early_stopping_patience,
        early_stopping_min_delta=hp.early_stopping_min_delta,
        group_by_length=hp.group_by_length,
    )


def with_lora(model: Any, lora: LoraSpec) -> Any:
    """Wrap ``model`` with LoRA adapters (peft); default targets: every attention and MLP projection."""
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules or "all-linear"
    cfg = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, cfg)


def load_student(spec: JobSpec, device: torch.device) -> Any:
    st = spec.student
    if st.lora is None or st.lora.quantize is None:
        model = load_causal_lm(st.model, device, torch.float32)
        return model if st.lora is None else with_lora(model, st.lora)
    if device.type != "cuda":
        raise TrainingError(
            f"student.lora.quantize: {st.lora.quantize} (QLoRA) needs a CUDA GPU and bitsandbytes; this run is on "
            f"{device.type} — remove student.lora.quantize to train LoRA on a full-precision base"
        )
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quiet_transformers()
    q = (
        BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        if st.lora.quantize == "4bit"
        else BitsAndBytesConfig(load_in_8bit=True)
    )
    base = AutoModelForCausalLM.from_pretrained(st.model, quantization_config=q, device_map={"": device})
    return with_lora(prepare_model_for_kbit_training(base), st.lora)


def build_distiller(spec: JobSpec, tok: Any, student: Any, device: torch.device) -> Distiller | None:
    hp = spec.hyperparameters
    if hp.kd is None and hp.hidden is None:
        return None
    teacher = None
    if (hp.kd is not None and hp.kd.source == "teacher") or hp.hidden is not None:
        t = spec.teacher_list()[0]  # one teacher (the spec refuses a forward-pass teacher among several)
        check_tokenizers(tok, load_tokenizer(t.tokenizer or t.model))
        teacher = load_causal_lm(t.model, device, pick_dtype(t.dtype, device))
    return Distiller(hp.kd, spec.kd_temperature, teacher=teacher, hidden=hp.hidden, student=student)


def share_of(n: int, share: float | None, seed: int) -> list[int]:
    """The indices (in file order) of a seeded ``share`` of ``n`` rows, at least one: the first of a seeded
    permutation, so with one seed a smaller share is a subset of a larger one. ``None`` or 1: every row."""
    if share is None or share >= 1:
        return list(range(n))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[: max(1, round(share * n))])


def _hook(spec: JobSpec, rd: RunDir) -> OnValidation | None:
    """The validation hook of this training: tune's (if any) and, with max_steps: auto, the metric it stops on
    (tune's reported value when it scored this validation, else a probe of AUTO_ROWS validation rows)."""
    outer = _ON_VALIDATION.get()
    if spec.hyperparameters.max_steps != "auto":
        return outer
    from ..config_tune import TASK_METRICS
    from .probe import AUTO_ROWS, MetricProbe

    probe = MetricProbe(spec, TASK_METRICS[spec.task_type][0], AUTO_ROWS, kept=rd.data / "validation.jsonl")
    if not probe.convs:
        raise TrainingError(
            f"max_steps: auto measures the validation metric, but {spec.data.validation} has no answers and no "
            "teacher answer was kept for it; give a number of steps instead"
        )

    def hook(step: int, total: int, val_loss: float, model: Any) -> float | None:
        value = outer(step, total, val_loss, model) if outer is not None else None
        return probe(model) if value is None else value

    return hook


def build_on_policy(
    spec: JobSpec,
    tok: Any,
    rows: list[EncodedRow],
    distiller: Distiller | None,
    device: torch.device,
    prompts: dict[tuple[int, ...], list[int]] | None = None,
) -> OnPolicy | None:
    """The on-policy sampler and scorer: the local teacher (shared with the distiller when it has one), or an
    OpenAI-compatible server's prompt logprobs (probed first: train/remote_scorer.py)."""
    from ..decode import stop_token_ids

    hp = spec.hyperparameters
    if hp.on_policy is None:
        return None
    stops = stop_token_ids(tok)
    kw: dict[str, Any] = {"seed": hp.seed, "stop_ids": stops, "pad_id": tok.pad_token_id or 0}
    kw |= {"max_seq_len": hp.max_seq_len, "end_id": end_of_turn(rows, stops), "teacher_prompts": prompts}
    t = spec.teacher_list()[0]  # one teacher (the spec refuses on_policy with several)
    if t.kind == "hf":
        teacher = distiller.teacher if distiller is not None else None
        if teacher is None:
            check_tokenizers(tok, load_tokenizer(t.tokenizer or t.model))
            teacher = load_causal_lm(t.model, device, pick_dtype(t.dtype, device)).requires_grad_(False)
        return OnPolicy(hp.on_policy, teacher=teacher, **kw)
    from .remote_scorer import RemoteScorer

    return OnPolicy(hp.on_policy, scorer=RemoteScorer.probed(spec, tok), **kw)


def teacher_prompts(rows: list[EncodedRow]) -> dict[tuple[int, ...], list[int]]:
    """Each row's prompt (its tokens before the final answer) -> the prompt the teacher was asked with, for rows
    whose teacher saw another prompt (``encode_split(..., asked=True)``)."""
    out = {}
    for r in rows:
        start = last_target_start(r.labels)
        if r.teacher_ids is None or r.teacher_at is None or start is None:
            continue
        out[tuple(r.input_ids[:start])] = r.teacher_ids[: r.teacher_at[start]]
    return out


def _asked(task: Any, tok: Any, messages: list[dict[str, str]]) -> list[int]:
    """The prompt the teacher was asked with for this conversation (the task's system message first, as at
    generation), in tokens."""
    from ..data.tasks import teacher_messages

    asked = teacher_messages(messages[:-1], task)
    return tok(tok.apply_chat_template(asked, tokenize=False, add_generation_prompt=True), add_special_tokens=False)[
        "input_ids"
    ]


def check_on_policy_teacher(spec: JobSpec) -> None:
    """ConfigError unless the teacher can score the student's tokens: a local teacher with the student's
    tokenizer, or a server whose probe request comes back with prompt logprobs (run before any stage)."""
    st, t = spec.student, spec.teacher_list()[0]
    tok = load_tokenizer(st.tokenizer or st.model)
    if t.kind == "hf":
        try:
            check_tokenizers(tok, load_tokenizer(t.tokenizer or t.model))
        except TrainingError as exc:
            why = f"the teacher cannot score the student's tokens: {exc}"
            raise ConfigError(f"hyperparameters.on_policy: {why}") from None
        return
    from .remote_scorer import RemoteScorer

    RemoteScorer.probed(spec, tok).client.close()


def encode_split(
    spec: JobSpec, path: Path, tok: Any, logprobs: bool, asked: bool = False
) -> tuple[list[EncodedRow], dict[str, Any]]:
    """Tokenised rows with at least one target token, and counts: rows, truncated, with_logprobs, aligned, and
    by_teacher: {teacher: [with_logprobs, aligned]} for rows that name their teacher (several teachers).
    ``asked``: each row also carries the prompt its teacher was asked with (a local teacher's forward pass)."""
    rows: list[EncodedRow] = []
    counts: dict[str, Any] = {"truncated": 0, "with_logprobs": 0, "aligned": 0, "by_teacher": {}}
    cache: dict[str, int | None] = {}
    if asked:
        from ..data.tasks import task_for

        task = task_for(spec)  # once, not per row
    for r in read_jsonl(path):
        enc = encode_chat(tok, r["messages"], spec.hyperparameters.max_seq_len)
        counts["truncated"] += enc.truncated
        if logprobs and r.get("logprobs"):
            counts["with_logprobs"] += 1
            aligned = attach_logprobs(enc, r["logprobs"], tok, cache)
            counts["aligned"] += aligned
            if "teacher" in r:  # several teachers: each row carries its own teacher's logprobs
                mine = counts["by_teacher"].setdefault(r["teacher"], [0, 0])
                mine[0], mine[1] = mine[0] + 1, mine[1] + aligned
        if asked and enc.n_target:
            attach_teacher_prompt(enc, _asked(task, tok, r["messages"]))
        if enc.n_target:
            rows.append(enc)
    return rows, counts


def _check_logprobs(spec: JobSpec, counts: dict[str, Any], tok: Any, path: Path) -> None:
    if counts["with_logprobs"] == 0:
        raise TrainingError(
            f"hyperparameters.kd.source is 'logprobs' but no row of {path} carries teacher logprobs: capture them "
            "at generation (generation.logprobs), or use kd.source: teacher with a local teacher"
        )
    if spec.teachers is not None:
        _check_teachers(spec, counts["by_teacher"], tok)
    if counts["aligned"] * 2 < counts["with_logprobs"]:
        raise TrainingError(
            f"only {counts['aligned']} of {counts['with_logprobs']} rows' teacher logprobs line up with the "
            "student's tokens: the teacher's tokenizer differs from the student's. Token-level distillation needs "
            "the same tokenizer; pick a student from the teacher's family or remove hyperparameters.kd"
        )
    if spec.teacher is not None and spec.teacher.kind == "hf":
        check_tokenizers(tok, load_tokenizer(spec.teacher.tokenizer or spec.teacher.model))


def _check_teachers(spec: JobSpec, by_teacher: dict[str, list[int]], tok: Any) -> None:
    """Several teachers, logit distillation: each row's logits are its own teacher's, so every teacher whose
    rows carry logprobs must share the student's tokenizer (a local one: the same vocabulary; a remote one: its
    tokens line up with the student's). Answer-level rows (no kd) take any teacher."""
    for name, t in spec.named_teachers().items():
        seen, aligned = by_teacher.get(name, (0, 0))
        if not seen:
            continue
        why = ""
        if t.kind == "hf":
            try:
                check_tokenizers(tok, load_tokenizer(t.tokenizer or t.model))
            except TrainingError as exc:
                why = str(exc).split("; ")[0]
        elif aligned * 2 < seen:
            why = f"only {aligned} of its {seen} rows' logprobs line up with the student's tokens"
        if why:
            raise teacher_refused(name, why)


def teacher_refused(name: str, why: str) -> TrainingError:
    """One of several teachers cannot take part in logit distillation (its tokenizer is not the student's)."""
    return TrainingError(
        f"teacher {name!r} cannot be distilled token by token: {why}. Logit distillation (hyperparameters.kd) uses "
        "each row's own teacher's logits and needs the student's tokenizer; keep this teacher for its answers by "
        "removing hyperparameters.kd, or use a teacher of the student's family"
    )


def run_train(spec: JobSpec, rd: RunDir) -> dict[str, Any]:
    st, hp = spec.student, spec.hyperparameters
    dist = Dist.from_env()
    tok = load_tokenizer(st.tokenizer or st.model)
    device = dist.device or pick_device(st.device)
    model = load_student(spec, device)
    use_lp = hp.kd is not None and hp.kd.source == "logprobs"
    # a local teacher's forward pass (dense KD, hidden states, on-policy scoring) reads the prompt it was asked
    reads = (hp.kd is not None and hp.kd.source == "teacher") or hp.hidden is not None or hp.on_policy is not None
    train_rows, counts = encode_split(spec, rd.data / "train.jsonl", tok, use_lp, asked=reads)
    if use_lp:
        _check_logprobs(spec, counts, tok, rd.data / "train.jsonl")
    val_path = rd.data / "validation.jsonl"
    val_rows, _ = encode_split(spec, val_path, tok, False) if val_path.exists() else ([], {})
    if counts["truncated"]:
        rd.event("train", "truncated", rows=counts["truncated"], max_seq_len=hp.max_seq_len)
    kept = len(train_rows)
    prompts = teacher_prompts(train_rows) if hp.on_policy is not None else None
    train_rows = [train_rows[i] for i in share_of(kept, hp.data_share, hp.seed)]
    n_examples = len(train_rows)
    if hp.packing:
        train_rows = pack(train_rows, hp.max_seq_len)
    distiller = build_distiller(spec, tok, model, device)
    on_policy = build_on_policy(spec, tok, train_rows, distiller, device, prompts)
    cfg = fit_config(spec, device)
    rd.event(
        "train",
        "start",
        rows=n_examples,
        **({"of_rows": kept, "data_share": hp.data_share} if hp.data_share is not None else {}),
        packed_rows=len(train_rows) if hp.packing else None,
        val_rows=len(val_rows),
        model=st.model,
        parameters=sum(p.numel() for p in model.parameters()),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        processes=dist.world,
        precision=cfg.mixed_precision,
        kd=hp.kd.model_dump() if hp.kd else None,
        logprob_rows=counts["aligned"] if use_lp else None,
        on_policy=hp.on_policy.model_dump() if hp.on_policy else None,
    )
    trackers = Trackers(hp.report_to, rd.logs, spec.name, hp.model_dump()) if rd.writer and hp.report_to else None

    def log(event: str, **kw: Any) -> None:
        rd.event("train", event, **kw)
        if trackers is not None:
            trackers.log(event, kw)

    try:
        key = dist.broadcast(rd.attempt_key("train"))  # rank 0's: state.json may lag on the others
        result = fit(
            model,
            train_rows,
            val_rows,
            cfg,
            tok.pad_token_id,
            rd.checkpoints,
            log,
            distiller,
            dist,
            ckpt_key=key,
            on_validation=_hook(spec, rd),
            on_policy=on_policy,
        )
    finally:
        if trackers is not None:
            trackers.close()
    if hp.max_steps == "auto":
        from ..config_tune import TASK_METRICS

        result["metric_name"] = TASK_METRICS[spec.task_type][0]
    if cfg.max_seconds is not None:
        result["max_seconds"] = cfg.max_seconds
    save_student(model, tok, rd, dist, lora=st.lora is not None, summary=dict(result.items()))
    return {
        "rows": n_examples,
        "val_rows": len(val_rows),
        "truncated": counts["truncated"],
        "steps": result["steps"],
        "train_loss": result["train_loss"],
        "val_loss": result["val_loss"],
        "best_step": result["best_step"],
        "stopped_early": result["stopped_early"],
        "resumed_from": result["resumed_from"],
        "stop_reason": result["stop_reason"],
        **({"metric": result["metric"]} if result.get("metric") is not None else {}),
        "train_seconds": result["train_seconds"],
        "paused_seconds": result["paused_seconds"],
    }


def save_student(model: Any, tok: Any, rd: RunDir, dist: Dist, lora: bool, summary: dict[str, Any]) -> None:
    """Write the final weights as a new folder, then swap it in for student/ whole (a crash leaves the old
    student/ or the new one); LoRA: adapter/ first, then the merged model beside it."""
    state = dist.acc.get_state_dict(model) if dist.sharded else None  # a collective: every rank takes part
    model = dist.unwrap(model)
    if not rd.writer:
        return
    tmp = rd.root / ".student.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if lora:
        model.save_pretrained(tmp / "adapter")  # the adapter alone, then the merged model beside it
        model = model.merge_and_unload()
        state = None
    model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state} if state is not None else {}))
    tok.save_pretrained(tmp)
    atomic_write_text(tmp / "training_summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    atomic_replace_dir(tmp, rd.student)
