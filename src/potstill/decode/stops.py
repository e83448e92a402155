"""Which token ids end a generated answer: the tokenizer's eos plus the end-of-turn tokens of common chat formats.

    stop_token_ids(tokenizer)          # e.g. [2, 32007] for a Phi-3 tokenizer: "</s>" and "<|end|>"

A chat model trained on ChatML ends its turn with <|im_end|>, Llama 3 with <|eot_id|>, Gemma with <end_of_turn>,
while its tokenizer's eos is often the end-of-document token; stopping at eos only would run past the answer.
"""

from __future__ import annotations

from typing import Any

# end-of-turn / end-of-text markers of the chat formats in use; each counts only if the tokenizer has it as a token
CHAT_END_TOKENS = (
    "<|im_end|>",  # ChatML: Qwen, SmolLM, Phi-4 ...
    "<|eot_id|>",  # Llama 3
    "<|end|>",  # Phi-3 / Phi-4-mini, potstill's tiny test models
    "</s>",  # Llama 2, Mistral
    "<end_of_turn>",  # Gemma
    "<|endoftext|>",  # GPT-2 style end of text (Qwen's base eos)
)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The sorted ids that end an answer: ``tokenizer.eos_token_id`` plus each of CHAT_END_TOKENS in its vocab.

    A name the tokenizer does not know maps to None or to the unknown token; neither counts.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    ids: set[int] = set()
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    for name in CHAT_END_TOKENS:
        i = tokenizer.convert_tokens_to_ids(name)
        if isinstance(i, int) and i >= 0 and i != unk:
            ids.add(i)
    return sorted(ids)
