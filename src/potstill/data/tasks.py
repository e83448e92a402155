"""The five task types: system prompt (plain and chain-of-thought), answer parser, scorer and answer format.

    task = get_task("math")                     # or task_for(spec): honours prompts.* and chain_of_thought
    task.parse("... so she has 12 apples. Answer: 12")  -> "12"
    task.correct("12", "12.0")                          -> True
    task.label("entailment")                            -> "entailment"   (what `balance` counts; None: no label)
    get_task("math", patterns=[r"^A: *(.+)$"]).parse("5 + 13 = 18\nA: 18")  -> "18"

``parse`` returns None when no answer can be extracted (the ``parse`` filter drops such outputs). The parsers
live in data/parsers.py. A job can name where its answers are (``Extraction``: ``filters: [{parse: {pattern}}]``
and ``prompts.answer_marker``); every reader of answers goes through ``task.parse``, so validation, answer_check,
self-consistency votes and evaluation all use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import PromptSpec
from ..filter_spec import ParseFilter, filter_steps
from .parsers import (
    NLI_INDEX,
    NLI_LABELS,
    answer_span,
    final_text,
    is_choice,
    nli_in_span,
    normalize_text,
    number_in_span,
    numbers_match,
    parse_marked,
    parse_math,
    parse_nli,
    rationale_of,
    to_number,
)

if TYPE_CHECKING:
    from ..config import JobSpec

__all__ = [
    "NLI_LABELS",
    "Extraction",
    "Task",
    "get_task",
    "normalize_text",
    "task_for",
    "teacher_messages",
    "to_number",
]

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
def _letter_lead(span: str) -> str | None:
    """The choice letter a span opens with: 'B', '(B)', 'B.', 'B) Paris', 'B: Paris'; never the article 'A dog'."""
    first = span.strip().splitlines()[0].strip().strip("*") if span.strip() else ""
    m = re.fullmatch(r"\(?([A-J])\)?\.?", first) or re.match(r"\(?([A-J])[).:]\s", first)
    return m.group(1) if m else None


def parse_qa(text: str) -> str | None:
    """A choice letter when the answer is one ('B', '(B)', 'B) Paris', 'The answer is B.'), else the answer text:
    after the last 'Answer:', else after another answer marker ('the answer is Paris.'), else the whole text."""
    text = final_text(text).replace("**", "").strip()
    if "answer:" in text.lower():
        span = parse_marked(text)
    elif (lead := _letter_lead(text)) is not None:  # 'A: Paris' is choice A, not a Q/A-style 'A:' marker
        return lead
    else:
        span = answer_span(text) or text
    if not span:
        return None
    return _letter_lead(span) or span


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


Parser = Callable[[str], str | None]


@dataclass(frozen=True)
class Extraction:
    """Where a job says its answers are; tried before the task's own parser.

    patterns  regular expressions with one group each (``filters: [{parse: {pattern: ...}}]``), applied to the
              whole output with re.MULTILINE (``^`` and ``$`` match at every line; ``.`` stays on one line unless
              the pattern says ``(?s)``); the first pattern that matches wins, its last match's group is the span
    marker    ``prompts.answer_marker``: the span is the text after its last occurrence (case-insensitive; a
              marker starting with a letter never matches inside a word, so 'A:' does not match 'DATA:')

    The span then goes through the task's normaliser (math: the number on its first line, nli: its first label,
    qa: a choice letter or the text, free-text tasks: the text). An output neither finds is read by the task's
    own parser, so answers in the default format (a student's after ``cot: drop``, say) still count.
    """

    patterns: tuple[str, ...] = ()
    marker: str | None = None

    def find(self, text: str) -> tuple[int, str] | None:
        """(where the answer's match or marker starts, the answer span), or None when neither is in ``text``."""
        for pattern in self.patterns:
            found = list(re.finditer(pattern, text, re.MULTILINE))
            if found:
                return found[-1].start(), found[-1].group(1) or ""
        if self.marker:
            edge = r"(?<!\w)" if self.marker[0].isalnum() else ""
            found = list(re.finditer(edge + re.escape(self.marker), text, re.IGNORECASE))
            if found:
                return found[-1].start(), text[found[-1].end() :]
        return None

    def reader(self, read_span: Parser, fallback: Parser) -> Parser:
        """A parser: the normalised span where this extraction finds one, else ``fallback``'s reading."""

        def parse(text: str) -> str | None:
            found = self.find(text)
            return fallback(text) if found is None else read_span(found[1])

        return parse


def _free_text(span: str) -> str | None:
    return span.strip() or None


@dataclass(frozen=True)
class Task:
    name: str
    system_prompt: str
    parse: Parser
    correct: Callable[[str | None, str | None], bool]
    marker: str = "Answer:"
    format_answer: Callable[[str], str] = str
    chain_of_thought: bool = False
    extraction: Extraction | None = None

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
        found = self.extraction.find(output) if self.extraction is not None else None
        if found is not None:
            return output[: found[0]].strip()
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


def get_task(
    task_type: str,
    prompts: PromptSpec | None = None,
    chain_of_thought: bool = False,
    patterns: Sequence[str] = (),
) -> Task:
    """The task; ``prompts.answer_marker`` and ``patterns`` (the parse filters' own) name where answers are."""
    prompts = prompts or PromptSpec()
    table = COT_PROMPTS if chain_of_thought else SYSTEM_PROMPTS
    if task_type not in table:
        raise ValueError(f"unknown task type {task_type!r}")
    system = prompts.system or table[task_type].replace("{max_words}", str(prompts.max_words))
    default_marker = MARKERS[task_type]
    marker = prompts.answer_marker or default_marker
    extraction = Extraction(tuple(patterns), prompts.answer_marker) if patterns or prompts.answer_marker else None
    base: Parser
    read_span: Parser
    match task_type:
        case "math":
            base, read_span, correct = parse_math, number_in_span, correct_math
        case "nli":
            base, read_span, correct = parse_nli, nli_in_span, correct_nli
        case "qa":
            base, read_span, correct = parse_qa, parse_qa, correct_text
        case _:
            base, read_span, correct = (lambda text: parse_marked(text, default_marker)), _free_text, correct_text
    parse = base if extraction is None else extraction.reader(read_span, base)
    fmt: Callable[[str], str] = (lambda ans: f"{marker} {ans}") if task_type == "math" else str
    return Task(task_type, system, parse, correct, marker, fmt, chain_of_thought, extraction)


def task_for(spec: JobSpec) -> Task:
    """The job's task: its prompts, the chain-of-thought variant when generation.chain_of_thought is on, and the
    answer extraction the job names (prompts.answer_marker, the parse filters' patterns)."""
    patterns = [o.pattern for n, o in filter_steps(spec.filters) if isinstance(o, ParseFilter) and o.pattern]
    return get_task(spec.task_type, spec.prompts, spec.generation.chain_of_thought, patterns)


def teacher_messages(messages: list[dict[str, str]], task: Task) -> list[dict[str, str]]:
    """The request sent to the teacher: the row's own system message, else the task's."""
    if messages and messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": task.system_prompt}, *messages]
