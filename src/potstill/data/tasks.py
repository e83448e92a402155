"""The five task types: system prompt (plain and chain-of-thought), answer parser, scorer and answer format.

    task = get_task("math")                     # or task_for(spec): honours prompts.* and chain_of_thought
    task.parse("... so she has 12 apples. Answer: 12")  -> "12"
    task.correct("12", "12.0")                          -> True
    task.label("entailment")                            -> "entailment"   (what `balance` counts; None: no label)

``parse`` returns None when no answer can be extracted (the ``parse`` filter drops such outputs). The parsers
live in data/parsers.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import PromptSpec
from .parsers import (
    NLI_INDEX,
    NLI_LABELS,
    is_choice,
    normalize_text,
    numbers_match,
    parse_marked,
    parse_math,
    parse_nli,
    rationale_of,
    to_number,
)

if TYPE_CHECKING:
    from ..config import JobSpec

__all__ = ["NLI_LABELS", "Task", "get_task", "normalize_text", "task_for", "teacher_messages", "to_number"]

SYSTEM_PROMPTS = {
    "nli": "Decide whether the hypothesis follows from the premise. Answer with one word: entailment, "
    "neutral or contradiction.",
    "qa": "Answer the question concisely and correctly. For a multiple-choice question, answer with the letter of "
    "the right choice.",
    "math": "Solve the problem. Show your steps briefly, then give the final answer on its own line as "
    "'Answer: <number>'.",
    "conversation": "You are a helpful, accurate and friendly assistant.",
    "summarization": "Summarise the document faithfully and concisely, in at most {max_words} words.",
}

COT_PROMPTS = {
    "nli": "Decide whether the hypothesis follows from the premise. Reason step by step in a few sentences, then "
    "give the final line as 'Answer: entailment', 'Answer: neutral' or 'Answer: contradiction'.",
    "qa": "Answer the question. Reason step by step in a few sentences, then give the final line as "
    "'Answer: <answer>' (for a multiple-choice question, the letter of the right choice).",
    "math": "Solve the problem step by step, showing each calculation, then give the final answer on its own line "
    "as 'Answer: <number>'.",
    "conversation": "You are a helpful, accurate and friendly assistant. First think briefly about what the user "
    "needs, then write 'Reply:' followed by your reply to the user.",
    "summarization": "First list the document's key points, then write 'Summary:' followed by a faithful summary "
    "of at most {max_words} words.",
}

MARKERS = {"nli": "Answer:", "qa": "Answer:", "math": "Answer:", "conversation": "Reply:", "summarization": "Summary:"}


# -------------------------------------------------------------------------------------------- per task
def parse_qa(text: str) -> str | None:
    """A choice letter when the answer is one ('B', '(B)', 'B) Paris'), else the answer text."""
    span = parse_marked(text)
    if span is None:
        return None
    first = span.splitlines()[0].strip().strip("*")
    m = re.fullmatch(r"\(?([A-J])\)?\.?", first) or re.match(r"\(?([A-J])[).:]\s", first)
    return m.group(1) if m else span


def correct_math(pred: str | None, ref: str | None, rel_tol: float = 1e-6) -> bool:
    if pred is None or ref is None:
        return False
    return numbers_match(pred, parse_math(ref) or ref, rel_tol)


def correct_text(pred: str | None, ref: str | None) -> bool:
    if pred is None or ref is None:
        return False
    if is_choice(ref.strip().upper()) and len(ref.strip()) == 1:  # letters: SQuAD normalisation drops "A"
        return pred.strip().upper() == ref.strip().upper()
    return normalize_text(pred) == normalize_text(ref)


def nli_gold(ref: str) -> str:
    """A gold NLI label from a label word, a sentence holding one, or an SNLI/MNLI id (0/1/2)."""
    r = ref.strip().lower()
    return NLI_INDEX.get(r) or (r if r in NLI_LABELS else parse_nli(ref) or r)


def correct_nli(pred: str | None, ref: str | None) -> bool:
    return pred is not None and ref is not None and pred == nli_gold(ref)


def _format_math(ans: str) -> str:
    return f"Answer: {ans}"


@dataclass(frozen=True)
class Task:
    name: str
    system_prompt: str
    parse: Callable[[str], str | None]
    correct: Callable[[str | None, str | None], bool]
    marker: str = "Answer:"
    format_answer: Callable[[str], str] = str
    chain_of_thought: bool = False

    def reference_answer(self, reference: str | None) -> str | None:
        """The gold answer as the parser would read it (math references may hold a worked solution)."""
        if reference is None:
            return None
        if self.name == "nli":
            return nli_gold(reference)
        if self.name == "qa":
            return reference.strip()
        return self.parse(reference) or reference.strip()

    def label(self, answer: str | None) -> str | None:
        """The class an answer belongs to, for `balance`: NLI labels and choice letters; None for free answers."""
        if answer is None:
            return None
        if self.name == "nli":
            return answer if answer in NLI_LABELS else None
        if self.name == "qa" and is_choice(answer):
            return answer
        return None

    def rationale(self, output: str) -> str:
        """The reasoning before the final answer ('' when the output has no answer marker)."""
        marker = "####" if self.name == "math" and "####" in output else self.marker
        return rationale_of(output, marker)

    def same_answer(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None:
            return False
        if self.name == "math":
            return numbers_match(a, b)
        return self.answer_key(a) == self.answer_key(b)

    def answer_key(self, answer: str) -> str:
        """A hashable spelling under which equal answers coincide (self-consistency votes)."""
        if self.name == "math":
            v = to_number(answer)
            return answer if v is None else f"{v:.6g}"
        if self.name == "nli" or is_choice(answer):
            return answer
        return normalize_text(answer)


def get_task(task_type: str, prompts: PromptSpec | None = None, chain_of_thought: bool = False) -> Task:
    prompts = prompts or PromptSpec()
    table = COT_PROMPTS if chain_of_thought else SYSTEM_PROMPTS
    if task_type not in table:
        raise ValueError(f"unknown task type {task_type!r}")
    system = prompts.system or table[task_type].replace("{max_words}", str(prompts.max_words))
    marker = MARKERS[task_type]
    common = {"marker": marker, "chain_of_thought": chain_of_thought}
    match task_type:
        case "math":
            return Task("math", system, parse_math, correct_math, format_answer=_format_math, **common)
        case "nli":
            return Task("nli", system, parse_nli, correct_nli, **common)
        case "qa":
            return Task("qa", system, parse_qa, correct_text, **common)
    return Task(task_type, system, lambda text: parse_marked(text, marker), correct_text, **common)


def task_for(spec: JobSpec) -> Task:
    """The job's task: its prompts, and the chain-of-thought variant when generation.chain_of_thought is on."""
    return get_task(spec.task_type, spec.prompts, spec.generation.chain_of_thought)


def teacher_messages(messages: list[dict[str, str]], task: Task) -> list[dict[str, str]]:
    """The request sent to the teacher: the row's own system message, else the task's."""
    if messages and messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": task.system_prompt}, *messages]
