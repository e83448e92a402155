"""Batch building: collate() and the training loop's cached Collator against a plain element-by-element reference."""

from __future__ import annotations

import random

import pytest
import torch

from potstill.train.data import IGNORE, Collator, EncodedRow, collate
from potstill.train.packing import pack

PAD = 0


def reference(rows: list[EncodedRow], pad_id: int) -> dict[str, torch.Tensor]:
    """What a batch must hold, built one element at a time."""
    width = max(len(r.input_ids) for r in rows)
    b = len(rows)
    out = {
        "input_ids": torch.full((b, width), pad_id, dtype=torch.long),
        "labels": torch.full((b, width), IGNORE, dtype=torch.long),
        "real": torch.zeros((b, width), dtype=torch.long),
    }
    packed = any(r.position_ids is not None for r in rows)
    pos = torch.zeros((b, width), dtype=torch.long)
    k = max([len(c) for r in rows for c in (r.top_ids or [])] or [0])
    has_top = any(r.top_ids for r in rows)
    top_ids = torch.zeros((b, width, k), dtype=torch.long)
    top_lp = torch.full((b, width, k), float("-inf"))
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        p = r.position_ids if r.position_ids is not None else list(range(n))
        for j in range(width):
            if j < n:
                out["input_ids"][i, j] = r.input_ids[j]
                out["labels"][i, j] = r.labels[j]
                out["real"][i, j] = 1
                pos[i, j] = p[j]
            else:
                pos[i, j] = j - n
        for j, (cand, lps) in enumerate(zip(r.top_ids or [], r.top_lps or [], strict=True)):
            for c, (t, v) in enumerate(zip(cand, lps, strict=True)):
                if r.top_start + j < width:
                    top_ids[i, r.top_start + j, c] = t
                    top_lp[i, r.top_start + j, c] = v
    out["position_ids" if packed else "attention_mask"] = pos if packed else out["real"]
    if has_top:
        out["top_ids"], out["top_lp"] = top_ids, top_lp
    return out


def make_rows(n: int, seed: int, with_top: bool) -> list[EncodedRow]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        length = rng.randint(3, 20)
        start = rng.randint(1, length - 1)
        ids = [rng.randint(1, 50) for _ in range(length)]
        r = EncodedRow(ids, [IGNORE] * start + ids[start:])
        if with_top and i % 4:
            m = length - start + (i % 3)  # some rows carry more positions than they have tokens (clipped)
            ragged = i % 2 == 1  # dropped candidates: fewer than k at some positions, none at others
            sizes = [rng.randint(0, 5) if ragged else 5 for _ in range(m)]
            r.top_ids = [[rng.randint(0, 60) for _ in range(s)] for s in sizes]
            r.top_lps = [[-rng.random() * 5 for _ in range(s)] for s in sizes]
            r.top_start = start
        rows.append(r)
    return rows


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("with_top", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_collate_matches_the_reference(with_top: bool, packed: bool) -> None:
    rows = make_rows(24, seed=int(with_top) + 2 * int(packed), with_top=with_top)
    if packed:
        rows = pack(rows, 40)
    for size in (1, 3, 7):
        for i in range(0, len(rows), size):
            assert_same(collate(rows[i : i + size], PAD), reference(rows[i : i + size], PAD))


def test_the_cached_collator_gives_fresh_identical_batches() -> None:
    rows = make_rows(16, seed=5, with_top=True)
    batch_of = Collator(rows, PAD)
    order = [[3, 1, 4], [1, 5, 9, 2], [6], [3, 1, 4]]
    for idx in order:
        got = batch_of(idx)
        assert_same(got, reference([rows[i] for i in idx], PAD))
        for t in got.values():  # the trainer may modify a batch in place: the cache must not see it
            t.fill_(7)
    assert_same(batch_of(order[0]), reference([rows[i] for i in order[0]], PAD))


def test_mismatched_top_lists_are_refused() -> None:
    r = EncodedRow([1, 2, 3], [IGNORE, 2, 3], top_ids=[[1], [2]], top_lps=[[-0.1]], top_start=1)
    with pytest.raises(ValueError, match="top_ids has 2 positions but top_lps has 1"):
        collate([r], PAD)
