"""GGUF export for llama.cpp and Ollama: the file's weights and tokenizer read by llama.cpp itself (llama-cpp-python),
against the torch model and the Hugging Face tokenizer; the export command, evaluation rows and refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _serving import make_run
from conftest import QUESTIONS, run_cli

from potstill import ExportError, export
from potstill.demo.tiny import build_tokenizer, save_model
from potstill.exporter.gguf import interleave_heads, tokenizer_fields, write_gguf
from potstill.exporter.gguf_check import tokenizer_parity, varied_strings
from potstill.exporter.modelfile import go_template, modelfile

pytest.importorskip("llama_cpp")
DEMO_TEACHER = Path(__file__).resolve().parents[1] / "src" / "potstill" / "demo" / "teacher"
TEXTS = [f"{q} Answer: {a}" for q, a in QUESTIONS] * 10 + ["café naïve 日本語 🙂 def f(x): return x + 1"] * 5


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_tokenizer(TEXTS, vocab_size=420)


def _tiny(arch: str, tok: Any, seed: int = 0) -> Any:
    """A random-init model of one family: Llama with grouped KV heads and its own output matrix, Qwen2 (q/k/v
    biases), Mistral; weights scaled up so the logits are far from uniform and a wrong layout shows."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
        initializer_range=0.2,
    )  # fmt: skip
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=False))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0, 0.5)  # Qwen2's q/k/v biases start at zero: make them matter
    else:
        model = MistralForCausalLM(MistralConfig(**common, num_key_value_heads=4, tie_word_embeddings=True))
    return model.eval()


def _llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits at every position of ``ids`` (one token fed at a time through its KV cache)."""
    from potstill.server.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(path)
    return np.stack([backend.feed([t], fresh=n == 0) for n, t in enumerate(ids)])


def test_interleave_heads_pairs_each_heads_halves() -> None:
    w = np.arange(8 * 3).reshape(8, 3)  # two heads of four rows: [a0 a1 b0 b1] -> [a0 b0 a1 b1]
    out = interleave_heads(w, heads=2)
    assert [int(r[0]) // 3 for r in out] == [0, 2, 1, 3, 4, 6, 5, 7]
    assert interleave_heads(np.arange(4.0), heads=1).tolist() == [0.0, 2.0, 1.0, 3.0]  # a bias too


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_llama_cpp_computes_the_torch_logits(arch: str, tok: Any, tmp_path: Path) -> None:
    """The f16 file in llama.cpp gives torch's logits (within half precision) at every position, so the rotary
    reordering, grouped KV heads, biases and the tied or untied output matrix are all written right."""
    model = _tiny(arch, tok)
    info = write_gguf(model, tok, tmp_path / "gguf", "f16")
    ids = tok("What is 3 plus 4? Answer: 7", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    got = _llama_logits(Path(info["file"]), ids)
    scale = float(np.abs(want).max())
    assert scale > 1.0  # the scaled init makes the test able to fail
    assert float(np.abs(got - want).max()) < 0.02 * scale
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
    if arch == "llama":  # untied: its own output tensor; grouped KV: 2 KV heads
        from gguf import GGUFReader

        reader = GGUFReader(info["file"])
        names = {t.name: t for t in reader.tensors}
        assert "output.weight" in names and tuple(names["blk.0.attn_k.weight"].shape) == (64, 32)


def test_llama_cpp_tokenizes_like_the_student_on_varied_strings(tok: Any, tmp_path: Path) -> None:
    """≥ 1,000 strings (digits, unicode, whitespace runs, chat markup): llama.cpp's ids equal the HF tokenizer's."""
    strings = varied_strings(tok, 1200)
    assert len(set(strings)) > 1000
    assert (
        any("<|user|>" in s for s in strings) and any("  " in s for s in strings) and any("日本" in s for s in strings)
    )
    info = write_gguf(_tiny("mistral", tok), tok, tmp_path / "g", "f16")
    check = tokenizer_parity(tok, Path(info["file"]), 1200)
    assert check["strings"] == 1200 and check["equal"] == 1200, check["mismatches"]


def test_a_tokenizer_llama_cpp_would_split_differently_is_refused(tmp_path: Path) -> None:
    """A byte-level BPE trained without the regex split merges across words; llama.cpp's split never would, so
    the check finds the difference and the export is refused with the folder removed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<|end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(["the cat sat on the mat. " * 5] * 50, trainer=trainer)
    odd = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|end|>", pad_token="<pad>")
    odd.chat_template = "{% for m in messages %}{{ m['content'] }}<|end|>{% endfor %}"
    model = _tiny("llama", odd)
    run = tmp_path / "model"
    save_model(model, odd, run)
    with pytest.raises(ExportError, match=r"tokenizes .* differently .* export onnx instead"):
        export(run, ["gguf"], prompts=1, max_new_tokens=2)
    assert not (run / "export" / "gguf").exists()


