"""potstill export: merged HF folder, ONNX with past key/values, ONNX int8; parity checks and the model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _serving import make_run, running
from conftest import QUESTIONS, run_cli

from potstill import ExportError, export


@pytest.fixture(scope="module")
def exported(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_run(tiny_models, tmp_path_factory.mktemp("export") / "run")
    done = export(run, ["onnx-int8", "hf", "onnx"], prompts=4, max_new_tokens=8)
    assert list(done) == ["hf", "onnx", "onnx-int8"]
    return run


def test_every_format_passes_its_parity_check(exported: Path) -> None:
    manifest = json.loads((exported / "export" / "manifest.json").read_text())
    ex = manifest["exports"]
    assert set(ex) == {"hf", "onnx", "onnx-int8"}
    assert all(e["passed"] for e in ex.values())
    assert ex["hf"]["parity"]["max_abs_logit_diff"] == 0.0
    assert ex["onnx"]["parity"]["max_abs_logit_diff"] < 1e-4
    assert ex["onnx"]["parity"]["greedy_equal"] == ex["onnx"]["parity"]["prompts"] == 4
    assert ex["onnx-int8"]["size_mb"] < ex["onnx"]["size_mb"]
    for e in ex.values():
        assert e["parity"]["latency_ms"]["torch"] > 0 and e["parity"]["latency_ms"]["export"] > 0


def test_model_card_records_provenance_and_checks(exported: Path) -> None:
    card = (exported / "export" / "hf" / "README.md").read_text()
    assert card == (exported / "export" / "onnx-int8" / "README.md").read_text()
    spec = (exported / "job.yaml").read_text()
    assert "base_model:" in card and "distillation" in card
    assert "## Data provenance" in card and "| train | 12 | 8 | 4 | empty (4) |" in card
    assert "learning_rate" in card and "0.001" in card and "steps 6" in card
    assert "## Evaluation" in card and "75.0 %" in card  # the teacher's accuracy from results.json
    assert "| onnx-int8 |" in card and "passed" in card
    assert "teacher" in spec


def test_hf_export_is_a_standalone_folder(exported: Path) -> None:
    from potstill.teachers.hf import LocalModel

    hf = exported / "export" / "hf"
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (hf / name).is_file(), name
    convs = [[{"role": "user", "content": q}] for q, _ in QUESTIONS[:4]]
    a = LocalModel.load(hf).generate(convs, max_new_tokens=8)
    b = LocalModel.load(exported / "student").generate(convs, max_new_tokens=8)
    assert [x.text for x in a] == [x.text for x in b]
    assert any(x.text.startswith("Answer:") for x in a)  # the memorised answers survive the export


def test_onnx_int8_answers_through_onnxruntime(exported: Path) -> None:
    import onnxruntime as ort
    from openai import OpenAI

    from potstill.server import build_app

    folder = exported / "export" / "onnx-int8"
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"] and "past_key_0" in names
    assert any(n.op_type == "DynamicQuantizeLinear" for n in __import__("onnx").load(folder / "model.onnx").graph.node)
    feeds = {"input_ids": np.array([[5, 6, 7]]), "attention_mask": np.ones((1, 3), np.int64)}
    feeds["position_ids"] = np.arange(3)[None]
    for i in sess.get_inputs()[3:]:
        feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    logits, *present = sess.run(None, feeds)
    assert logits.shape[:2] == (1, 3) and present[0].shape[2] == 3  # the cache grew by the 3 new tokens
    with running(build_app(exported, format="onnx-int8")) as url:
        client = OpenAI(base_url=url, api_key="unused")
        r = client.chat.completions.create(
            model="run", messages=[{"role": "user", "content": QUESTIONS[0][0]}], max_tokens=8, temperature=0
        )
    assert r.choices[0].message.content and r.usage.completion_tokens > 0


def test_a_lone_onnx_request_keeps_its_past_in_onnxruntime(exported: Path) -> None:
    """A request alone runs on the I/O-bound sequential path (the past never leaves onnxruntime); several run on the
    batching engine. Both give the same tokens, greedy and sampled with a seed, and the same logprobs."""
    from potstill.decode.text import Row
    from potstill.server.backends import load_model

    lm = load_model(exported / "export" / "onnx")
    prompts = [lm.encode([{"role": "user", "content": q}]) for q, _ in QUESTIONS[:4]]

    def rows() -> list[Row]:
        return [
            Row(p, max_new_tokens=10, temperature=0.9 if k % 2 else 0.0, seed=k, logprobs=2)
            for k, p in enumerate(prompts)
        ]

    batched = lm.run(rows())
    assert lm.decoder.lone.runs == 0 and lm.decoder.engine.runs == 1
    alone = [lm.run([r])[0] for r in rows()]
    assert lm.decoder.lone.runs == len(prompts) and lm.decoder.engine.runs == 1
    for a, b in zip(alone, batched, strict=True):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert [e["token"] for e in a.logprobs] == [e["token"] for e in b.logprobs]
        assert np.allclose([e["logprob"] for e in a.logprobs], [e["logprob"] for e in b.logprobs], atol=1e-4)


def test_failed_parity_removes_the_export(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import potstill.exporter as ex

    monkeypatch.setattr(ex, "FP32_RTOL", -1.0)  # nothing can pass: the failure path runs for real
    with pytest.raises(ExportError, match="parity check"):
        export(exported, "onnx", out=exported / "export-fail", prompts=2, max_new_tokens=4)
    assert not (exported / "export-fail" / "onnx").exists()
    assert json.loads((exported / "export-fail" / "manifest.json").read_text())["exports"] == {}


def test_lora_adapter_alone_is_merged(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    import torch
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = make_run(tiny_models, tmp_path / "run", student=tiny_models["student"])
    shutil.rmtree(run / "student")
    spec = yaml.safe_load((run / "job.yaml").read_text())
    base = AutoModelForCausalLM.from_pretrained(spec["student"]["model"])
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, cfg).eval()
    peft_model.save_pretrained(run / "student")  # adapter files only, no merged weights
    export(run, "hf", prompts=2, max_new_tokens=4)
    merged = AutoModelForCausalLM.from_pretrained(run / "export" / "hf").eval()
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft_model(ids).logits, atol=1e-5)
        assert not torch.allclose(
            merged(ids).logits, AutoModelForCausalLM.from_pretrained(spec["student"]["model"])(ids).logits
        )


def test_cli_export_bad_format_and_missing_student(tmp_path: Path) -> None:
    r = run_cli("export", str(tmp_path), "--format", "tflite")
    assert r.returncode == 2 and "unknown export format 'tflite'" in r.stderr
    (tmp_path / "job.yaml").write_text("name: x\n")
    r = run_cli("export", str(tmp_path), "--format", "hf,onnx")
    assert r.returncode == 1 and "no trained student" in r.stderr and "potstill train" in r.stderr


def test_exported_folders_are_evaluated_beside_the_torch_student(exported: Path, tmp_path: Path) -> None:
    """evaluation.models may name potstill export's ONNX folders (relative to the run): each gets its own row
    with the same prompts and metrics; the fp32 ONNX answers equal the torch student's."""
    import shutil

    import yaml

    from potstill.config import validate_spec
    from potstill.evaluate.run import run_evaluate
    from potstill.run_dir import RunDir

    run = tmp_path / "run"
    shutil.copytree(exported, run)
    job = yaml.safe_load((run / "job.yaml").read_text())
    job["evaluation"]["models"] = [
        {"name": "onnx", "model": "export/onnx"},
        {"name": "onnx-int8", "model": "export/onnx-int8"},
    ]
    run_evaluate(validate_spec(job, source="test"), RunDir(run))  # the stage alone: the run has no generate
    res = json.loads((run / "eval" / "results.json").read_text())
    by = {m["name"]: m for m in res["models"]}
    assert {"distilled", "onnx", "onnx-int8"} <= set(by)
    for name in ("onnx", "onnx-int8"):
        m = by[name]
        assert m["kind"] == "onnx" and m["model"] == str(run / "export" / name)
        assert m["parameters"] == by["distilled"]["parameters"]
        assert m["latency"]["p50_ms"] > 0 and m["throughput"]["answers_per_s"] > 0
        assert m["memory"]["peak_tensor_mb"] is None and m["memory"]["weights_mb"] > 0
        assert m["n_scored"] == by["distilled"]["n_scored"] > 0
    assert by["onnx-int8"]["size_on_disk_mb"] < by["onnx"]["size_on_disk_mb"]
    assert by["onnx-int8"]["dtype"].startswith("int8")

    def answers(name: str) -> list[str]:
        lines = (run / "eval" / "predictions" / f"{name}.jsonl").read_text().splitlines()
        return [json.loads(x)["output"] for x in lines]

    assert answers("onnx") == answers("distilled") and len(answers("onnx")) == by["distilled"]["n_scored"]


