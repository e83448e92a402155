"""The five task types: default system prompt, answer parser and scorer for each.

    task = get_task("math")
    task.parse("... so she has 12 apples. Answer: 12")  -> "12"
    task.correct("12", "12.0")                          -> True

``parse`` returns None when no answer can be extracted (the ``parse`` filter drops such outputs).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass

from ..config import PromptSpec

SYSTEM_PROMPTS = {
    "nli": "Decide whether the hypothesis follows from the premise. Answer with one word: entailment, "
    "neutral or contradiction.",
    "qa": "Answer the question concisely and correctly.",
    "math": "Solve the problem. Show your steps briefly, then give the final answer on its own line as "
    "'Answer: <number>'.",
    "conversation": "You are a helpful, accurate and friendly assistant.",
    "summarization": "Summarise the document faithfully and concisely.",
}

NLI_LABELS = ("entailment", "neutral", "contradiction")

_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?"


def normalize_text(s: str) -> str:
    """SQuAD-style: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def to_number(s: str) -> float | None:
    s = s.strip().replace("$", "").replace(",", "")
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return float(num) / float(den)
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def parse_math(text: str) -> str | None:
    for pat in (rf"Answer:\s*({_NUM})", rf"####\s*({_NUM})", rf"\\boxed\{{\s*({_NUM})\s*\}}"):
        found = re.findall(pat, text)
        if found:
            return _canon_number(found[-1])
    return None


def _canon_number(s: str) -> str:
    v = to_number(s)
    if v is None:
        return s
    return str(int(v)) if v == int(v) else repr(v)


def parse_nli(text: str) -> str | None:
    words = re.findall(r"[a-z]+", text.lower())
    hits = [w for w in words if w in NLI_LABELS]
    return hits[-1] if hits else None


def parse_free(text: str) -> str | None:
    out = text.strip()
    return out or None


def correct_math(pred: str | None, ref: str | None) -> bool:
    if pred is None or ref is None:
        return False
    ref_ans = parse_math(ref) or ref
    a, b = to_number(pred), to_number(ref_ans)
    return a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))


def correct_text(pred: str | None, ref: str | None) -> bool:
    return pred is not None and ref is not None and normalize_text(pred) == normalize_text(ref)


def correct_nli(pred: str | None, ref: str | None) -> bool:
    return pred is not None and ref is not None and pred == (parse_nli(ref) or ref.strip().lower())


@dataclass(frozen=True)
class Task:
    name: str
    system_prompt: str
    parse: Callable[[str], str | None]
    correct: Callable[[str | None, str | None], bool]

    def reference_answer(self, reference: str | None) -> str | None:
        """The gold answer as the parser would read it (math references may hold a worked solution)."""
        if reference is None:
            return None
        return self.parse(reference) or reference.strip()


def get_task(task_type: str, prompts: PromptSpec | None = None) -> Task:
    system = (prompts.system if prompts and prompts.system else None) or SYSTEM_PROMPTS[task_type]
    match task_type:
        case "math":
            return Task("math", system, parse_math, correct_math)
        case "nli":
            return Task("nli", system, parse_nli, correct_nli)
        case "qa" | "conversation" | "summarization":
            return Task(task_type, system, parse_free, correct_text)
    raise ValueError(f"unknown task type {task_type!r}")


def teacher_messages(messages: list[dict[str, str]], task: Task) -> list[dict[str, str]]:
    """The request sent to the teacher: the row's own system message, else the task's."""
    if messages and messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": task.system_prompt}, *messages]