def test_other_tokenizers_and_architectures_are_refused(tok: Any) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    wp = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ExportError, match=r"byte-level BPE .* WordPiece"):
        tokenizer_fields(PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]"), 2)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ExportError, match=r"Llama-, Mistral- and Qwen2-style .* 'gpt2'"):
        write_gguf(gpt2, tok, Path("/nonexistent/never"), "f16")


def test_modelfile_template_renders_each_turn_like_the_chat_template(tok: Any) -> None:
    """The Go template's per-role pieces put together give exactly the Jinja rendering of a conversation."""
    import re

    text = modelfile(tok, "./model.gguf")
    assert text.splitlines()[1] == "FROM ./model.gguf" and 'PARAMETER stop "<|end|>"' in text
    template = go_template(tok)
    assert template is not None and "{{-" not in template
    branch = {
        m.group(1): (m.group(2), m.group(3))
        for m in re.finditer(r'if eq \.Role "(\w+)" }}(.*?){{ \.Content }}(.*?){{ (?:else|end)', template, re.S)
    }
    gen = template.rsplit("{{ end }}", 1)[1]
    convo = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 plus 2?"},
        {"role": "assistant", "content": "Answer: 4"},
        {"role": "user", "content": "And 3 plus 3?"},
    ]
    ours = "".join(branch[m["role"]][0] + m["content"] + branch[m["role"]][1] for m in convo) + gen
    assert ours == tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
    numbered = build_tokenizer(TEXTS[:20], vocab_size=300)  # turns that depend on their position: no TEMPLATE
    numbered.chat_template = "{% for m in messages %}[{{ loop.index }}] {{ m['content'] }}\n{% endfor %}"
    assert go_template(numbered) is None and "no TEMPLATE" in modelfile(numbered, "./m.gguf")


