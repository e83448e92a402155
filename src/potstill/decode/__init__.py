"""Decoding pieces shared by the local teacher, the export and the server.

    from potstill.decode import stop_token_ids
    stop_token_ids(tokenizer)          # -> sorted ids that end a turn: eos plus the chat end tokens it knows

DESIGN.md's one decoding engine grows here; today it holds the one answer to "which tokens end an answer?".
"""

from __future__ import annotations

from .stops import CHAT_END_TOKENS, stop_token_ids

__all__ = ["CHAT_END_TOKENS", "stop_token_ids"]
