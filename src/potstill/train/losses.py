"""Knowledge-distillation losses: pure functions on tensors, computed in fp32.

    kd_dense(student_logits, teacher_logits, mask, kind="forward_kl", temperature=2.0)   # teacher forward pass
    kd_topk(student_logits, top_ids, top_logprobs, mask, kind="reverse_kl")              # sparse top-k logprobs
    hidden_loss(student_h, teacher_h, mask, kind="mse")                                  # after a projection
    generalized_jsd(student_logits, teacher_logits, mask, beta=0.5, temperature=0.9)     # on-policy (GKD)
    generalized_jsd_topk(student_logits, top_ids, top_logprobs, mask, beta=0.5)          # ... against top-k

Shapes: ``student_logits`` [..., V_s]; ``teacher_logits`` [..., V_t]; ``top_ids`` (long) and ``top_logprobs``
[..., K]; ``mask`` [...] (bool, True = the position counts). "..." is usually [batch, seq].

Divergences, with p the teacher's and q the student's distribution, both at temperature T:
    forward_kl   KL(p ‖ q) = Σ p (log p − log q)          mean-seeking (the classic Hinton loss)
    reverse_kl   KL(q ‖ p) = Σ q (log q − log p)          mode-seeking
    jsd          β·KL(p ‖ m) + (1 − β)·KL(q ‖ m),  m = β·p + (1 − β)·q,  0 < β < 1
Each is multiplied by T² so that gradients keep their size when T changes (Hinton et al. 2015).

Dense: vocabularies padded to different sizes (e.g. 151,936 vs 152,064 rows) are compared on their shared range
[0, min(V_s, V_t)); both distributions are renormalised there. Top-k: both distributions are restricted to the
teacher's k tokens and renormalised there (padding slots carry logprob −inf); with k = V this is the dense loss.

The generalised JSD of on-policy distillation follows TRL's ``GKDTrainer.generalized_jsd_loss`` exactly: beta 0
is KL(p ‖ q) (forward), beta 1 is KL(q ‖ p) (reverse), in between β·KL(p ‖ m) + (1 − β)·KL(q ‖ m) with
m = β·p + (1 − β)·q; the temperature divides both logits and there is no T² factor.

``reduction="mean"`` averages over the positions where ``mask`` is True, ``"sum"`` adds them up (the trainer
divides by the token count of the whole optimiser step). Both return 0 (with a gradient path) when every
position is masked.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]
Reduction = Literal["mean", "sum"]
_FILL = -1e4


def _xlogy_diff(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """Σ p (log p − log q) over the last axis, treating 0·log 0 as 0 (entries where p = 0 contribute nothing)."""
    p = p_log.exp()
    live = p > 0  # select before subtracting: no inf/nan enters the graph, so gradients stay finite
    zero = torch.zeros_like(p)
    return (p * (torch.where(live, p_log, zero) - torch.where(live, q_log, zero))).sum(-1)


def divergence(s_logp: torch.Tensor, t_logp: torch.Tensor, kind: Divergence, beta: float = 0.5) -> torch.Tensor:
    """Per-position divergence [...] between two log-distributions [..., S] over the same support."""
    match kind:
        case "forward_kl":
            return _xlogy_diff(t_logp, s_logp)
        case "reverse_kl":
            return _xlogy_diff(s_logp, t_logp)
        case "jsd":
            if not 0 < beta < 1:
                raise ValueError(f"jsd needs 0 < beta < 1 (got {beta})")
            m_logp = torch.logsumexp(torch.stack([t_logp + math.log(beta), s_logp + math.log(1 - beta)]), dim=0)
            return beta * _xlogy_diff(t_logp, m_logp) + (1 - beta) * _xlogy_diff(s_logp, m_logp)
    raise ValueError(f"unknown divergence {kind!r} (forward_kl | reverse_kl | jsd)")


def _reduce(per_pos: torch.Tensor, mask: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    mask = mask.to(per_pos.device, torch.bool)
    picked = torch.where(mask, per_pos, torch.zeros_like(per_pos))  # masked rows may hold nan/inf: never summed
    total = picked.sum()
    if reduction == "sum":
        return total
    return total / mask.sum().clamp(min=1)


def kd_dense(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    kind: Divergence = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """KD loss against a dense teacher distribution; see the module docstring for shapes and definitions."""
    v = min(student_logits.size(-1), teacher_logits.size(-1))
    s_logp = F.log_softmax(student_logits[..., :v].float() / temperature, dim=-1)
    t_logp = F.log_softmax(teacher_logits[..., :v].float().to(s_logp.device) / temperature, dim=-1)
    per_pos = divergence(s_logp, t_logp, kind, beta) * temperature**2
    return _reduce(per_pos, mask, reduction)


def _gkd(s_logp: torch.Tensor, t_logp: torch.Tensor, beta: float) -> torch.Tensor:
    if not 0 <= beta <= 1:
        raise ValueError(f"the generalised JSD needs 0 <= beta <= 1 (got {beta})")
    if beta == 0:
        return divergence(s_logp, t_logp, "forward_kl")
    if beta == 1:
        return divergence(s_logp, t_logp, "reverse_kl")
    return divergence(s_logp, t_logp, "jsd", beta)


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """On-policy (GKD) loss against a dense teacher: TRL's generalised JSD (see the module docstring)."""
    v = min(student_logits.size(-1), teacher_logits.size(-1))
    s_logp = F.log_softmax(student_logits[..., :v].float() / temperature, dim=-1)
    t_logp = F.log_softmax(teacher_logits[..., :v].float().to(s_logp.device) / temperature, dim=-1)
    return _reduce(_gkd(s_logp, t_logp, beta), mask, reduction)


