"""stop_token_ids(): eos plus the chat end-of-turn tokens a tokenizer really has, and its three users agree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from potstill.decode import stop_token_ids


def word_tokenizer(
    words: list[str], eos: str | None = None, unk: str | None = None, added: tuple[str, ...] = ()
) -> Any:
    """A tiny word-level tokenizer: ids are the positions in ``words``; ``added`` become special tokens after them."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=unk))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token=eos, unk_token=unk)
    if added:
        tok.add_special_tokens({"additional_special_tokens": list(added)})
    return tok


WORDS = ["hello", "world", "<unk>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "</s>"]


@pytest.mark.parametrize(
    ("eos", "added", "expected"),
    [
        ("<|endoftext|>", ("<|im_start|>", "<|im_end|>"), ["<|endoftext|>", "<|im_end|>"]),  # ChatML (Qwen)
        ("<|end_of_text|>", ("<|start_header_id|>", "<|eot_id|>"), ["<|end_of_text|>", "<|eot_id|>"]),  # Llama 3
        ("<eos>", ("<start_of_turn>", "<end_of_turn>"), ["<eos>", "<end_of_turn>"]),  # Gemma
        ("</s>", ("<|end|>", "<|user|>"), ["</s>", "<|end|>"]),  # Phi-3
    ],
)
def test_eos_plus_the_chat_end_tokens_present(eos: str, added: tuple[str, ...], expected: list[str]) -> None:
    tok = word_tokenizer(WORDS, eos=eos, unk="<unk>", added=added)
    got = stop_token_ids(tok)
    # "</s>" and "<|endoftext|>" are in every WORDS vocab, so they stop too; nothing else does
    want = {*expected, "</s>", "<|endoftext|>"}
    assert got == sorted(tok.convert_tokens_to_ids(sorted(want)))
    assert tok.unk_token_id not in got and tok.convert_tokens_to_ids("hello") not in got
    assert got == sorted(set(got))


def test_absent_names_map_to_unk_and_do_not_count() -> None:
    tok = word_tokenizer(["hello", "<unk>", "<eos>"], eos="<eos>", unk="<unk>")
    assert tok.convert_tokens_to_ids("<|im_end|>") == tok.unk_token_id  # the trap: unknown names come back as unk
    assert stop_token_ids(tok) == [tok.convert_tokens_to_ids("<eos>")]


def test_no_unk_and_no_eos() -> None:
    tok = word_tokenizer(["hello", "world"], added=("<|im_end|>",))
    assert tok.eos_token_id is None and tok.unk_token_id is None
    assert stop_token_ids(tok) == [tok.convert_tokens_to_ids("<|im_end|>")]
    assert stop_token_ids(word_tokenizer(["hello", "world"])) == []


def test_the_local_teacher_the_server_and_the_export_use_the_same_stops(tmp_path: Path) -> None:
    from potstill.demo.tiny import build_tokenizer, tiny_llama
    from potstill.exporter import _save_hf
    from potstill.server.backends import LoadedModel
    from potstill.teachers.hf import LocalModel

    tok = build_tokenizer(["one two three <|end|>"] * 4, vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})  # a second end token, beside eos <|end|>
    want = sorted(tok.convert_tokens_to_ids(["<|end|>", "<|im_end|>"]))
    assert stop_token_ids(tok) == want
    model = tiny_llama(tok, hidden=16, layers=1, heads=2)
    assert sorted(LocalModel(model, tok, "tiny")._stop_ids()) == want
    assert LoadedModel(type("B", (), {"kind": "torch"})(), tok, tmp_path).stop_ids == want
    _save_hf(model, tok, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text())["eos_token_id"] == want
