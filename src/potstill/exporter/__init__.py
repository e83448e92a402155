"""`potstill export RUN_DIR --format hf|onnx|onnx-int8|gguf|gguf-q8_0|gguf-q4_k_m`: the distilled student, ready
to leave the run folder.

    export("runs/x", formats=["hf", "onnx-int8"])    # -> {"hf": Path("runs/x/export/hf"), "onnx-int8": ...}

hf: merged weights (LoRA folded in) as safetensors + tokenizer + chat template + generation config.
onnx: one decoder graph with past key/values (incremental generation). onnx-int8: the same with dynamic int8
weights. gguf, gguf-q8_0, gguf-q4_k_m: one GGUF file for llama.cpp and Ollama (f16, 8-bit, 4-bit K-quant) with
its tokenizer and chat template, and an Ollama Modelfile (``gguf.py``); llama.cpp's tokenizer must give the Hugging
Face tokenizer's ids on every string of ``gguf_check.varied_strings``. Every export is checked against the torch
student on fixed prompts (max |Δlogit|, greedy answers equal, latency per answer; a GGUF through llama.cpp itself)
and a model card (README.md) records the teacher, the data kept, the hyperparameters, the evaluation table and these
checks. An export that fails its check is removed and the command fails (exit 1).
Layout: RUN_DIR/export/{hf,onnx,onnx-int8,gguf,...}/, RUN_DIR/export/manifest.json, RUN_DIR/export/README.md.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ExportError, PotstillError
from ..evaluate.perf import size_on_disk_mb
from ..run_dir import atomic_write_text
from .gguf import QUANTS as GGUF_QUANTS
from .gguf import write_gguf

FORMATS = ("hf", "onnx", "onnx-int8", "gguf", "gguf-q8_0", "gguf-q4_k_m")
FP32_RTOL = 1e-3  # fp32 exports: max |Δlogit| <= FP32_RTOL * max(1, max |logit|), and every greedy answer equal
GGUF_MIN_AGREEMENT = 0.95  # gguf (f16): greedy answers equal to torch's on >= 95 % of the prompts
LOW_BIT = ("onnx-int8", "gguf-q8_0", "gguf-q4_k_m")  # quantized: checked against --min-int8-agreement


def parse_formats(formats: str | Iterable[str]) -> list[str]:
    items = [formats] if isinstance(formats, str) else list(formats)
    names = [f.strip() for item in items for f in item.split(",") if f.strip()]
    bad = [f for f in names if f not in FORMATS]
    if bad or not names:
        raise ConfigError(f"unknown export format {bad[0] if bad else '(none)'!r}; choose from {', '.join(FORMATS)}")
    return [f for f in FORMATS if f in names]


def _source(path: Path) -> tuple[Path, Path | None]:
    """(the model folder to export, the run folder or None) for a run folder or a model folder."""
    if (path / "job.yaml").is_file():
        student = path / "student"
        if not ((student / "config.json").is_file() or (student / "adapter_config.json").is_file()):
            raise PotstillError(f"{path}: no trained student in {student}; run `potstill train {path}` first")
        return student, path
    if (path / "config.json").is_file():
        return path, None
    raise PotstillError(f"{path}: neither a run folder (job.yaml) nor a model folder (config.json)")


def _load_student(src: Path, run_root: Path | None) -> tuple[Any, Any]:
    """The student as a plain fp32 torch model on the CPU, with a LoRA adapter merged when only one is saved."""
    import torch

    from ..teachers.hf import load_causal_lm, load_tokenizer

    if (src / "config.json").is_file():
        return load_causal_lm(str(src), torch.device("cpu"), torch.float32), load_tokenizer(str(src))
    import yaml
    from peft import PeftModel

    student = yaml.safe_load((run_root / "job.yaml").read_text()).get("student", {}) if run_root else {}
    if not student.get("model"):
        raise PotstillError(f"{src}: a LoRA adapter without its base model; export from the run folder")
    has_tok = any((src / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tok = load_tokenizer(str(src) if has_tok else student.get("tokenizer") or student["model"])
    model = load_causal_lm(student["model"], torch.device("cpu"), torch.float32)
    return PeftModel.from_pretrained(model, str(src)).merge_and_unload().eval(), tok


def _prompts(run_root: Path | None, n: int) -> list[list[dict[str, str]]]:
    """Fixed prompts: the first n validation rows of the run (without their answer), else built-in ones."""
    from .parity import DEFAULT_PROMPTS

    out: list[list[dict[str, str]]] = []
    path = run_root / "data" / "validation.jsonl" if run_root else None
    if path is not None and path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            msgs = json.loads(line).get("messages") if line.strip() else None
            if msgs:
                while msgs and msgs[-1].get("role") == "assistant":
                    msgs = msgs[:-1]
                if msgs:
                    out.append(msgs)
            if len(out) >= n:
                break
    for p in DEFAULT_PROMPTS:
        if len(out) >= n:
            break
        out.append([{"role": "user", "content": p}])
    return out


def _save_hf(model: Any, tok: Any, out: Path) -> None:
    from transformers import GenerationConfig

    from ..run_dir import atomic_replace_dir

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    from ..decode import stop_token_ids

    eos = stop_token_ids(tok)
    GenerationConfig(eos_token_id=eos, pad_token_id=tok.pad_token_id, do_sample=False).save_pretrained(tmp)
    atomic_replace_dir(tmp, out)


def _export_gguf(model: Any, tok: Any, folder: Path, fmt: str, name: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Write the GGUF folder and check llama.cpp's tokenizer against the student's; the manifest's extra fields."""
    from ..server.backends import GGUF_FILE
    from .gguf_check import tokenizer_parity

    info = write_gguf(model, tok, folder, GGUF_QUANTS[fmt], name=name)
    tokens = tokenizer_parity(tok, folder / GGUF_FILE)
    say(f"export {fmt}: llama.cpp's tokenizer equals the student's on {tokens['equal']}/{tokens['strings']} strings")
    if tokens["equal"] != tokens["strings"]:
        shutil.rmtree(folder, ignore_errors=True)
        bad = tokens["mismatches"][0]
        raise ExportError(
            f"{fmt}: llama.cpp tokenizes {tokens['strings'] - tokens['equal']} of {tokens['strings']} test strings "
            f"differently from the student's tokenizer (first: {bad['text']!r} -> {bad['gguf']} instead of "
            f"{bad['hf']}); the export was removed: its pre-tokenizer has no llama.cpp equivalent, export onnx instead"
        )
    return {"gguf": info, "tokenizer_check": tokens}


