"""What the student learns from a (possibly reasoned) teacher output: generation.cot = keep | drop | multitask.

    targets(task, messages, output, answer, "drop")   -> [(messages, "Answer: 12")]
    student_messages(messages, "multitask")           -> the prompt with the '[answer] ' prefix the student saw

keep       the whole output: reasoning and final answer (one training row)
drop       the final answer only, in the task's answer format (one row; the rationale is thrown away)
multitask  distilling step-by-step: two rows from one output, '[answer] <prompt>' -> answer and
           '[rationale] <prompt>' -> the reasoning; at evaluation the student is asked with the '[answer] ' prefix
"""

from __future__ import annotations

from .tasks import Task

ANSWER_PREFIX = "[answer] "
RATIONALE_PREFIX = "[rationale] "

Messages = list[dict[str, str]]


def with_prefix(messages: Messages, prefix: str) -> Messages:
    """The conversation with ``prefix`` put before the last user message."""
    out = [dict(m) for m in messages]
    last = max(i for i, m in enumerate(out) if m["role"] == "user")
    out[last]["content"] = prefix + out[last]["content"]
    return out


def student_messages(messages: Messages, cot: str) -> Messages:
    """The prompt as the student sees it at evaluation (and in serving)."""
    return with_prefix(messages, ANSWER_PREFIX) if cot == "multitask" else messages


def answer_only(task: Task, text: str) -> str:
    answer = task.parse(text)
    return text if answer is None else task.format_answer(answer)


def targets(task: Task, messages: Messages, output: str, answer: str | None, cot: str) -> list[tuple[Messages, str]]:
    """(prompt messages, assistant target) pairs for one kept output; earlier assistant turns follow ``cot`` too."""
    if cot == "keep" or answer is None:
        return [(messages, output)]
    history = [{**m, "content": answer_only(task, m["content"])} if m["role"] == "assistant" else m for m in messages]
    final = task.format_answer(answer)
    if cot == "drop":
        return [(history, final)]
    out = [(with_prefix(history, ANSWER_PREFIX), final)]
    rationale = task.rationale(output)
    if rationale:
        out.append((with_prefix(history, RATIONALE_PREFIX), rationale))
    return out
