"""The model card (README.md) shipped with every export: where the student came from and how it measured.

Built from the run's files alone: job.yaml (teacher, student, hyperparameters), data/filter_report.json (data
provenance), student/training_summary.json, eval/results.json (the comparison table) and export/manifest.json
(each export's size, parity and latency).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..report.build import comparison_rows, derived_lines, markdown_table


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _fmt(v: Any, spec: str) -> str:
    return "–" if v is None else spec.format(v)


def exports_table(manifest: dict[str, Any]) -> str:
    header = ["format", "folder", "size (MB)", "max abs Δlogit", "greedy equal", "ms/answer torch → export", "check"]
    if any("tokenizer_check" in e for e in manifest.get("exports", {}).values()):
        header.insert(-1, "tokenizer ids equal")
    rows = []
    for fmt, e in manifest.get("exports", {}).items():
        p = e.get("parity") or {}
        lat = p.get("latency_ms") or {}
        rows.append(
            [
                fmt,
                f"`{Path(e['path']).name}/`",
                _fmt(e.get("size_mb"), "{:.2f}"),
                _fmt(p.get("max_abs_logit_diff"), "{:.2e}"),
                f"{p['greedy_equal']}/{p['prompts']}" if p else "–",
                f"{_fmt(lat.get('torch'), '{:.1f}')} → {_fmt(lat.get('export'), '{:.1f}')}",
                "passed" if e.get("passed") else "FAILED",
            ]
        )
        if len(header) > len(rows[-1]):
            tc = e.get("tokenizer_check")
            rows[-1].insert(-1, f"{tc['equal']}/{tc['strings']} strings" if tc else "–")
    return markdown_table(header, rows)


def model_card(run_root: Path | None, manifest: dict[str, Any]) -> str:
    spec = yaml.safe_load((run_root / "job.yaml").read_text()) if run_root and (run_root / "job.yaml").exists() else {}
    name = spec.get("name") or manifest.get("name", "model")
    teacher, student = spec.get("teacher", {}), spec.get("student", {})
    if not teacher and spec.get("teachers"):  # several teachers (docs/teachers.md)
        strategy = (spec.get("teaching") or {}).get("strategy", "route")
        teacher = {"model": "`, `".join(str(t.get("model")) for t in spec["teachers"]), "kind": strategy}
    front = {"library_name": "transformers", "tags": ["potstill", "distillation", "text-generation"]}
    if student.get("model"):
        front["base_model"] = student["model"]
    parts = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {name}", ""]
    parts.append(
        f"A small student distilled by potstill for the **{spec.get('task_type', '?')}** task: teacher "
        f"`{teacher.get('model', '?')}` ({teacher.get('kind', '?')}) → student `{student.get('model', '?')}`"
        + (f" with LoRA r={student['lora'].get('r')}, merged." if student.get("lora") else " (full fine-tuning).")
    )
    if run_root is not None:
        fr = _read_json(run_root / "data" / "filter_report.json")
        parts += ["", "## Data provenance", ""]
        parts.append(
            f"Prompts: `{spec.get('data', {}).get('training', '?')}` (train), "
            f"`{spec.get('data', {}).get('validation', '?')}` (validation). The teacher answered each; "
            f"filters `{json.dumps(spec.get('filters', []))}` kept what the student learned from. "
            f"Generation: `{json.dumps(spec.get('generation', {}), sort_keys=True)}`."
        )
        if fr:
            rows = [
                [s, str(v["rows_in"]), str(v["kept"]), str(v["rejected"]), _reasons(v)]
                for s, v in fr.get("splits", {}).items()
            ]
            parts += ["", markdown_table(["split", "teacher outputs", "kept", "rejected", "reasons"], rows)]
        hp = spec.get("hyperparameters", {})
        parts += ["", "## Training", ""]
        parts.append(markdown_table(["hyperparameter", "value"], [[k, f"`{v}`"] for k, v in hp.items()]))
        ts = _read_json(run_root / "student" / "training_summary.json")
        if ts:
            keep = {k: ts[k] for k in ("steps", "train_loss", "val_loss") if k in ts}
            parts += ["", "Result: " + ", ".join(f"{k} {_num(v)}" for k, v in keep.items())]
        res = _read_json(run_root / "eval" / "results.json")
        if res and res.get("models"):
            header, rows = comparison_rows(res)
            parts += ["", "## Evaluation", ""]
            parts.append(
                f"{res.get('rows', '?')} {res.get('split', '?')} rows, accuracy against "
                f"{res.get('scored_against', '?')}."
            )
            parts += ["", markdown_table(header, rows), "", *[f"- {line}" for line in derived_lines(res)]]
    parts += ["", "## Exports", "", exports_table(manifest), ""]
    parts.append(
        "Parity: max |Δlogit| over each prompt's last position and one incremental step; greedy equal = prompts "
        "whose greedy answers have identical tokens; ms/answer = mean at batch 1, greedy, on this machine "
        f"({manifest.get('machine', '?')})."
    )
    if measured := manifest.get("measured"):
        from .measure import table, teacher_table

        parts += ["", "## Each format measured", ""]
        parts.append(
            f"The torch student and each export on the same {measured['rows']} {measured['split']} rows (greedy; "
            "accuracy against the references; `= torch`: the same parsed answer as the torch student; p50 at "
            "batch 1, timed beside the torch student on the same prompts, each answered by both in turn, and "
            f"answers/s, on this machine, {manifest.get('machine', '?')})."
        )
        parts += ["", markdown_table(*table(measured))]
        if against := teacher_table(measured):
            parts += [
                "",
                "Against the teacher in torch: its p50 at batch 1 divided by each format's (each timed beside the "
                "torch student, so the ratio goes through it), and the memory its weights take divided by each "
                "format's (torch tensors, or the exported file).",
                "",
                markdown_table(*against),
            ]
    parts += ["", "## Use", "", "```bash", "potstill serve <this folder>    # OpenAI-compatible, 127.0.0.1:8000", "```"]
    parts += [
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'tok = AutoTokenizer.from_pretrained("<hf folder>")',
        'model = AutoModelForCausalLM.from_pretrained("<hf folder>")',
        "```",
    ]
    ggufs = [f for f in manifest.get("exports", {}) if f.startswith("gguf")]
    if ggufs:
        pick = "gguf-q8_0" if "gguf-q8_0" in ggufs else ggufs[0]
        parts += [
            "",
            "### llama.cpp and Ollama",
            "",
            f"Each `gguf*/` folder holds `model.gguf` (weights, tokenizer and chat template) and an Ollama `Modelfile`"
            f" ({', '.join(f'`{g}`' for g in ggufs)}).",
            "",
            "```bash",
            f"llama-cli -m {pick}/model.gguf -cnv                 # llama.cpp: chat with the GGUF's chat template",
            f"llama-server -m {pick}/model.gguf --port 8080       # llama.cpp: an OpenAI-compatible server",
            f"cd {pick} && ollama create student -f Modelfile && ollama run student   # Ollama",
            f"potstill serve {pick}                               # potstill over llama.cpp (llama-cpp-python)",
            "```",
        ]
    return "\n".join(parts) + "\n"


def _reasons(v: dict[str, Any]) -> str:
    return ", ".join(f"{k} ({n})" for k, n in (v.get("reasons") or {}).items()) or "–"


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
