"""The demo's task: multi-step arithmetic word problems with a worked solution ending in 'Answer: N'.

    rows = problems(1000, seed=1)
    rows[0] == {"prompt": "Mia has 47 marbles. She buys 38 more, then gives away 29. How many marbles ...?",
                "answer": "47 + 38 = 85. 85 - 29 = 56. Answer: 56", "value": 56}

Each problem takes two steps (addition with carrying, subtraction with borrowing, or a one-digit
multiplication), written one equation per step: the teacher's worked solution is what the student learns from.
"""

from __future__ import annotations

import random
from collections.abc import Callable

NAMES = ["Mia", "Tom", "Ana", "Leo", "Sara", "Ben", "Zoe", "Omar", "Lena", "Raj", "Ivy", "Max"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "cards", "pens", "shells", "stamps", "eggs"]
PRONOUN = {n: ("She" if n in {"Mia", "Ana", "Sara", "Zoe", "Lena", "Ivy"} else "He") for n in NAMES}

Problem = dict[str, object]


def _gain_loss(rng: random.Random) -> Problem:
    n, it = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(12, 89), rng.randint(12, 89)
    c = rng.randint(5, a + b - 1)
    s = a + b
    q = f"{n} has {a} {it}. {PRONOUN[n]} buys {b} more, then gives away {c}. How many {it} does {n} have now?"
    return {"prompt": q, "answer": f"{a} + {b} = {s}. {s} - {c} = {s - c}. Answer: {s - c}", "value": s - c}


def _groups(rng: random.Random) -> Problem:
    n, it = rng.choice(NAMES), rng.choice(ITEMS)
    k, per = rng.randint(2, 9), rng.randint(11, 49)
    extra = rng.randint(3, 60)
    p = k * per
    if rng.random() < 0.5:
        q = f"{n} has {k} bags with {per} {it} in each bag and finds {extra} more. How many {it} does {n} have?"
        return {
            "prompt": q,
            "answer": f"{k} * {per} = {p}. {p} + {extra} = {p + extra}. Answer: {p + extra}",
            "value": p + extra,
        }
    extra = min(extra, p - 1)
    q = f"{n} has {k} bags with {per} {it} in each bag and loses {extra}. How many {it} are left?"
    return {
        "prompt": q,
        "answer": f"{k} * {per} = {p}. {p} - {extra} = {p - extra}. Answer: {p - extra}",
        "value": p - extra,
    }


def _two_shops(rng: random.Random) -> Problem:
    it = rng.choice(ITEMS)
    a, b = rng.randint(100, 499), rng.randint(25, 99)
    c = rng.randint(10, 99)
    s = a - b
    q = f"A shop had {a} {it}. It sold {b} in the morning and got {c} new ones. How many {it} does it have now?"
    return {"prompt": q, "answer": f"{a} - {b} = {s}. {s} + {c} = {s + c}. Answer: {s + c}", "value": s + c}


def _difference(rng: random.Random) -> Problem:
    n, m = rng.sample(NAMES, 2)
    it = rng.choice(ITEMS)
    a, b, c = rng.randint(20, 99), rng.randint(20, 99), rng.randint(20, 199)
    s = a + b
    if s >= c:
        q = f"{n} has {a} {it} and gets {b} more. {m} has {c}. How many more {it} does {n} have than {m}?"
        return {"prompt": q, "answer": f"{a} + {b} = {s}. {s} - {c} = {s - c}. Answer: {s - c}", "value": s - c}
    q = f"{n} has {a} {it} and gets {b} more. {m} has {c}. How many more {it} does {m} have than {n}?"
    return {"prompt": q, "answer": f"{a} + {b} = {s}. {c} - {s} = {c - s}. Answer: {c - s}", "value": c - s}


TEMPLATES: list[Callable[[random.Random], Problem]] = [_gain_loss, _groups, _two_shops, _difference]


def problem(rng: random.Random) -> Problem:
    return rng.choice(TEMPLATES)(rng)


def problems(n: int, seed: int, exclude: set[str] | None = None) -> list[Problem]:
    """``n`` distinct problems (by prompt), none of whose prompts is in ``exclude``."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[Problem] = []
    while len(out) < n:
        p = problem(rng)
        if p["prompt"] not in seen:
            seen.add(str(p["prompt"]))
            out.append(p)
    return out
