"""Local Hugging Face causal LMs: loading (hub id or folder), chat formatting, batched left-padded generation.

    lm = LocalModel.load("path/or/hub-id", device="auto", dtype="auto")
    outs = lm.generate([[{"role": "user", "content": "2+3?"}]], max_new_tokens=32)   # -> [Completion]

Used for the local teacher and, in evaluation, for every local model, so all are measured the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import PotstillError

# The plain template used when a tokenizer ships none. Each turn is "<|role|>\n{content}<|end|>\n"; the
# generation prompt is "<|assistant|>\n"; generation stops at "<|end|>" (the tokenizer's eos).
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    logprobs: dict[str, Any] | None = None  # {"tokens", "top", "token_ids", "top_ids"} (see teachers/generate.py)
    mean_logprob: float | None = None  # the mean of the picked tokens' logprobs (when logprobs were asked, 0 too)


def pick_device(device: str = "auto") -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def quiet_transformers() -> None:
    """No per-file progress bars or info chatter from transformers while loading and saving."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise PotstillError(
            f"cannot load a tokenizer from {name!r}: {str(exc).splitlines()[0]} "
            "(give a local folder with tokenizer files, or a hub id that is cached)"
        ) from None
    if not getattr(tok, "chat_template", None):
        tok.chat_template = PLAIN_CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name: str, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise PotstillError(
            f"cannot load a causal LM from {name!r}: {str(exc).splitlines()[0]} "
            "(give a local folder with config.json and weights, or a hub id that is cached)"
        ) from None
    return model.to(device).eval()


class LocalModel:
    def __init__(self, model: Any, tokenizer: Any, name: str = "") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.tokenizer.padding_side = "left"

    @classmethod
    def load(
        cls, name: str | Path, tokenizer: str | None = None, device: str = "auto", dtype: str = "auto"
    ) -> LocalModel:
        dev = pick_device(device)
        tok = load_tokenizer(str(tokenizer or name))
        model = load_causal_lm(str(name), dev, pick_dtype(dtype, dev))
        return cls(model, tok, str(name))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def chat_text(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _stop_ids(self) -> list[int]:
        from ..decode import stop_token_ids

        return stop_token_ids(self.tokenizer)

    def prompt_lengths(self, conversations: list[list[dict[str, str]]]) -> list[int]:
        return [len(self.tokenizer(self.chat_text(m), add_special_tokens=False)["input_ids"]) for m in conversations]

    def _piece(self, ids: list[int]) -> list[str]:
        return self.tokenizer.batch_decode([[i] for i in ids])

    def engine(self, slots: int) -> Any:
        """The shared decoder (decode/engine.py), kept across calls so its KV cache buffers are reused."""
        from ..decode.engine import Engine

        eng = getattr(self, "_engine", None)
        if eng is None:
            eng = self._engine = Engine(self.model, self._stop_ids(), slots, self.tokenizer.pad_token_id or 0)
        eng.slots = max(1, slots)
        return eng

    def generate(
        self,
        conversations: list[list[dict[str, str]]],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 16,
        seed: int | None = None,
        logprobs: int | None = None,
        seeds: list[int] | None = None,
        done: Callable[[int, Completion], None] | None = None,
    ) -> list[Completion]:
        """Answer each conversation (``batch_size`` decoded together, continuously refilled); results in input
        order. A sampled answer depends only on its seed: ``seeds[i]``, else ``seed`` + its position. With
        ``logprobs=k``, each Completion carries the top-k logprobs of every generated position. ``done(i,
        completion)`` is called as each answer ends (in the order they end), before the call returns."""
        from ..decode.engine import Output, Request

        texts = [self.chat_text(m) for m in conversations]
        enc = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        finished: list[Completion | None] = [None] * len(enc)

        def ended(i: int) -> Callable[[Output], None]:
            def call(o: Output) -> None:
                finished[i] = c = self._completion(len(enc[i]), o)
                if done is not None:
                    done(i, c)

            return call

        reqs = [
            Request(
                list(ids),
                max_new_tokens,
                temperature,
                top_p,
                seeds[i] if seeds else (seed or 0) + i,
                logprobs,
                on_done=ended(i),
            )
            for i, ids in enumerate(enc)
        ]
        outs = self.engine(batch_size).generate(reqs)
        return [c or self._completion(len(ids), o) for c, ids, o in zip(finished, enc, outs, strict=True)]

    def _completion(self, prompt_tokens: int, o: Any) -> Completion:
        text = self.tokenizer.decode(o.tokens, skip_special_tokens=True)
        lp = None
        if o.top is not None:
            top_ids, top_vals = o.top
            lp = {
                "tokens": self._piece(o.tokens),
                "top": [
                    [[p, round(v, 4)] for p, v in zip(self._piece(i), vals, strict=True)]
                    for i, vals in zip(top_ids, top_vals, strict=True)
                ],
                "token_ids": o.tokens,
                "top_ids": top_ids,
            }
        from ..decode.engine import NO_LOGPROB

        finish = "length" if o.finish == "length" else "stop"
        known = [v for v in o.chosen or () if v > NO_LOGPROB]  # the generic loop knows only a top-1 pick's
        mean = round(sum(known) / len(known), 4) if known else None
        return Completion(text.strip(), finish, prompt_tokens, len(o.tokens), o.seconds, lp, mean)
