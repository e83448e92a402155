"""Input row formats -> Example (the prompt as chat messages, and the gold answer when the row has one).

    parse_row({"premise": "...", "hypothesis": "...", "label": 0}, "train.jsonl:3", "train", 2)

The first matching key decides the format:
    messages                               chat row; a trailing assistant message is the reference
    prompt (+ answer | completion)         plain prompt
    premise + hypothesis (+ label)         NLI; label: entailment | neutral | contradiction, or 0 | 1 | 2
    document (+ summary)                   summarization
    question (+ context, choices, answer)  QA and GSM8K ("answer" may hold a worked solution ending '#### 72');
                                           choices: a list, the answer its letter, index or text
Rows given as fields become one user message through a template: the row format's own, or ``prompts.template``
(placeholders are the row's fields, ``{choices}`` rendered as lettered lines). An optional "system" field
becomes the system message.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

from ..errors import DataError
from .parsers import LETTERS, NLI_INDEX, NLI_LABELS

ROLES = ("system", "user", "assistant")

TEMPLATES = {
    "prompt": "{prompt}",
    "nli": "Premise: {premise}\nHypothesis: {hypothesis}",
    "summarization": "Document:\n{document}",
    "question": "{question}",
    "question+context": "Context: {context}\n\nQuestion: {question}",
}
CHOICES_SUFFIX = "\n\nChoices:\n{choices}"


@dataclass
class Example:
    id: str
    messages: list[dict[str, str]]
    reference: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_text(self) -> str:
        """The last user message: what the row asks."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "messages": self.messages, "reference": self.reference}


def _text(obj: dict[str, Any], key: str, where: str, required: bool = True) -> str | None:
    val = obj.get(key)
    if val is None or (isinstance(val, str) and not val.strip() and not required):
        if required:
            raise DataError(f"{where}: '{key}' is missing; this row format needs it")
        return None
    if isinstance(val, bool) or not isinstance(val, str | int | float):
        raise DataError(f"{where}: '{key}' must be a string (got {type(val).__name__})")
    if required and not str(val).strip():
        raise DataError(f"{where}: '{key}' is empty")
    return str(val)


def _chat(obj: dict[str, Any], where: str, ex_id: str) -> Example:
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    clean: list[dict[str, str]] = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: messages[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: messages[{i}].role is {m['role']!r}; use one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: messages[{i}].content must be a string")
        if m["role"] == "system" and i != 0:
            raise DataError(f"{where}: messages[{i}] is a system message; only the first may be system")
        clean.append({"role": m["role"], "content": m["content"]})
    reference = None
    if clean[-1]["role"] == "assistant":
        reference = clean.pop()["content"]
    if not any(m["role"] == "user" for m in clean):
        raise DataError(f"{where}: no user message; each row needs at least one {{'role': 'user'}} turn")
    return Example(ex_id, clean, reference, obj)


def _choices(obj: dict[str, Any], where: str) -> list[str] | None:
    ch = obj.get("choices")
    if ch is None:
        return None
    if not isinstance(ch, list) or not 2 <= len(ch) <= len(LETTERS) or not all(isinstance(c, str) for c in ch):
        raise DataError(f"{where}: 'choices' must be a list of 2 to {len(LETTERS)} strings")
    return ch


def _choice_letter(answer: Any, choices: list[str], where: str) -> str:
    letters = LETTERS[: len(choices)]
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return letters[answer]
    s = str(answer).strip()
    if len(s) == 1 and s.upper() in letters:
        return s.upper()
    if s in choices:
        return letters[choices.index(s)]
    raise DataError(
        f"{where}: answer {answer!r} is none of the choices; give its letter ({letters[0]}-{letters[-1]}), "
        "its 0-based index or its exact text"
    )


def _nli_label(label: Any, where: str) -> str | None:
    s = str(label).strip().lower()
    if s == "-1":  # SNLI: annotators did not agree; no gold label
        return None
    if s in NLI_INDEX:
        return NLI_INDEX[s]
    if s in NLI_LABELS:
        return s
    raise DataError(f"{where}: label {label!r} is not entailment, neutral, contradiction (or 0, 1, 2)")


def _fields(obj: dict[str, Any], where: str) -> tuple[str, str, str | None, dict[str, str]]:
    """(format, default template, reference, template fields) of a row given as fields."""
    values = {k: str(v) for k, v in obj.items() if isinstance(v, str | int | float) and not isinstance(v, bool)}
    if "prompt" in obj:
        _text(obj, "prompt", where)
        answer = obj.get("answer", obj.get("completion"))
        if answer is not None and not isinstance(answer, str | int | float):
            raise DataError(f"{where}: 'answer' must be a string or a number")
        return "prompt", TEMPLATES["prompt"], None if answer is None else str(answer), values
    if "premise" in obj or "hypothesis" in obj:
        _text(obj, "premise", where)
        _text(obj, "hypothesis", where)
        ref = None if obj.get("label") is None else _nli_label(obj["label"], where)
        return "nli", TEMPLATES["nli"], ref, values
    if "document" in obj:
        _text(obj, "document", where)
        return "summarization", TEMPLATES["summarization"], _text(obj, "summary", where, required=False), values
    if "question" in obj:
        _text(obj, "question", where)
        context = _text(obj, "context", where, required=False)
        template = TEMPLATES["question+context" if context else "question"]
        answer = obj.get("answer")
        if isinstance(answer, list):  # SQuAD-style lists of accepted answers: the first is the reference
            answer = answer[0] if answer else None
        choices = _choices(obj, where)
        if choices is not None:
            values["choices"] = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
            template += CHOICES_SUFFIX
            ref = None if answer is None else _choice_letter(answer, choices, where)
        else:
            if answer is not None and (isinstance(answer, bool) or not isinstance(answer, str | int | float)):
                raise DataError(f"{where}: 'answer' must be a string, a number or a list of strings")
            ref = None if answer is None else str(answer)
        return "question", template, ref, values
    keys = ", ".join(sorted(obj)[:6]) or "none"
    raise DataError(
        f"{where}: unknown row format (keys: {keys}); expected 'messages', 'prompt', 'question', "
        "'premise'+'hypothesis' or 'document'"
    )


def render(template: str, values: dict[str, str], where: str) -> str:
    names = [n for _, n, _, _ in string.Formatter().parse(template) if n]
    missing = [n for n in names if n not in values]
    if missing:
        have = ", ".join(sorted(values)) or "none"
        raise DataError(
            f"{where}: prompts.template uses {{{missing[0]}}}, which this row lacks (its fields: {have}); "
            "fix the template or the row"
        )
    try:
        return template.format_map(values)
    except (ValueError, IndexError) as exc:
        raise DataError(
            f"{where}: prompts.template is not a valid template ({exc}); use {{field}} placeholders"
        ) from None


def parse_row(obj: Any, where: str, split: str, index: int, template: str | None = None) -> Example:
    """One decoded row -> Example, or DataError naming ``where`` (file:line)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    ex_id = str(obj.get("id", f"{split}-{index}"))
    if "messages" in obj:
        return _chat(obj, where, ex_id)
    _, default, reference, values = _fields(obj, where)
    msgs = [{"role": "user", "content": render(template or default, values, where)}]
    if isinstance(obj.get("system"), str) and obj["system"].strip():
        msgs.insert(0, {"role": "system", "content": obj["system"]})
    return Example(ex_id, msgs, reference, obj)