def test_export_measures_each_format_against_torch(exported: Path, tmp_path: Path) -> None:
    """`potstill export --measure N` evaluates torch and each exported format on N test rows and prints the table;
    the fp32 ONNX answers are torch's; an export without --measure drops the earlier figures."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(exported, run)
    res = run_cli("export", str(run), "--format", "onnx,onnx-int8", "--prompts", "2", "--measure", "6")
    assert res.returncode == 0, res.stderr
    measured = json.loads((run / "export" / "manifest.json").read_text())["measured"]
    assert measured["split"] == "test" and measured["rows"] == len(QUESTIONS) - 6
    by = {f["format"]: f for f in measured["formats"]}
    assert list(by) == ["teacher (torch)", "torch", "onnx", "onnx-int8"]  # the run's teacher is a local model
    assert by["onnx"]["same_as_torch"] == 1.0 and by["onnx"]["accuracy"] == by["torch"]["accuracy"]
    assert by["teacher (torch)"]["same_as_torch"] is None
    teacher_w = by["teacher (torch)"]["weights_mb"]
    assert teacher_w >= by["torch"]["weights_mb"] > 0 and by["onnx-int8"]["weights_mb"] < by["onnx"]["weights_mb"]
    from potstill.exporter.measure import teacher_table

    against = teacher_table(measured)
    assert against is not None and [r[0] for r in against[1]] == ["torch", "onnx", "onnx-int8"]
    torch_row = against[1][0]
    assert torch_row[2] == f"{teacher_w / by['torch']['weights_mb']:.2f}×"
    # latency in pairs beside torch: each speed-up is torch's time in its pairs over the format's
    assert by["torch"]["speedup"] == 1.0 and all(f["speedup"] > 0 for f in by.values())
    assert all("answered by torch and this format in turn" in by[f]["latency_how"] for f in by if f != "torch")
    assert torch_row[1] == f"{1 / by['teacher (torch)']['speedup']:.2f}×"
    assert against[1][2][1] == f"{by['onnx-int8']['speedup'] / by['teacher (torch)']['speedup']:.2f}×"
    assert by["onnx-int8"]["size_mb"] < by["onnx"]["size_mb"]
    assert all(f["p50_ms"] > 0 and f["answers_per_s"] > 0 for f in by.values())
    out = " ".join(res.stdout.split())
    assert "each format on 6 test rows" in out and "onnx-int8" in out and "speed-up" in out
    card = (run / "export" / "onnx-int8" / "README.md").read_text()  # the model card carries the same table
    assert "against the teacher in torch" in out and "Against the teacher in torch" in card
    assert "## Each format measured" in card and "| onnx-int8 |" in card and "same 6 test rows" in card
    again = run_cli("export", str(run), "--format", "onnx", "--prompts", "2", "--measure", "0")
    assert again.returncode == 0, again.stderr
    assert "measured" not in json.loads((run / "export" / "manifest.json").read_text())
    assert "each format on" not in again.stdout


def test_onnx_threads_one_for_a_small_model_else_as_asked(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small ONNX model decodes on one onnxruntime thread (overhead-bound: faster, and no stall on a busy
    core); a large one keeps onnxruntime's default; an explicit count always wins."""
    import potstill.server.backends as backends

    model = exported / "export" / "onnx" / "model.onnx"

    def threads(b: backends.OnnxBackend) -> int:
        return int(b.session.get_session_options().intra_op_num_threads)

    assert threads(backends.OnnxBackend(model)) == 1
    assert threads(backends.OnnxBackend(model, threads=2)) == 2
    monkeypatch.setattr(backends, "SMALL_ONNX_BYTES", 0)  # as if the model were large
    assert backends.default_threads(model) is None
    assert threads(backends.OnnxBackend(model)) == 0  # 0: onnxruntime's own choice, one per core


def test_latency_pairs_alternate_which_model_answers_first() -> None:
    """Each prompt is answered by torch and the format in turn, the first of the two alternating (after one
    warm-up each), so drift on a shared machine falls on both sides of every ratio."""
    from potstill.exporter.measure import _pairs

    calls: list[tuple[str, str]] = []

    class Fake:
        def __init__(self, name: str) -> None:
            self.name = name

        def generate(self, convs: list, max_new_tokens: int) -> list:
            calls.append((self.name, convs[0]))
            return []

    t_a, t_b = _pairs(Fake("a"), Fake("b"), ["p0", "p1", "p2", "p3"], ["q0", "q1", "q2", "q3"], 8)
    assert len(t_a) == len(t_b) == 4 and all(t >= 0 for t in t_a + t_b)
    assert calls[:2] == [("a", "p0"), ("b", "q0")]  # warm-up
    assert calls[2:] == [
        ("a", "p0"),
        ("b", "q0"),
        ("b", "q1"),
        ("a", "p1"),
        ("a", "p2"),
        ("b", "q2"),
        ("b", "q3"),
        ("a", "p3"),
    ]
