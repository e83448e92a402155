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

SYSTEM = "Solve step by step. End with 'Answer: N'."
SAMPLE_SEED = 999  # the fixed held-out sample a teacher's accuracy is measured on


def chat(row: Problem, with_answer: bool = True) -> list[dict[str, str]]:
    """The chat a model is trained on (with_answer) or asked (without): system, question, worked answer."""
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": str(row["prompt"])}]
    if with_answer:
        msgs.append({"role": "assistant", "content": str(row["answer"])})
    return msgs


def _gain_loss(rng: random.Random) -> Problem:
    n, it = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(12, 89), rng.randint(12, 89)
    c = rng.randint(5, a + b - 1)
    s = a + b
    q = f"{n} has {a} {it}. {PRONOUN[n]} buys {b} more, then gives away {c}. How many {it} does {n} have now?"
    return {"prompt": q, "answer": worked((col_add(a, b), s), (col_sub(s, c), s - c)), "value": s - c}


def _groups(rng: random.Random) -> Problem:
    n, it = rng.choice(NAMES), rng.choice(ITEMS)
    k, per = rng.randint(2, 9), rng.randint(11, 49)
    extra = rng.randint(3, 60)
    p = k * per
    if rng.random() < 0.5:
        q = f"{n} has {k} bags with {per} {it} in each bag and finds {extra} more. How many {it} does {n} have?"
        return {
            "prompt": q,
            "answer": worked((col_mul(k, per), p), (col_add(p, extra), p + extra)),
            "value": p + extra,
        }
    extra = min(extra, p - 1)
    q = f"{n} has {k} bags with {per} {it} in each bag and loses {extra}. How many {it} are left?"
    return {
        "prompt": q,
        "answer": worked((col_mul(k, per), p), (col_sub(p, extra), p - extra)),
        "value": p - extra,
    }


def _two_shops(rng: random.Random) -> Problem:
    it = rng.choice(ITEMS)
    a, b = rng.randint(100, 499), rng.randint(25, 99)
    c = rng.randint(10, 99)
    s = a - b
    q = f"A shop had {a} {it}. It sold {b} in the morning and got {c} new ones. How many {it} does it have now?"
    return {"prompt": q, "answer": worked((col_sub(a, b), s), (col_add(s, c), s + c)), "value": s + c}


def _difference(rng: random.Random) -> Problem:
    n, m = rng.sample(NAMES, 2)
    it = rng.choice(ITEMS)
    a, b, c = rng.randint(20, 99), rng.randint(20, 99), rng.randint(20, 199)
    s = a + b
    if s >= c:
        q = f"{n} has {a} {it} and gets {b} more. {m} has {c}. How many more {it} does {n} have than {m}?"
        return {"prompt": q, "answer": worked((col_add(a, b), s), (col_sub(s, c), s - c)), "value": s - c}
    q = f"{n} has {a} {it} and gets {b} more. {m} has {c}. How many more {it} does {m} have than {n}?"
    return {"prompt": q, "answer": worked((col_add(a, b), s), (col_sub(c, s), c - s)), "value": c - s}


def _digits(n: int) -> list[int]:
    return [int(c) for c in reversed(str(n))]  # least significant first


def col_add(a: int, b: int) -> str:
    """Addition worked column by column: '47 + 38: 7 + 8 = 15, 4 + 3 + 1 = 8'."""
    da, db = _digits(a), _digits(b)
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        terms = [d[i] for d in (da, db) if i < len(d)] + ([1] if carry else [])
        s = sum(terms)
        if len(terms) > 1:
            steps.append(" + ".join(map(str, terms)) + f" = {s}")
        carry = s // 10
    return f"{a} + {b}: " + ", ".join(steps)


def col_sub(a: int, b: int) -> str:
    """Subtraction (a >= b) with borrowing: '85 - 29: 15 - 9 = 6, 8 - 1 - 2 = 5'."""
    da, db = _digits(a), _digits(b)
    steps, borrow = [], 0
    for i, d in enumerate(da):
        sub = db[i] if i < len(db) else 0
        out = 1 if d - borrow < sub else 0
        top = d + 10 * out
        terms = [top] + ([1] if borrow else []) + ([sub] if i < len(db) else [])
        if len(terms) > 1:
            steps.append(" - ".join(map(str, terms)) + f" = {top - borrow - sub}")
        borrow = out
    return f"{a} - {b}: " + ", ".join(steps)


def col_mul(k: int, n: int) -> str:
    """One-digit times several digits: '3 * 27: 3 * 7 = 21, 3 * 2 + 2 = 8'."""
    steps, carry = [], 0
    for d in _digits(n):
        p = k * d + carry
        steps.append(f"{k} * {d}" + (f" + {carry}" if carry else "") + f" = {p}")
        carry = p // 10
    return f"{k} * {n}: " + ", ".join(steps)


def column_add(a: int, b: int) -> str:
    return f"{col_add(a, b)}. Answer: {a + b}"


def column_sub(a: int, b: int) -> str:
    return f"{col_sub(a, b)}. Answer: {a - b}"


def worked(*steps: tuple[str, int]) -> str:
    """Several worked steps, each ending in its result, then the final answer."""
    return " ".join(f"{text}, so {value}." for text, value in steps) + f" Answer: {steps[-1][1]}"


def _one_step(rng: random.Random) -> Problem:
    n, it = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        q = f"{n} has {a} {it} and buys {b} more. How many {it} does {n} have?"
        return {"prompt": q, "answer": column_add(a, b), "value": a + b}
    a, b = max(a, b), min(a, b)
    q = f"{n} has {a} {it} and gives away {b}. How many {it} are left?"
    return {"prompt": q, "answer": column_sub(a, b), "value": a - b}


TEMPLATES: list[Callable[[random.Random], Problem]] = [_gain_loss, _groups, _two_shops, _difference]


def problem(rng: random.Random, steps: int = 2) -> Problem:
    return _one_step(rng) if steps == 1 else rng.choice(TEMPLATES)(rng)


def problems(n: int, seed: int, exclude: set[str] | None = None, steps: int = 2) -> list[Problem]:
    """``n`` distinct problems (by prompt), none of whose prompts is in ``exclude``; ``steps``: 1 or 2."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[Problem] = []
    while len(out) < n:
        p = problem(rng, steps)
        if p["prompt"] not in seen:
            seen.add(str(p["prompt"]))
            out.append(p)
    return out