def _passed(fmt: str, check: dict[str, Any], min_int8_agreement: float) -> bool:
    if fmt in LOW_BIT:
        return check["greedy_agreement"] >= min_int8_agreement
    if fmt.startswith("gguf"):
        return check["greedy_agreement"] >= GGUF_MIN_AGREEMENT
    tol = FP32_RTOL * max(1.0, check["logit_scale"])
    return check["max_abs_logit_diff"] <= tol and check["greedy_equal"] == check["prompts"]


def export(
    run_dir: str | os.PathLike[str],
    formats: str | Iterable[str] = ("hf",),
    out: str | os.PathLike[str] | None = None,
    prompts: int = 8,
    max_new_tokens: int = 32,
    min_int8_agreement: float = 0.5,
    log: Callable[[str], None] | None = None,
    measure_rows: int = 0,
) -> dict[str, Path]:
    """Export a run's student (or a model folder) to each format, check parity, write the model card. With
    ``measure_rows`` and a run folder, the torch student and each format are also evaluated on that many test
    rows (``measure.py``; manifest.json's "measured")."""
    from ..server.backends import LoadedModel, TorchBackend, load_model
    from .card import model_card
    from .onnx import export_onnx, quantize_int8
    from .parity import parity

    say = log or (lambda msg: None)
    fmts = parse_formats(formats)
    if prompts < 1 or max_new_tokens < 1 or not 0 <= min_int8_agreement <= 1:
        raise ConfigError("prompts and max_new_tokens must be >= 1, min_int8_agreement in [0, 1]")
    src, run_root = _source(Path(run_dir))
    dest = Path(out) if out else (run_root or src) / "export"
    dest.mkdir(parents=True, exist_ok=True)
    model, tok = _load_student(src, run_root)
    reference = LoadedModel(TorchBackend(model), tok, src)
    convs = _prompts(run_root, prompts)
    manifest_path = dest / "manifest.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest.update(
        name=(run_root or src).name, source=str(src), machine=f"{platform.machine()}, {os.cpu_count()} CPUs"
    )
    manifest.setdefault("exports", {})
    done: dict[str, Path] = {}
    for fmt in fmts:
        folder = dest / fmt
        say(f"export {fmt}: writing {folder}")
        extra: dict[str, Any] = {}
        if fmt == "hf":
            _save_hf(model, tok, folder)
        elif fmt == "onnx":
            export_onnx(model, tok, folder)
        elif fmt in GGUF_QUANTS:
            extra = _export_gguf(model, tok, folder, fmt, (run_root or src).name, say)
        else:
            fp32 = dest / "onnx" if "onnx" in done else dest / ".onnx-fp32"
            if fp32 != dest / "onnx":
                export_onnx(model, tok, fp32)
            logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's "consider pre-processing" hint
            quantize_int8(fp32, folder)
            if fp32 != dest / "onnx":
                shutil.rmtree(fp32, ignore_errors=True)
        check = parity(reference, load_model(folder, device="cpu"), convs, max_new_tokens)
        ok = _passed(fmt, check, min_int8_agreement)
        size = size_on_disk_mb(folder)
        manifest["exports"][fmt] = {"path": str(folder), "size_mb": size, "parity": check, "passed": ok, **extra}
        say(
            f"export {fmt}: max |Δlogit| {check['max_abs_logit_diff']:.2e}, greedy equal "
            f"{check['greedy_equal']}/{check['prompts']}, {check['latency_ms']['export']:.1f} ms/answer "
            f"(torch {check['latency_ms']['torch']:.1f})"
        )
        if not ok:
            shutil.rmtree(folder, ignore_errors=True)
            del manifest["exports"][fmt]
            atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
            raise ExportError(
                f"{fmt} export failed its parity check (max |Δlogit| {check['max_abs_logit_diff']:.3g}, greedy "
                f"equal {check['greedy_equal']}/{check['prompts']}); the export was removed"
                + ("; lower --min-int8-agreement or ship a higher-precision export" if fmt in LOW_BIT else "")
            )
        done[fmt] = folder
    manifest["exports"] = {k: v for k, v in manifest["exports"].items() if (dest / k).is_dir()}
    if measure_rows > 0 and run_root is not None:
        from .measure import measure

        say(f"export: evaluating torch and {', '.join(done)} on {measure_rows} rows")
        manifest["measured"] = measure(run_root, done, measure_rows)
    else:
        manifest.pop("measured", None)  # an earlier export's figures would not describe these files
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    card = model_card(run_root, manifest)
    atomic_write_text(dest / "README.md", card)
    for fmt in manifest["exports"]:
        atomic_write_text(dest / fmt / "README.md", card)
    return done
