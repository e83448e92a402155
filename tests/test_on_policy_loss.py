"""The on-policy (GKD) loss: TRL's GKDTrainer.generalized_jsd_loss on random logits, and a plain reference."""

from __future__ import annotations

import math

import pytest
import torch

from potstill.train.data import IGNORE
from potstill.train.losses import generalized_jsd, generalized_jsd_topk

BETAS = [0.0, 0.5, 1.0]
TEMPS = [0.7, 2.0]


def _case(seed: int, v: int = 11) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student and teacher logits [3, 7, v] and labels with padded (IGNORE) positions whose logits are wild."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(3, 7, v, generator=g) * 3
    t = torch.randn(3, 7, v, generator=g) * 3
    labels = torch.randint(0, v, (3, 7), generator=g)
    labels[0, :2] = IGNORE  # a prompt
    labels[1, 5:] = IGNORE  # right padding
    labels[2, :] = IGNORE  # a row with nothing to learn
    s[1, 5:] = 1e4  # padding holds values that would dominate any sum they entered
    t[1, 5:] = -1e4
    return s, t, labels


def _reference(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, beta: float, temp: float) -> float:
    """The definition, one position at a time in float64: p teacher, q student, m = beta p + (1 - beta) q."""
    total, n = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if labels[b, i] == IGNORE:
                continue
            q = torch.softmax(s[b, i].double() / temp, -1).tolist()
            p = torch.softmax(t[b, i].double() / temp, -1).tolist()

            def kl(x: list[float], y: list[float]) -> float:
                return sum(a * math.log(a / c) for a, c in zip(x, y, strict=True) if a > 0)

            if beta == 0:
                d = kl(p, q)
            elif beta == 1:
                d = kl(q, p)
            else:
                m = [beta * a + (1 - beta) * c for a, c in zip(p, q, strict=True)]
                d = beta * kl(p, m) + (1 - beta) * kl(q, m)
            total, n = total + d, n + 1
    return total / max(n, 1)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("temp", TEMPS)
def test_equals_trl_generalized_jsd_loss(beta: float, temp: float) -> None:
    gkd = pytest.importorskip("trl.experimental.gkd", reason="trl is a test/benchmark reference only")
    trl_loss = gkd.GKDTrainer.generalized_jsd_loss
    for seed in range(3):
        s, t, labels = _case(seed)
        s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
        ours = generalized_jsd(s1, t, labels != IGNORE, beta=beta, temperature=temp)
        theirs = trl_loss(s2, t, labels=labels, beta=beta, temperature=temp)
        assert torch.isfinite(ours)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        ours.backward()
        theirs.backward()
        torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("temp", TEMPS)
def test_equals_the_definition(beta: float, temp: float) -> None:
    for seed in range(3):
        s, t, labels = _case(seed)
        got = generalized_jsd(s, t, labels != IGNORE, beta=beta, temperature=temp)
        assert float(got) == pytest.approx(_reference(s, t, labels, beta, temp), rel=1e-5, abs=1e-7)
        summed = generalized_jsd(s, t, labels != IGNORE, beta=beta, temperature=temp, reduction="sum")
        assert float(summed) == pytest.approx(float(got) * int((labels != IGNORE).sum()), rel=1e-5)


def test_beta_ends_are_the_two_kls_and_zero_when_equal() -> None:
    s, t, labels = _case(7)
    mask = labels != IGNORE
    fwd, rev = generalized_jsd(s, t, mask, beta=0.0), generalized_jsd(s, t, mask, beta=1.0)
    assert float(fwd) != pytest.approx(float(rev), rel=1e-3)  # beta decides which KL
    assert float(generalized_jsd(t, t, mask, beta=0.5)) == pytest.approx(0.0, abs=1e-6)
    nothing = generalized_jsd(s.requires_grad_(), t, torch.zeros_like(mask))
    assert float(nothing.detach()) == 0.0
    nothing.backward()  # a gradient path even when every position is masked
    with pytest.raises(ValueError, match="0 <= beta <= 1"):
        generalized_jsd(s, t, mask, beta=1.5)


@pytest.mark.parametrize("beta", BETAS)
def test_topk_with_every_token_is_the_dense_loss(beta: float) -> None:
    s, t, labels = _case(3)
    mask = labels != IGNORE
    v = s.shape[-1]
    ids = torch.arange(v).expand(*s.shape[:2], v)
    lp = torch.log_softmax(t, -1)
    dense = generalized_jsd(s, t, mask, beta=beta, temperature=0.7)
    topk = generalized_jsd_topk(s, ids, lp, mask, beta=beta, temperature=0.7)
    torch.testing.assert_close(topk, dense, rtol=1e-4, atol=1e-6)
