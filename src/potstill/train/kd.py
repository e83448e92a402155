"""Logit distillation and hidden-state matching around the SFT loop: the teacher side of each training step.

    check_tokenizers(student_tok, teacher_tok)           # TrainingError unless token ids mean the same text
    attach_logprobs(enc, row["logprobs"], student_tok)    # align captured top-k logprobs with the student's tokens
    attach_teacher_prompt(enc, asked)                     # the teacher reads the row after the prompt it was asked
    d = Distiller(kd_spec, temperature, teacher=None|model, hidden=None|spec, student=model)
    sums = d.step_losses(student_out, batch)              # {"kd": summed KD loss, "hidden": summed hidden loss}

Token positions: the logits at position i predict token i + 1, so every loss here compares logits[:, :-1] with
targets aligned to ``labels[:, 1:]``. The KD loss counts on the positions whose label is a target (the
assistant's tokens) and, for sparse logprobs, that have teacher candidates; the hidden loss counts on every real
token. The trainer divides the summed losses by their counts over the whole optimiser step.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import HiddenSpec, KDSpec
from ..errors import TrainingError
from .data import IGNORE, EncodedRow
from .losses import hidden_loss, kd_dense, kd_topk

MISMATCH_HINT = (
    "token-level distillation (hyperparameters.kd, hyperparameters.hidden) needs the student's tokenizer: "
    "pick a teacher from the student's model family, or remove hyperparameters.kd to train on the teacher's text only"
)


def check_tokenizers(student_tok: Any, teacher_tok: Any) -> None:
    """Raise TrainingError unless both tokenizers have the same base vocabulary (every id, the same token).

    Extra added tokens on one side and embedding matrices padded to different sizes are fine: the losses use the
    shared id range.
    """
    s_vocab = {i: t for t, i in student_tok.get_vocab().items()}
    t_vocab = {i: t for t, i in teacher_tok.get_vocab().items()}
    shared = sorted(set(s_vocab) & set(t_vocab))
    differ = [i for i in shared if s_vocab[i] != t_vocab[i]]
    sizes = (student_tok.vocab_size, teacher_tok.vocab_size)
    if differ or not shared or sizes[0] != sizes[1]:
        i = differ[0] if differ else None
        example = f" (e.g. id {i}: {s_vocab[i]!r} vs {t_vocab[i]!r})" if i is not None else ""
        raise TrainingError(
            f"student and teacher tokenizers differ: base vocabularies of {sizes[0]} and {sizes[1]} tokens, "
            f"{len(differ)} of {len(shared)} shared ids map to different tokens{example}; {MISMATCH_HINT}"
        )


def last_target_start(labels: list[int]) -> int | None:
    """Index of the first token of the last run of target labels (the final assistant answer)."""
    for j in range(len(labels) - 1, -1, -1):
        if labels[j] != IGNORE and (j == 0 or labels[j - 1] == IGNORE):
            return j
    return None


def _student_id(tok: Any, piece: str, cache: dict[str, int | None]) -> int | None:
    if piece not in cache:
        ids = tok(piece, add_special_tokens=False)["input_ids"]
        cache[piece] = ids[0] if len(ids) == 1 else None
    return cache[piece]


def attach_logprobs(enc: EncodedRow, lp: dict[str, Any], tok: Any, cache: dict[str, int | None]) -> bool:
    """Put the teacher's top-k (the generate.py row format) on ``enc`` if its tokens line up with the answer.

    Ids (``token_ids``/``top_ids``, from a local teacher with the same tokenizer) are used as they are; text
    pieces are mapped to the student's ids when each is one student token. Leading whitespace-only teacher tokens
    (stripped from the answer text) are skipped. Returns False, leaving ``enc`` alone, when they do not line up.
    """
    start = last_target_start(enc.labels)
    if start is None or not lp.get("top"):
        return False
    top = lp["top"]
    if lp.get("token_ids") is not None and lp.get("top_ids") is not None:
        seq = list(lp["token_ids"])
        cands = [list(ids) for ids in lp["top_ids"]]
    else:
        seq = [_student_id(tok, piece, cache) for piece in lp.get("tokens", [])]
        cands = [[_student_id(tok, str(p), cache) for p, _ in pos] for pos in top]
    lps = [[float(v) for _, v in pos] for pos in top]
    if len(seq) != len(top) or len(cands) != len(top):
        return False
    skip = 0
    pieces = lp.get("tokens") or []
    while skip < len(pieces) and not str(pieces[skip]).strip():
        skip += 1
    seq, cands, lps = seq[skip:], cands[skip:], lps[skip:]
    room = len(enc.input_ids) - start
    n = min(len(seq), room)
    if n == 0 or seq[:n] != enc.input_ids[start : start + n]:
        return False
    enc.top_ids, enc.top_lps = [], []
    for c, v in zip(cands[:n], lps[:n], strict=True):
        kept = [(i, x) for i, x in zip(c, v, strict=True) if i is not None]
        enc.top_ids.append([i for i, _ in kept])
        enc.top_lps.append([x for _, x in kept])
    enc.top_start = start
    return True


def attach_teacher_prompt(enc: EncodedRow, asked: list[int]) -> None:
    """Give ``enc`` the teacher's version of the row: the prompt the teacher was asked with (``asked``: e.g. the
    task's system message first), then the row's final answer, so a local teacher's logits (kd.source: teacher,
    hidden) are the ones it had when it wrote that answer. Student positions map to teacher positions by a shift
    over the answer and the prompts' common tail; earlier positions (where the prompts differ) get none (-1) and
    carry no KD loss."""
    start = last_target_start(enc.labels)
    if start is None:
        return
    mine = enc.input_ids[:start]
    if asked == mine:
        return
    common = 0
    while common < min(len(mine), len(asked)) and mine[-1 - common] == asked[-1 - common]:
        common += 1
    first = min(start - common, max(start - 1, 0))  # the last prompt position predicts the answer's first token
    shift = len(asked) - start
    enc.teacher_ids = asked + enc.input_ids[start:]
    enc.teacher_at = [j + shift if j >= first else -1 for j in range(len(enc.input_ids))]


def target_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, W-1] bool: the positions whose next token is a target (the CE positions)."""
    return batch["labels"][:, 1:] != IGNORE