def _topk_logps(
    student_logits: torch.Tensor, top_ids: torch.Tensor, top_logprobs: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both distributions restricted to the teacher's candidates and renormalised there: (student, teacher)
    log-probabilities [..., K] and [...] whether a position has any candidate."""
    logits = student_logits.float()
    valid = torch.isfinite(top_logprobs) & (top_ids >= 0) & (top_ids < logits.size(-1))
    ids = torch.where(valid, top_ids, torch.zeros_like(top_ids)).to(logits.device)
    valid = valid.to(logits.device)
    # unused slots get a large finite negative (probability exactly 0 in fp32, no inf in the graph)
    fill = torch.tensor(_FILL, device=logits.device)
    s_sel = torch.where(valid, logits.gather(-1, ids) / temperature, fill)
    t_logprobs = torch.where(valid, top_logprobs.to(logits.device).float(), torch.zeros((), device=logits.device))
    t_sel = torch.where(valid, t_logprobs / temperature, fill)
    return F.log_softmax(s_sel, -1), F.log_softmax(t_sel, -1), valid.any(-1)


def generalized_jsd_topk(
    student_logits: torch.Tensor,
    top_ids: torch.Tensor,
    top_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """On-policy (GKD) loss against the teacher's top-k logprobs (a server's prompt logprobs), on their support."""
    s_logp, t_logp, has = _topk_logps(student_logits, top_ids, top_logprobs, temperature)
    return _reduce(_gkd(s_logp, t_logp, beta), mask.to(has.device, torch.bool) & has, reduction)


def kd_topk(
    student_logits: torch.Tensor,
    top_ids: torch.Tensor,
    top_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kind: Divergence = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """KD loss against the teacher's top-k logprobs (−inf marks unused slots); see the module docstring."""
    s_logp, t_logp, has = _topk_logps(student_logits, top_ids, top_logprobs, temperature)
    per_pos = divergence(s_logp, t_logp, kind, beta) * temperature**2
    return _reduce(per_pos, mask.to(has.device, torch.bool) & has, reduction)


def hidden_loss(
    student_h: torch.Tensor,
    teacher_h: torch.Tensor,
    mask: torch.Tensor,
    kind: Literal["mse", "cosine"] = "mse",
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Hidden-state matching: [..., D] student states (already projected to the teacher's width) vs teacher's.

    mse: mean over D of the squared difference, per position; cosine: 1 − cosine similarity, per position.
    """
    s, t = student_h.float(), teacher_h.float().to(student_h.device)
    match kind:
        case "mse":
            per_pos = (s - t).pow(2).mean(-1)
        case "cosine":
            per_pos = 1 - F.cosine_similarity(s, t, dim=-1, eps=1e-6)
        case _:
            raise ValueError(f"unknown hidden-state loss {kind!r} (mse | cosine)")
    return _reduce(per_pos, mask, reduction)
