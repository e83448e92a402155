"""The student as GGUF for llama.cpp and Ollama, written with the ``gguf`` package (no converter script).

    write_gguf(model, tokenizer, Path("runs/x/export/gguf-q8_0"), "q8_0")
    -> runs/x/export/gguf-q8_0/{model.gguf, Modelfile, tokenizer.json, tokenizer_config.json, chat_template.jinja}

Llama- and Mistral-style models are written as llama.cpp's ``llama`` architecture, Qwen2 as ``qwen2`` (with its
q/k/v biases). llama.cpp's ``llama`` rotary embedding pairs neighbouring dimensions where Hugging Face pairs the
two halves of a head, so the q and k rows of each head are reordered (first half to even rows, second half to odd
rows); ``qwen2`` uses the halves convention and is written as it is.

Precisions: ``f16`` (every matrix in half precision; norms and biases stay fp32), ``q8_0`` (8-bit blocks of 32,
quantized here with ``gguf.quants``; a matrix whose rows are not a multiple of 32 stays f16) and ``q4_k_m``
(llama.cpp's own quantizer, ``llama_cpp.llama_model_quantize``, from the f16 file; it keeps a matrix whose rows do
not fit its 256-wide blocks in a simpler type, as ``llama-quantize`` does).

The tokenizer goes in the file as llama.cpp's byte-level BPE (``tokenizer.ggml.model = gpt2``: tokens, merges,
token types, special ids, the chat template). Other tokenizer kinds (SentencePiece, WordPiece) are refused with an
ExportError. The pre-tokenizer is named from the tokenizer's own settings (``_pre_tokenizer``), and the export
checks llama.cpp's ids against the Hugging Face tokenizer's on varied strings (``exporter/gguf_check.py``) before it
keeps the file. The Hugging Face tokenizer files are kept beside the GGUF: potstill's own evaluation encodes with
them, exactly as the torch student does, and feeds token ids to llama.cpp.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from ..server.backends import GGUF_FILE

QUANTS = {"gguf": "f16", "gguf-q8_0": "q8_0", "gguf-q4_k_m": "q4_k_m"}  # export format -> precision
ARCHES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}  # HF model_type -> llama.cpp architecture
Q8_BLOCK = 32

_LAYER_NAMES = {  # HF module path inside model.layers.N -> GGUF tensor name inside blk.N
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def _rope_theta(cfg: Any) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    scaling = getattr(cfg, "rope_scaling", None) or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ExportError(
            f"GGUF export: rope scaling {kind!r} is not written yet; export hf or onnx for this student instead"
        )
    return float(params.get("rope_theta") or getattr(cfg, "rope_theta", None) or 10000.0)


def gguf_name(hf_name: str) -> str | None:
    """The GGUF tensor name of a Hugging Face parameter, None for one GGUF has no place for (rotary buffers)."""
    stem, _, kind = hf_name.rpartition(".")
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{kind}"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", stem)
    if m and m.group(2) in _LAYER_NAMES:
        return f"blk.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{kind}"
    return None


def interleave_heads(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head reordered from Hugging Face's rotary halves to llama.cpp's neighbouring pairs: row i of a
    head's first half goes to row 2i, row i of its second half to row 2i + 1 (a weight or a bias)."""
    head_dim = w.shape[0] // heads
    return w.reshape(heads, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer_json(tok: Any) -> dict[str, Any]:
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None:
        raise ExportError(
            f"GGUF export needs a fast (tokenizers) tokenizer with a tokenizer.json; this one is {type(tok).__name__}"
        )
    return json.loads(backend.to_str())


def _pieces(node: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not node:
        return []
    return [p for n in node.get("pretokenizers", [node]) for p in _pieces(n)] if "pretokenizers" in node else [node]


def _pre_tokenizer(spec: dict[str, Any]) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization (``tokenizer.ggml.pre``).

    Qwen2's and Llama 3's split patterns have their own names; a plain byte-level split is ``gpt-2``. A split that
    isolates digits (`` ?\\d``) before the byte-level one is also ``gpt-2``: the merges, learned on those pieces,
    never join a digit to anything but the space before it, so the two splits give the same tokens (the export's
    tokenizer check proves it on every string it tries)."""
    patterns = [
        str((p.get("pattern") or {}).get("Regex") or (p.get("pattern") or {}).get("String") or "")
        for p in _pieces(spec.get("pre_tokenizer"))
        if p.get("type") == "Split"
    ]
    joined = "".join(patterns)
    if r"\p{N}{1,3}" in joined:
        return "llama-bpe"
    if r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|" in joined:
        return "qwen2"
    return "gpt-2"


def tokenizer_fields(tok: Any, vocab_size: int) -> dict[str, Any]:
    """Everything llama.cpp's byte-level BPE reads: tokens by id, types, merges, special ids, pre-tokenizer."""
    from gguf import TokenType

    spec = _tokenizer_json(tok)
    model = spec.get("model") or {}
    kinds = {p.get("type") for p in _pieces(spec.get("pre_tokenizer"))}
    if model.get("type") != "BPE" or "ByteLevel" not in kinds:
        raise ExportError(
            f"GGUF export writes byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2 style); this one is "
            f"{model.get('type')} with pre-tokenizers {sorted(k for k in kinds if k)}: export hf or onnx instead"
        )
    tokens: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    types = dict.fromkeys(tokens, int(TokenType.NORMAL))
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = int(TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED)
    size = max(vocab_size, max(tokens) + 1)
    names = [tokens.get(i, f"[PAD{i}]") for i in range(size)]
    kinds_by_id = [types.get(i, int(TokenType.UNUSED)) for i in range(size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {
        "tokens": names,
        "types": kinds_by_id,
        "merges": merges,
        "pre": _pre_tokenizer(spec),
        "bos": tok.bos_token_id,
        "eos": tok.eos_token_id,
        "pad": tok.pad_token_id,
        "add_bos": bool(tok.bos_token_id is not None and tok("x")["input_ids"][:1] == [tok.bos_token_id]),
    }


def _matrices(model: Any, arch: str) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, fp32 array) for every weight, q/k rows interleaved for llama.cpp's ``llama`` rotary."""
    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    out = []
    for name, t in model.state_dict().items():
        target = gguf_name(name)
        if target is None:
            continue
        arr = t.detach().float().cpu().numpy()
        if arch == "llama" and ".attn_q." in target:
            arr = interleave_heads(arr, heads)
        elif arch == "llama" and ".attn_k." in target:
            arr = interleave_heads(arr, kv_heads)
        out.append((target, np.ascontiguousarray(arr)))
    if getattr(cfg, "tie_word_embeddings", False):
        out = [(n, a) for n, a in out if not n.startswith("output.")]  # llama.cpp reuses token_embd
    return out


def _add_tensor(writer: Any, name: str, arr: np.ndarray, precision: str) -> str:
    """Add one tensor at the file's precision; the type actually written ('F32', 'F16', 'Q8_0')."""
    from gguf import GGMLQuantizationType, quants

    if arr.ndim == 1:
        writer.add_tensor(name, arr.astype(np.float32))
        return "F32"
    if precision == "q8_0" and arr.shape[-1] % Q8_BLOCK == 0:
        q = quants.quantize(arr.astype(np.float32), GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=GGMLQuantizationType.Q8_0)
        return "Q8_0"
    writer.add_tensor(name, arr.astype(np.float16))
    return "F16"


def _write_file(model: Any, tok: Any, path: Path, precision: str, name: str) -> dict[str, int]:
    import gguf

    cfg = model.config
    arch = ARCHES.get(getattr(cfg, "model_type", ""))
    if arch is None:
        raise ExportError(
            f"GGUF export supports Llama-, Mistral- and Qwen2-style students; this one is {cfg.model_type!r}: "
            "export hf or onnx instead"
        )
    theta = _rope_theta(cfg)
    fields = tokenizer_fields(tok, int(cfg.vocab_size))
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(cfg.num_hidden_layers))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(int(heads))
    w.add_head_count_kv(int(getattr(cfg, "num_key_value_heads", None) or heads))
    w.add_rope_freq_base(theta)
    w.add_rope_dimension_count(int(head_dim))
    if head_dim * heads != cfg.hidden_size:
        w.add_key_length(int(head_dim))
        w.add_value_length(int(head_dim))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(len(fields["tokens"]))
    ftype = gguf.LlamaFileType.MOSTLY_Q8_0 if precision == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
    w.add_file_type(int(ftype))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(fields["pre"])
    w.add_token_list(fields["tokens"])
    w.add_token_types(fields["types"])
    w.add_token_merges(fields["merges"])
    for key, adder in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("pad", w.add_pad_token_id)):
        if fields[key] is not None:
            adder(int(fields[key]))
    w.add_add_bos_token(fields["add_bos"])
    w.add_add_eos_token(False)
    if getattr(tok, "chat_template", None):
        w.add_chat_template(tok.chat_template)
    written: dict[str, int] = {}
    for tname, arr in _matrices(model, arch):
        kind = _add_tensor(w, tname, arr, precision)
        written[kind] = written.get(kind, 0) + 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


def _quantize_q4_k_m(src: Path, dst: Path) -> None:
    """llama.cpp's own Q4_K_M quantizer over the f16 file."""
    try:
        import llama_cpp
    except ImportError as e:
        raise ExportError(
            "gguf-q4_k_m uses llama.cpp's quantizer: pip install llama-cpp-python (or export gguf-q8_0)"
        ) from e
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = 1
    with _stderr_kept() as said:  # a line per tensor that falls back; the manifest's tensor_types say it once
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        tail = " | ".join(said()[-3:])
        raise ExportError(f"llama.cpp could not quantize {src} to q4_k_m" + (f": {tail}" if tail else ""))


@contextlib.contextmanager
def _stderr_kept() -> Iterator[Callable[[], list[str]]]:
    """Hold what C code writes to file descriptor 2 in a temporary file; yields a function giving its lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        lines: list[str] = []
        try:
            yield lambda: lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines += held.read().decode(errors="replace").splitlines()


def write_gguf(model: Any, tok: Any, folder: Path, precision: str, name: str = "student") -> dict[str, Any]:
    """Write ``folder`` (GGUF_FILE, the HF tokenizer files, an Ollama Modelfile) whole or not at all; what it
    holds: {"file", "precision", "tensor_types"}."""
    from ..run_dir import atomic_replace_dir
    from .modelfile import modelfile

    if precision not in QUANTS.values():
        raise ExportError(f"unknown GGUF precision {precision!r}; choose from {', '.join(QUANTS.values())}")
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        target = tmp / GGUF_FILE
        if precision == "q4_k_m":
            f16 = tmp / "f16.gguf"
            _write_file(model, tok, f16, "f16", name)
            _quantize_q4_k_m(f16, target)
            f16.unlink()
            types = {"Q4_K_M": 1}
        else:
            types = _write_file(model, tok, target, precision, name)
        tok.save_pretrained(tmp)
        (tmp / "Modelfile").write_text(modelfile(tok, f"./{GGUF_FILE}"), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_replace_dir(tmp, folder)
    return {"file": str(folder / GGUF_FILE), "precision": precision, "tensor_types": types}
