"""KD losses against straightforward references built on torch.nn.functional.kl_div (dense tensors)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from potstill.train.losses import hidden_loss, kd_dense, kd_topk

B, T, V = 2, 5, 11


def _data(seed: int = 0, v_t: int = V) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, T, V, generator=g) * 2
    t = torch.randn(B, T, v_t, generator=g) * 2
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, 0] = True
    return s, t, mask


def _reference(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, kind: str, temp: float, beta: float) -> float:
    """Position by position with kl_div: kl_div(log q, p) = KL(p ‖ q)."""
    total, n = 0.0, 0
    for b in range(s.size(0)):
        for i in range(s.size(1)):
            if not mask[b, i]:
                continue
            ls = F.log_softmax(s[b, i].double() / temp, -1)
            lt = F.log_softmax(t[b, i].double() / temp, -1)
            if kind == "forward_kl":
                d = F.kl_div(ls, lt.exp(), reduction="sum")
            elif kind == "reverse_kl":
                d = F.kl_div(lt, ls.exp(), reduction="sum")
            else:
                m = beta * lt.exp() + (1 - beta) * ls.exp()
                lm = m.clamp_min(1e-300).log()
                d = beta * F.kl_div(lm, lt.exp(), reduction="sum") + (1 - beta) * F.kl_div(
                    lm, ls.exp(), reduction="sum"
                )
            total += float(d) * temp**2
            n += 1
    return total / max(n, 1)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temp", [1.0, 2.5])
def test_dense_matches_kl_div_reference(kind: str, temp: float) -> None:
    s, t, mask = _data()
    got = kd_dense(s, t, mask, kind=kind, temperature=temp, beta=0.3)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(_reference(s, t, mask, kind, temp, 0.3), rel=1e-4, abs=1e-6)
    total = kd_dense(s, t, mask, kind=kind, temperature=temp, beta=0.3, reduction="sum")
    assert float(total) == pytest.approx(float(got) * int(mask.sum()), rel=1e-5)


def test_masked_positions_are_ignored_and_all_masked_is_zero() -> None:
    s, t, mask = _data(1)
    garbage = s.clone()
    garbage[~mask] = float("nan")  # whatever sits at a masked position never reaches the loss
    assert float(kd_dense(garbage, t, mask)) == pytest.approx(float(kd_dense(s, t, mask)), rel=1e-6)
    none = torch.zeros(B, T, dtype=torch.bool)
    s.requires_grad_(True)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        zero = kd_dense(s, t, none, kind=kind)
        assert float(zero.detach()) == 0.0
        zero.backward()
        assert torch.isfinite(s.grad).all() and float(s.grad.abs().sum()) == 0.0
    assert float(kd_topk(s, torch.zeros(B, T, 3, dtype=torch.long), torch.zeros(B, T, 3), none)) == 0.0


def test_half_precision_inputs_are_computed_in_fp32() -> None:
    s, t, mask = _data(2)
    got = kd_dense(s.bfloat16(), t.bfloat16(), mask, kind="forward_kl")
    assert got.dtype == torch.float32
    ref = kd_dense(s.bfloat16().float(), t.bfloat16().float(), mask, kind="forward_kl")
    assert float(got) == pytest.approx(float(ref), rel=1e-6)


def test_padded_vocabulary_uses_the_shared_range() -> None:
    s, t, mask = _data(3, v_t=V + 4)  # the teacher's embedding has 4 extra (padding) rows
    got = kd_dense(s, t, mask, kind="forward_kl")
    assert float(got) == pytest.approx(_reference(s, t[..., :V], mask, "forward_kl", 1.0, 0.5), rel=1e-4)
    # and the other way round: a padded student
    got2 = kd_dense(t, s, mask, kind="reverse_kl")
    assert float(got2) == pytest.approx(_reference(t[..., :V], s, mask, "reverse_kl", 1.0, 0.5), rel=1e-4)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_topk_with_k_equal_v_is_the_dense_loss(kind: str) -> None:
    s, t, mask = _data(4)
    lp = F.log_softmax(t, -1)
    ids = torch.arange(V).expand(B, T, V)
    perm = torch.randperm(V, generator=torch.Generator().manual_seed(0))  # order of slots does not matter
    got = kd_topk(s, ids[..., perm], lp[..., perm], mask, kind=kind, temperature=2.0, beta=0.4)
    assert float(got) == pytest.approx(float(kd_dense(s, t, mask, kind=kind, temperature=2.0, beta=0.4)), rel=1e-4)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_topk_matches_reference_on_the_renormalised_support(kind: str) -> None:
    s, t, mask = _data(5)
    k = 4
    lp = F.log_softmax(t, -1)
    top_lp, top_ids = lp.topk(k, dim=-1)
    top_lp, top_ids = top_lp.clone(), top_ids.clone()
    top_lp[1, 2, 3] = float("-inf")  # one position has only 3 candidates (a padding slot)
    # reference: restrict both distributions to the support, as dense logits (−inf elsewhere → excluded)
    ref_s = torch.full_like(s, -1e9)
    ref_t = torch.full_like(t, -1e9)
    for b in range(B):
        for i in range(T):
            for j in range(k):
                if torch.isfinite(top_lp[b, i, j]):
                    ref_s[b, i, top_ids[b, i, j]] = s[b, i, top_ids[b, i, j]]
                    ref_t[b, i, top_ids[b, i, j]] = top_lp[b, i, j]
    got = kd_topk(s, top_ids, top_lp, mask, kind=kind, temperature=1.5)
    assert float(got) == pytest.approx(_reference(ref_s, ref_t, mask, kind, 1.5, 0.5), rel=1e-4, abs=1e-6)


def test_topk_gradients_are_finite_with_padding_slots() -> None:
    s, t, mask = _data(6)
    s.requires_grad_(True)
    top_lp, top_ids = F.log_softmax(t, -1).topk(3, dim=-1)
    top_lp = top_lp.clone()
    top_lp[..., 2] = float("-inf")
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        s.grad = None
        kd_topk(s, top_ids, top_lp, mask, kind=kind).backward()
        assert torch.isfinite(s.grad).all() and float(s.grad.abs().sum()) > 0


def test_hidden_losses() -> None:
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(B, T, 8, generator=g), torch.randn(B, T, 8, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False
    want = F.mse_loss(a[mask], b[mask], reduction="none").mean(-1).mean()
    assert float(hidden_loss(a, b, mask, "mse")) == pytest.approx(float(want), rel=1e-5)
    want_cos = (1 - F.cosine_similarity(a[mask], b[mask], dim=-1)).mean()
    assert float(hidden_loss(a, b, mask, "cosine")) == pytest.approx(float(want_cos), rel=1e-5)
    assert float(hidden_loss(a, a * 3, mask, "cosine")) == pytest.approx(0.0, abs=1e-6)