@pytest.fixture(scope="module")
def gguf_run(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_run(tiny_models, tmp_path_factory.mktemp("gguf") / "run")
    res = run_cli("export", str(run), "--format", "gguf,gguf-q8_0,gguf-q4_k_m", "--prompts", "4")
    assert res.returncode == 0, res.stderr
    assert "llama.cpp's tokenizer equals the student's on 1200/1200 strings" in " ".join(res.stderr.split())
    assert "llama_context" not in res.stderr  # llama.cpp's loading log stays quiet
    assert "falling back" not in res.stderr  # the quantizer's line per tensor: the manifest lists the types
    return run


def test_export_writes_each_gguf_with_modelfile_and_card(gguf_run: Path) -> None:
    manifest = json.loads((gguf_run / "export" / "manifest.json").read_text())
    ex = manifest["exports"]
    assert set(ex) == {"gguf", "gguf-q8_0", "gguf-q4_k_m"} and all(e["passed"] for e in ex.values())
    for fmt, e in ex.items():
        folder = gguf_run / "export" / fmt
        assert (folder / "model.gguf").is_file() and (folder / "Modelfile").is_file()
        assert (folder / "tokenizer.json").is_file() and e["tokenizer_check"]["equal"] == 1200
        assert e["parity"]["greedy_equal"] >= 0.95 * e["parity"]["prompts"] or fmt == "gguf-q4_k_m"
        assert "llama.cpp" in (folder / "README.md").read_text() and "ollama" in (folder / "README.md").read_text()
    assert ex["gguf"]["gguf"]["precision"] == "f16" and ex["gguf-q4_k_m"]["gguf"]["precision"] == "q4_k_m"
    safetensors = (gguf_run / "student" / "model.safetensors").stat().st_size
    assert (gguf_run / "export" / "gguf" / "model.gguf").stat().st_size < safetensors


def test_gguf_answers_equal_torch_and_are_evaluated_as_rows(gguf_run: Path, tmp_path: Path) -> None:
    """evaluation.models may name GGUF folders: each is run by llama.cpp through the same prompts and metrics."""
    import yaml

    from potstill.config import validate_spec
    from potstill.evaluate.run import run_evaluate
    from potstill.run_dir import RunDir

    run = tmp_path / "run"
    shutil.copytree(gguf_run, run)
    job = yaml.safe_load((run / "job.yaml").read_text())
    job["evaluation"]["models"] = [{"name": "q8", "model": "export/gguf-q8_0"}, {"name": "f16", "model": "export/gguf"}]
    run_evaluate(validate_spec(job, source="test"), RunDir(run))
    by = {m["name"]: m for m in json.loads((run / "eval" / "results.json").read_text())["models"]}
    for name, dtype in (("q8", "q8_0"), ("f16", "f16")):
        m = by[name]
        assert m["kind"] == "gguf" and m["dtype"] == dtype and m["device"] == "cpu (llama.cpp)"
        assert m["parameters"] == by["distilled"]["parameters"]
        assert m["latency"]["p50_ms"] > 0 and m["throughput"]["answers_per_s"] > 0
        assert m["n_scored"] == by["distilled"]["n_scored"] > 0

    def answers(name: str) -> list[str]:
        lines = (run / "eval" / "predictions" / f"{name}.jsonl").read_text().splitlines()
        return [json.loads(x)["output"] for x in lines]

    same = sum(a == b for a, b in zip(answers("f16"), answers("distilled"), strict=True))
    assert same >= 0.9 * len(answers("distilled"))


@pytest.mark.slow
def test_trained_teacher_greedy_answers_survive_f16_and_q8_0(tmp_path: Path) -> None:
    """The shipped demo teacher (trained; rows a multiple of 32, so q8_0 covers every matrix): llama.cpp's greedy
    answers equal torch's on ≥ 95 % of 60 demo questions, in f16 and in q8_0."""
    from potstill.demo.task import chat, problems
    from potstill.server.backends import load_model

    run = tmp_path / "teacher"
    shutil.copytree(DEMO_TEACHER, run)
    export(run, ["gguf", "gguf-q8_0"], prompts=8, max_new_tokens=24)
    ref = load_model(run, device="cpu")
    convs = [chat(p, with_answer=False) for p in problems(60, seed=7)]
    want = [r.token_ids for r in ref.generate(convs, max_new_tokens=48)]
    for fmt in ("gguf", "gguf-q8_0"):
        got = [r.token_ids for r in load_model(run / "export" / fmt).generate(convs, max_new_tokens=48)]
        assert sum(a == b for a, b in zip(got, want, strict=True)) >= 0.95 * len(want), fmt


def test_served_gguf_answers_and_streams_over_http(gguf_run: Path) -> None:
    """`potstill serve RUN --format gguf-q8_0`: llama.cpp behind the OpenAI-compatible API; the answer (whole or
    streamed) is the one the loaded GGUF gives, and concurrent requests are all answered."""
    from concurrent.futures import ThreadPoolExecutor

    from _serving import running
    from openai import OpenAI

    from potstill.server import build_app
    from potstill.server.backends import load_model

    want = load_model(gguf_run / "export" / "gguf-q8_0").generate(
        [[{"role": "user", "content": q}] for q, _ in QUESTIONS[:4]], max_new_tokens=12
    )
    app = build_app(gguf_run, format="gguf-q8_0", model_name="s", max_tokens=12, max_batch=4)
    with running(app) as url:
        c = OpenAI(base_url=url, api_key="x", max_retries=0)

        def ask(q: str) -> str:
            r = c.chat.completions.create(model="s", messages=[{"role": "user", "content": q}], temperature=0)
            return r.choices[0].message.content or ""

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(ask, [q for q, _ in QUESTIONS[:4]]))
        stream = c.chat.completions.create(
            model="s", messages=[{"role": "user", "content": QUESTIONS[0][0]}], temperature=0, stream=True
        )
        streamed = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert got == [w.text for w in want] and streamed == want[0].text
