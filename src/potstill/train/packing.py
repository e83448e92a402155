"""Packing: several short examples in one row of up to ``max_len`` tokens, so batches carry little padding.

    packed = pack(rows, max_len=1024)      # list[EncodedRow] with position_ids restarting at each example

Rows are placed first-fit in order of decreasing length (deterministic; the trainer shuffles packed rows each
epoch). Each packed row keeps its examples apart: ``position_ids`` restart at 0 for every example, and the
model is called without an attention mask, so transformers builds a block-diagonal causal mask from the
position ids (no attention across examples; the loss equals the unpacked one). The first token of every
example never carries loss (it would be predicted from the previous example).
"""

from __future__ import annotations

from .data import IGNORE, EncodedRow


def _concat(parts: list[EncodedRow]) -> EncodedRow:
    out = EncodedRow([], [], position_ids=[])
    has_top = any(p.top_ids for p in parts)
    if any(p.teacher_ids is not None for p in parts):  # the teacher's rows are packed alongside
        out.teacher_ids, out.teacher_at, out.teacher_pos = [], [], []
    if has_top:
        out.top_ids, out.top_lps = [], []
    for p in parts:
        start = len(out.input_ids)
        if has_top:
            # one continuous top-k list from the first example that has one; gaps are empty candidate lists
            assert out.top_ids is not None and out.top_lps is not None
            if p.top_ids:
                if not out.top_ids:
                    out.top_start = start + p.top_start
                gap = start + p.top_start - (out.top_start + len(out.top_ids))
                out.top_ids.extend([[]] * gap)
                out.top_lps.extend([[]] * gap)
                out.top_ids.extend(p.top_ids)
                out.top_lps.extend(p.top_lps or [])
        if out.teacher_ids is not None and out.teacher_at is not None and out.teacher_pos is not None:
            t_ids = p.teacher_ids if p.teacher_ids is not None else p.input_ids
            t_at = p.teacher_at if p.teacher_at is not None else list(range(len(p.input_ids)))
            out.teacher_at.extend(j + len(out.teacher_ids) if j >= 0 else -1 for j in t_at)
            out.teacher_pos.extend(range(len(t_ids)))
            out.teacher_ids.extend(t_ids)
        out.input_ids.extend(p.input_ids)
        out.labels.extend([IGNORE, *p.labels[1:]])
        assert out.position_ids is not None
        out.position_ids.extend(range(len(p.input_ids)))
        out.truncated = out.truncated or p.truncated
    return out


def pack(rows: list[EncodedRow], max_len: int) -> list[EncodedRow]:
    """First-fit decreasing bin packing of ``rows`` (each at most ``max_len`` tokens) into packed rows."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].input_ids))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(rows[i].input_ids)
        slot = next((b for b, r in enumerate(room) if r >= n), None)
        if slot is None:
            bins.append([i])
            room.append(max_len - n)
        else:
            bins[slot].append(i)
            room[slot] -= n
    return [_concat([rows[i] for i in sorted(b)]) for b in bins]
