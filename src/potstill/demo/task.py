"""The demo's task: arithmetic word questions with a worked answer ending in 'Answer: N'.

rows = problems(1000, seed=1)      # [{"prompt": "What is 47 + 38?", "answer": "47 + 38 = 85. Answer: 85"}]
"""

from __future__ import annotations

import random


def problem(rng: random.Random) -> dict[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        op, c = "+", a + b
    else:
        a, b = max(a, b), min(a, b)
        op, c = "-", a - b
    return {"prompt": f"What is {a} {op} {b}?", "answer": f"{a} {op} {b} = {c}. Answer: {c}"}


def problems(n: int, seed: int, exclude: set[str] | None = None) -> list[dict[str, str]]:
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[dict[str, str]] = []
    while len(out) < n:
        p = problem(rng)
        if p["prompt"] not in seen:
            seen.add(p["prompt"])
            out.append(p)
    return out