def token_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, W-1] bool: positions holding a real token (not right padding)."""
    return batch["real"][:, :-1].bool()


class Distiller(torch.nn.Module):
    """Holds the teacher (dense KD / hidden states) and the learned projections; stateless otherwise."""

    def __init__(
        self,
        kd: KDSpec | None,
        temperature: float,
        teacher: Any | None = None,
        hidden: HiddenSpec | None = None,
        student: Any | None = None,
    ) -> None:
        super().__init__()
        self.kd, self.temperature, self.hidden = kd, temperature, hidden
        self._teacher = [teacher]  # a list: the frozen teacher is neither a submodule nor in state_dict()
        self.proj = torch.nn.ModuleDict()
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        if hidden is not None:
            if teacher is None or student is None:
                raise TrainingError("hyperparameters.hidden needs a local teacher (teacher.kind: hf)")
            s_cfg, t_cfg = student.config, teacher.config
            layer_map = hidden.layer_map or {s_cfg.num_hidden_layers: t_cfg.num_hidden_layers}
            for s_l, t_l in layer_map.items():
                if not (0 <= s_l <= s_cfg.num_hidden_layers and 0 <= t_l <= t_cfg.num_hidden_layers):
                    raise TrainingError(
                        f"hyperparameters.hidden.layer_map {s_l}: {t_l} is out of range (student layers 0.."
                        f"{s_cfg.num_hidden_layers}, teacher layers 0..{t_cfg.num_hidden_layers}; 0 = embeddings)"
                    )
                self.proj[str(s_l)] = torch.nn.Linear(s_cfg.hidden_size, t_cfg.hidden_size, bias=False)
            self.layer_map = {int(k): v for k, v in layer_map.items()}

    @property
    def teacher(self) -> Any | None:
        return self._teacher[0]

    @property
    def needs_hidden_states(self) -> bool:
        return self.hidden is not None

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, int]:
        """Positions each loss is averaged over, known before the forward pass (for accumulation scaling)."""
        out = {}
        seen = _teacher_sees(batch) if self.teacher is not None else None
        if self.kd is not None:
            m = target_mask(batch)
            if self.kd.source == "logprobs":
                m = m & _has_top(batch)
            elif seen is not None:
                m = m & seen
            out["kd"] = int(m.sum())
        if self.hidden is not None:
            m = token_mask(batch)
            out["hidden"] = int((m if seen is None else m & seen).sum())
        return out

    def step_losses(self, out: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Summed KD and hidden losses for one micro-batch, given the student's forward output."""
        res: dict[str, torch.Tensor] = {}
        t_logits = t_hidden = seen = None
        if self.teacher is not None:
            t_logits, t_hidden, seen = self._teacher_pass(batch)
        logits = out.logits[:, :-1]
        if self.kd is not None:
            kw = {"kind": self.kd.loss, "temperature": self.temperature, "beta": self.kd.beta, "reduction": "sum"}
            mask = target_mask(batch)
            if self.kd.source == "teacher":
                assert t_logits is not None
                res["kd"] = kd_dense(logits, t_logits, mask if seen is None else mask & seen, **kw)
            else:
                ids, lp = batch.get("top_ids"), batch.get("top_lp")
                if ids is None or lp is None:
                    res["kd"] = logits.sum() * 0.0
                else:
                    res["kd"] = kd_topk(logits, ids[:, 1:], lp[:, 1:], mask & _has_top(batch), **kw)
        if self.hidden is not None:
            assert t_hidden is not None
            mask = token_mask(batch) if seen is None else token_mask(batch) & seen
            total = logits.sum() * 0.0
            for s_l, t_l in self.layer_map.items():
                s_h = self.proj[str(s_l)](out.hidden_states[s_l][:, :-1].float())
                total = total + hidden_loss(s_h, t_hidden[t_l], mask, self.hidden.loss, "sum")
            res["hidden"] = total / len(self.layer_map)
        return res

    def _teacher_pass(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor], torch.Tensor | None]:
        """The teacher's logits [B, W-1, V] and hidden states (by layer) at the student's positions, and the
        positions it saw (None: all). Rows asked with another prompt run as the teacher's own (``t_input_ids``)
        and their logits are moved to the student's positions."""
        want = self.hidden is not None
        assert self.teacher is not None
        with torch.no_grad():
            if "t_input_ids" not in batch:
                t_out = self.teacher(**model_inputs(batch), output_hidden_states=want)
                hidden = {t_l: t_out.hidden_states[t_l][:, :-1] for t_l in self.layer_map.values()} if want else {}
                return t_out.logits[:, :-1], hidden, None
            kw = {k[2:]: batch[k] for k in ("t_input_ids", "t_attention_mask", "t_position_ids") if k in batch}
            t_out = self.teacher(**kw, use_cache=False, output_hidden_states=want)
            at = batch["t_at"][:, :-1].to(t_out.logits.device)
            idx = at.clamp(min=0)[..., None]

            def moved(x: torch.Tensor) -> torch.Tensor:
                return x.gather(1, idx.expand(-1, -1, x.shape[-1]))

            hidden = {t_l: moved(t_out.hidden_states[t_l]) for t_l in self.layer_map.values()} if want else {}
            return moved(t_out.logits), hidden, at >= 0


def _teacher_sees(batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """[B, W-1] bool: positions with a teacher position (rows asked with another prompt), None when all have."""
    return batch["t_at"][:, :-1] >= 0 if "t_at" in batch else None


def _has_top(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    lp = batch.get("top_lp")
    if lp is None:
        return torch.zeros_like(batch["labels"][:, 1:], dtype=torch.bool)
    return torch.isfinite(lp[:, 1:]).any(-1).to(batch["labels"].device)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The forward pass's arguments: packed rows pass position_ids and no mask (block-diagonal attention)."""
    keys = ("input_ids", "attention_mask", "position_ids")
    return {k: batch[k] for k in keys if k in batch} | {"use_cache": False}
