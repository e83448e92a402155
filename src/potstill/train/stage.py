"""The train stage: data/train.jsonl (kept teacher outputs) -> student/ (a Hugging Face model folder)."""

from __future__ import annotations

import shutil
from typing import Any

from ..config import JobSpec, LoraSpec
from ..run_dir import RunDir, read_jsonl
from ..teachers.hf import load_causal_lm, load_tokenizer, pick_device
from .data import encode_chat
from .trainer import FitConfig, fit


def fit_config(spec: JobSpec) -> FitConfig:
    hp = spec.hyperparameters
    return FitConfig(
        learning_rate=hp.learning_rate,
        batch_size=hp.batch_size,
        num_epochs=hp.num_epochs,
        max_steps=hp.max_steps,
        warmup_ratio=hp.warmup_ratio,
        lr_schedule=hp.lr_schedule,
        weight_decay=hp.weight_decay,
        grad_accum_steps=hp.grad_accum_steps,
        max_grad_norm=hp.max_grad_norm,
        eval_every=hp.eval_every,
        save_every=hp.save_every,
        seed=hp.seed,
    )


def with_lora(model: Any, lora: LoraSpec) -> Any:
    """Wrap ``model`` with LoRA adapters (peft); default targets: every attention and MLP projection."""
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules or "all-linear"
    cfg = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, cfg)


def run_train(spec: JobSpec, rd: RunDir) -> dict[str, Any]:
    import torch

    st = spec.student
    tok = load_tokenizer(st.tokenizer or st.model)
    device = pick_device(st.device)
    model = load_causal_lm(st.model, device, torch.float32)
    if st.lora is not None:
        model = with_lora(model, st.lora)
    max_len = spec.hyperparameters.max_seq_len

    def encode(path: str) -> tuple[list[Any], int]:
        rows, truncated = [], 0
        for r in read_jsonl(rd.data / path):
            enc = encode_chat(tok, r["messages"], max_len)
            truncated += enc.truncated
            if enc.n_target:
                rows.append(enc)
        return rows, truncated

    train_rows, trunc_train = encode("train.jsonl")
    val_rows, _ = encode("validation.jsonl") if (rd.data / "validation.jsonl").exists() else ([], 0)
    if trunc_train:
        rd.event("train", "truncated", rows=trunc_train, max_seq_len=max_len)
    rd.event(
        "train",
        "start",
        rows=len(train_rows),
        val_rows=len(val_rows),
        model=st.model,
        parameters=sum(p.numel() for p in model.parameters()),
    )
    result = fit(
        model,
        train_rows,
        val_rows,
        fit_config(spec),
        tok.pad_token_id,
        ckpt_dir=rd.checkpoints,
        log=lambda event, **kw: rd.event("train", event, **kw),
    )
    if rd.writer:
        tmp = rd.student / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        if st.lora is not None:
            model.save_pretrained(tmp / "adapter")  # the adapter alone, then the merged model beside it
            model = model.merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        for f in tmp.iterdir():
            dest = rd.student / f.name
            if dest.is_dir():
                shutil.rmtree(dest)
            f.replace(dest)
        tmp.rmdir()
    rd.write_json(rd.student / "training_summary.json", {k: v for k, v in result.items()})
    return {
        "rows": len(train_rows),
        "val_rows": len(val_rows),
        "truncated": trunc_train,
        "steps": result["steps"],
        "train_loss": result["train_loss"],
        "val_loss": result["val_loss"],
        "resumed_from": result["resumed_from"],
    }
