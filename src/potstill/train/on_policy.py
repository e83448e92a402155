"""On-policy distillation (GKD): steps whose completions the student samples itself, scored by the teacher.

    op = OnPolicy(spec.hyperparameters.on_policy, seed=42, stop_ids=[eos], pad_id=0, max_seq_len=1024,
                  end_id=eos, teacher=model)          # or scorer=RemoteScorer(...) (train/remote_scorer.py)
    op.mode(step)                                     # None (a teacher-data step) | "student" | "teacher" (seq_kd)
    micro = op.batches(model, groups, rows, step, mode)   # collated micro-batches: prompt + sampled completion
    op.count(batch), op.loss_sum(out, batch, tail)    # completion tokens; summed generalised JSD on them

A step (after ``after_steps``) is on-policy with probability ``lmbda``: a coin drawn from (seed, step) alone, so a
resumed run flips the same coins and ``lmbda: 0`` leaves every step exactly as without on-policy. Otherwise, with
``seq_kd``, the teacher samples the completions; otherwise the step trains on the teacher data as usual.

Completions: each row's prompt is its tokens before the final assistant answer (every example of a packed row);
the decoder (decode/engine.py) samples ``max_new_tokens`` at most at ``temperature``, each request with its own
seed drawn from (seed, step, row, example), so a step's completions are reproducible after kill -9 and do not
depend on how the rows are split into micro-batches. The end-of-turn token is appended when the sample stopped
on it, so the student learns when to stop. The student's weights change every step: the decoder's fused copies
are rebuilt before each sampling (LoRA: from a plain copy of the model with the adapters added in).

Scoring: the teacher's forward pass over each micro-batch (dense logits), or a server's prompt logprobs (top-k,
fetched once per step). The loss is the generalised JSD (losses.generalized_jsd, TRL's convention) summed over
the completion tokens; the trainer divides by the step's completion-token count. The teacher reads each
completion after the prompt it was asked with at generation (its system message: the student's rows have none),
not after the student's: the demo's teacher answers 100 % of the test problems with its system prompt, 9 % without.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

import torch

from ..config import OnPolicySpec
from ..decode.engine import Engine, Request
from .data import IGNORE, EncodedRow, collate
from .kd import last_target_start, model_inputs
from .losses import generalized_jsd, generalized_jsd_topk

Scorer = Callable[[list[list[int]]], list[tuple[list[list[int]], list[list[float]]]]]


def _seed(*parts: int) -> int:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _takes_tail(model: Any) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


def prompts_of(row: EncodedRow) -> list[list[int]]:
    """The prompt of each example in ``row``: its tokens before the final assistant answer (packed rows hold
    several examples; their positions restart at 0)."""
    pos = row.position_ids
    starts = [0] if pos is None else [i for i, p in enumerate(pos) if p == 0]
    out = []
    for a, b in zip(starts, [*starts[1:], len(row.input_ids)], strict=True):
        start = last_target_start(row.labels[a:b])
        if start is not None:
            out.append(row.input_ids[a : a + start])
    return out


def end_of_turn(rows: list[EncodedRow], stop_ids: list[int]) -> int | None:
    """The stop token that ends the teacher's answers in the data (the chat template's end of turn)."""
    stops = set(stop_ids)
    for r in rows[:64]:
        start = last_target_start(r.labels)
        if start is None:
            continue
        hit = next((t for t, lab in zip(r.input_ids[start:], r.labels[start:], strict=True) if t in stops), None)
        if hit is not None and r.labels[start + r.input_ids[start:].index(hit)] != IGNORE:
            return hit
    return stop_ids[0] if stop_ids else None


class _Sampler:
    """The student as the decoder sees it. Full fine-tuning: the model itself. LoRA on a model the fast path
    covers: a plain copy of the architecture whose weights are set to base + adapter delta before each use
    (nothing of the trained model is modified, so resumed runs see the same weights); otherwise the base model
    with its adapters active, through the generic loop."""

    def __init__(self, model: Any, max_len: int) -> None:
        self.model, self.plain, self.lora = model, None, hasattr(model, "get_base_model")
        if not self.lora:
            return
        from transformers import AutoModelForCausalLM

        from ..decode.llama import supported

        base = model.get_base_model()
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(base.config)
        if supported(plain, max_len):
            dev = next(base.parameters()).device
            self.plain = plain.to_empty(device=dev).to(next(base.parameters()).dtype).eval().requires_grad_(False)
            for name, buf in base.named_buffers():
                if "lora_" not in name:
                    self.plain.get_buffer(name.replace(".base_layer", "")).copy_(buf)
            self.plain.tie_weights()

    @torch.no_grad()
    def current(self) -> Any:
        if not self.lora:
            return self.model
        base = self.model.get_base_model()
        if self.plain is None:
            return base
        from peft.tuners.lora import LoraLayer

        for name, p in self.plain.named_parameters():
            owner, leaf = name.rsplit(".", 1)
            mod = base.get_submodule(owner)
            if isinstance(mod, LoraLayer):
                value = getattr(mod.get_base_layer(), leaf)
                if leaf == "weight":
                    value = value + sum(
                        (mod.get_delta_weight(a) for a in mod.active_adapters if a in mod.lora_A),
                        torch.zeros_like(value),
                    )
            else:
                value = getattr(mod, leaf)
            p.copy_(value)
        return self.plain


class OnPolicy:
    def __init__(
        self,
        spec: OnPolicySpec,
        seed: int,
        stop_ids: list[int],
        pad_id: int,
        max_seq_len: int,
        end_id: int | None = None,
        teacher: Any | None = None,
        scorer: Scorer | None = None,
        teacher_prompts: dict[tuple[int, ...], list[int]] | None = None,
    ) -> None:
        """``teacher_prompts``: student prompt -> the prompt the teacher was asked with (its system message), where
        they differ; the teacher scores, and with seq_kd samples, the completions after its own prompt."""
        if teacher is None and scorer is None:
            raise ValueError("on-policy distillation needs a local teacher or a scorer")
        self.spec, self.seed, self.stop_ids, self.pad_id = spec, seed, stop_ids, pad_id
        self.max_seq_len, self.end_id = max_seq_len, end_id
        self.teacher, self.scorer = teacher, scorer
        self.teacher_prompts = teacher_prompts or {}
        self._teacher_tail = teacher is not None and _takes_tail(teacher)
        self._sampler: _Sampler | None = None
        self._student: Engine | None = None
        self._teacher_engine: Engine | None = None
        self.sampled_tokens = 0  # completion tokens sampled in the last step (logged)

    # ------------------------------------------------------------------------------------------- which steps
    def mode(self, step: int) -> str | None:
        """How step ``step`` (0-based) gets its completions: None (the teacher data), "student" or "teacher"."""
        sp = self.spec
        if step < sp.after_steps or (sp.lmbda == 0 and not sp.seq_kd):
            return None
        if random.Random(f"potstill-on-policy:{self.seed}:{step}").random() < sp.lmbda:
            return "student"
        return "teacher" if sp.seq_kd else None

    # ------------------------------------------------------------------------------------------- sampling
    def _engine(self, model: Any, who: str) -> Engine:
        if who == "teacher":
            if self._teacher_engine is None:
                self._teacher_engine = Engine(self.teacher, self.stop_ids, 1, self.pad_id)
            return self._teacher_engine  # frozen weights: its fused copies stay valid
        if self._sampler is None or self._sampler.model is not model:
            self._sampler = _Sampler(model, self.max_seq_len + 1)
        net = self._sampler.current()
        if self._student is None or self._student.model is not net:
            self._student = Engine(net, self.stop_ids, 1, self.pad_id)
        self._student.runner = None  # the weights changed since the last step: rebuild the fused copies
        return self._student

    def sample(
        self, model: Any, prompts: list[list[int]], seeds: list[int], who: str, caps: list[int] | None = None
    ) -> list[list[int]]:
        """Completion tokens (end-of-turn included when the sample stopped) for each prompt, at most ``caps[i]``
        (default: max_new_tokens, within max_seq_len)."""
        sp = self.spec
        eng = self._engine(model, who)
        eng.slots = max(1, len(prompts))
        fast = eng.fast(max(len(p) for p in prompts) + sp.max_new_tokens + 1) if prompts else True
        caps = caps or [max(0, min(sp.max_new_tokens, self.max_seq_len - len(p) - 1)) for p in prompts]
        reqs = [
            Request(p, n, sp.temperature, 1.0, s if fast else seeds[0])  # the generic loop batches one seed only
            for p, s, n in zip(prompts, seeds, caps, strict=True)
        ]
        net = eng.model
        was_training = net.training
        net.eval()
        devices = [net.device.index or 0] if net.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the generic loop seeds the global generator
            outs = eng.generate(reqs)
        net.train(was_training)
        end = self.end_id
        return [o.tokens + ([end] if o.finish == "stop" and end is not None else []) for o in outs]

    def batches(
        self, model: Any, groups: list[list[int]], rows: list[EncodedRow], step: int, who: str
    ) -> list[dict[str, torch.Tensor]]:
        """One collated micro-batch per group of row indices: each example's prompt and a fresh completion.

        When the teacher was asked with another prompt (``teacher_prompts``), the batch also carries the teacher's
        rows (``t_input_ids``, ``t_attention_mask``: its prompt, then the same completion) and ``t_shift`` [B], how
        far each row's completion sits further right in the teacher's row."""
        prompts, seeds, owner = [], [], []
        for g, group in enumerate(groups):
            for i in group:
                for j, p in enumerate(prompts_of(rows[i])):
                    prompts.append(p)
                    seeds.append(_seed(self.seed, step, i, j))
                    owner.append(g)
        theirs = [self.teacher_prompts.get(tuple(p), p) for p in prompts]
        caps = [max(0, min(self.spec.max_new_tokens, self.max_seq_len - len(p) - 1)) for p in prompts]
        completions = self.sample(model, theirs if who == "teacher" else prompts, seeds, who, caps)
        self.sampled_tokens = sum(len(c) for c in completions)
        made: list[list[EncodedRow]] = [[] for _ in groups]
        told: list[list[list[int]]] = [[] for _ in groups]
        for g, p, t, c in zip(owner, prompts, theirs, completions, strict=True):
            ids = (p + c)[: self.max_seq_len]
            made[g].append(EncodedRow(ids, ([IGNORE] * len(p) + c)[: len(ids)]))
            told[g].append(t + ids[len(p) :])
        out = [collate(m, self.pad_id) for m in made]
        for b, m, t in zip(out, made, told, strict=True):
            if any(x != r.input_ids for x, r in zip(t, m, strict=True)):
                tb = collate([EncodedRow(x, x) for x in t], self.pad_id)
                b["t_input_ids"], b["t_attention_mask"] = tb["input_ids"], tb["attention_mask"]
                b["t_shift"] = torch.tensor([len(x) - len(r.input_ids) for x, r in zip(t, m, strict=True)])
            if self.scorer is not None:
                self._attach_scores(b, m, t)
        return out

    def _attach_scores(self, batch: dict[str, torch.Tensor], made: list[EncodedRow], told: list[list[int]]) -> None:
        """The server's top-k for every position of every (student) row, as ``top_ids``/``top_lp`` [B, W, K]:
        it scores the teacher's rows, whose positions sit ``len(told[r]) - len(row)`` further right."""
        assert self.scorer is not None
        scored = self.scorer(told)
        k = max((len(c) for ids, _ in scored for c in ids), default=1)
        b, w = batch["input_ids"].shape
        top_ids = torch.zeros((b, w, k), dtype=torch.long)
        top_lp = torch.full((b, w, k), float("-inf"))
        for r, (ids, lps) in enumerate(scored):
            shift = len(told[r]) - len(made[r].input_ids)
            for j in range(max(0, -shift), len(made[r].input_ids)):
                c, v = ids[j + shift], lps[j + shift]
                top_ids[r, j, : len(c)] = torch.tensor(c, dtype=torch.long)
                top_lp[r, j, : len(v)] = torch.tensor(v, dtype=torch.float)
        batch["top_ids"], batch["top_lp"] = top_ids, top_lp

    # ------------------------------------------------------------------------------------------- the loss
    @staticmethod
    def count(batch: dict[str, torch.Tensor]) -> int:
        """Completion tokens the loss is summed over (host tensors: no device sync)."""
        m = batch["labels"][:, 1:] != IGNORE
        if "top_lp" in batch:
            m = m & torch.isfinite(batch["top_lp"][:, 1:]).any(-1)
        return int(m.sum())

    def loss_sum(self, out: Any, batch: dict[str, torch.Tensor], tail: dict[str, int]) -> torch.Tensor:
        """Summed generalised JSD over the completion tokens; ``out.logits`` may cover only the last positions."""
        sp = self.spec
        logits = out.logits
        keep = logits.shape[1]
        first = batch["labels"].shape[1] - keep + 1  # the first position whose label the kept logits predict
        mask = batch["labels"][:, first:] != IGNORE
        if "top_lp" in batch:
            ids, lp = batch["top_ids"][:, first:], batch["top_lp"][:, first:]
            return generalized_jsd_topk(logits[:, :-1], ids, lp, mask, sp.beta, sp.temperature, "sum")
        assert self.teacher is not None
        with torch.no_grad():
            if "t_input_ids" in batch:  # the teacher's own prompt: its logits moved into the student's positions
                full = self.teacher(input_ids=batch["t_input_ids"], attention_mask=batch["t_attention_mask"]).logits
                w = batch["labels"].shape[1]
                at = torch.arange(w - keep, w, device=full.device)[None] + batch["t_shift"].to(full.device)[:, None]
                at = at.clamp(0, full.shape[1] - 1)  # prompt and padding positions: masked out below
                t_logits = full.gather(1, at[..., None].expand(-1, -1, full.shape[-1]))
            else:
                t_logits = self.teacher(**model_inputs(batch), **(tail if self._teacher_tail else {})).logits
                t_logits = t_logits[:, -keep:]
        return generalized_jsd(logits[:, :-1], t_logits[:, :-1], mask, sp.beta, sp.temperature, "sum")
