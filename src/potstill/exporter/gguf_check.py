"""Does llama.cpp read the GGUF's tokenizer exactly as the student was trained? Ids compared on varied strings.

    tokenizer_parity(hf_tokenizer, Path("export/gguf/model.gguf"))
    -> {"strings": 1200, "equal": 1200, "mismatches": [{"text", "hf", "gguf"}, ...up to 5]}

The strings (``varied_strings``, fixed by a seed) mix digits and numbers, words, punctuation, code, accented and
non-Latin letters, emoji, runs of spaces, tabs and newlines, and the tokenizer's own chat markup: whole
conversations rendered by its chat template, and its special tokens on their own and inside text.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

_PIECES = (  # noqa: SIM905, RUF005 -- pieces split at spaces, then the few that hold spaces or are whitespace-like
    "0 7 42 1234567 3.14159 -12 +5 1,000,000 2026-11-30 10:45 0x1F 1e-3 50% x2 a1b2c3 v1.2.3 the The cat sat on "
    "mat Hello world isn't we'll I'M don't answer Answer: Verdict: entailment neutral contradiction (A) [B] {c} <d> "
    "def f(x): #include a->b café naïve Straße Ünïcödé 日本語 中文字符 한국어 Привет مرحبا שלום Ελληνικά हिन्दी 🙂 👍🏽 "
    "🚀🚀 ∑ √2 ½ ² ³ Ⅻ ٣٤ १२ — … “quoted” ‘single’ «guillemets» ! ? . , ; : ... !! ?! $ € £ ¥ @ # & * = == != <= "
    ">= -> => || && ~ ^ ` | \\ / _ __init__"
).split() + ["return x + 1", "if a == b:", "print('hi')", "// comment", "x = y * z;", "e\u0301", "\u00a0", "\u200b"]
_SPACES = [" ", " ", " ", "  ", "   ", "\t", "\n", "\n\n", " \n", "\n ", "\r\n", "    ", " \t ", "\n\n\n", ""]


def varied_strings(tokenizer: Any, n: int = 1200, seed: int = 0) -> list[str]:
    """``n`` strings: the fixed pieces alone, chat markup, then seeded random mixes of pieces and whitespace."""
    rng = random.Random(seed)
    specials = [str(t) for t in getattr(tokenizer, "all_special_tokens", []) if t]
    out = list(_PIECES) + [s * 3 for s in _SPACES if s]
    out += [f"{s}{p}" for s in specials for p in ("", " hi", "\n", "1")]
    template = getattr(tokenizer, "chat_template", None)
    for k in range(40 if template else 0):
        turns = [{"role": "user", "content": " ".join(rng.choices(_PIECES, k=rng.randint(1, 6)))}]
        if k % 2:
            turns.insert(0, {"role": "system", "content": rng.choice(_PIECES)})
            turns.append({"role": "assistant", "content": rng.choice(_PIECES)})
        out.append(str(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=k % 3 == 0)))
    while len(out) < n:
        parts = []
        for _ in range(rng.randint(1, 8)):
            parts.append(rng.choice(_PIECES + specials if rng.random() < 0.1 else _PIECES))
            parts.append(rng.choice(_SPACES))
        out.append("".join(parts))
    return out[:n] if len(out) > n else out


def tokenizer_parity(tokenizer: Any, gguf_path: Path, n: int = 1200) -> dict[str, Any]:
    """llama.cpp's ids (special markup parsed, no BOS added) against the Hugging Face tokenizer's."""
    from ..server.llamacpp import vocab_model

    vocab = vocab_model(gguf_path)
    strings = varied_strings(tokenizer, n)
    equal, mismatches = 0, []
    for text in strings:
        hf = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        ours = list(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        if hf == ours:
            equal += 1
        elif len(mismatches) < 5:
            mismatches.append({"text": text, "hf": hf, "gguf": ours})
    return {"strings": len(strings), "equal": equal, "mismatches": mismatches}
