"""Pareto fronts, as pure functions on plain numbers (the report's plots and the two-objective winner use them).

    pareto_front([(0.9, 12.0), (0.8, 5.0), (0.7, 9.0)], ("max", "min"))   -> [0, 1]
    best_on_front(points, senses)                                         -> the front's best by the first value

A point dominates another when it is at least as good in every coordinate and better in one; the front is the
points nothing dominates (equal points are all on it).
"""

from __future__ import annotations

from collections.abc import Sequence

Sense = str  # "max" | "min"


def _better_or_equal(a: float, b: float, sense: Sense) -> bool:
    return a >= b if sense == "max" else a <= b


def dominates(a: Sequence[float], b: Sequence[float], senses: Sequence[Sense]) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every coordinate and strictly better in one."""
    if len(a) != len(senses) or len(b) != len(senses):
        raise ValueError(f"points need {len(senses)} coordinates (got {len(a)} and {len(b)})")
    if any(s not in ("max", "min") for s in senses):
        raise ValueError(f"senses are 'max' or 'min' (got {list(senses)})")
    return all(_better_or_equal(x, y, s) for x, y, s in zip(a, b, senses, strict=True)) and any(
        x != y for x, y in zip(a, b, strict=True)
    )


def pareto_front(points: Sequence[Sequence[float]], senses: Sequence[Sense]) -> list[int]:
    """Indices (ascending) of the points that no other point dominates."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p, senses) for q in points)]


def best_on_front(points: Sequence[Sequence[float]], senses: Sequence[Sense]) -> int | None:
    """The front's best point by its first coordinate (ties: the better second, then the earlier); None when
    there are no points."""
    front = pareto_front(points, senses)
    if not front:
        return None

    def key(i: int) -> tuple[float, ...]:
        return (*(p if s == "max" else -p for p, s in zip(points[i], senses, strict=True)), -i)

    return max(front, key=key)
