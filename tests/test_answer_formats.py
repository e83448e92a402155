"""Teacher outputs in the answer styles of real model families, read by each task's default parser.

Every row is hand-written in the convention its comment names; the value is the exact answer the task must read
(None: the output sets no answer apart, so nothing in its reasoning may be taken for one).
"""

from __future__ import annotations

import pytest

from potstill.data.tasks import get_task

MATH = [
    # GSM8K: the worked solution, calculator annotations, '#### N'
    ("Janet has 5 apples and buys 13 more.\n5 + 13 = <<5+13=18>>18\n#### 18", "18"),
    # MATH / Qwen2.5-Math: the result boxed in the last sentence
    ("We add: $5 + 13 = 18$.\n\nThe final answer is $\\boxed{18}$.", "18"),
    # Qwen2.5 chat: a bold 'Final Answer' heading over a display-math box
    ("5 + 13 = 18\n\n**Final Answer**\n\\[\n\\boxed{18}\n\\]", "18"),
    # Minerva / Llama-3 (MATH few-shot): 'Final Answer: The final answer is $N$. I hope it is correct.'
    ("Adding gives $5+13$.\nFinal Answer: The final answer is $18$. I hope it is correct.", "18"),
    ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "0.75"),
    # Llama-3.1 instruct (math): 'Therefore, the final answer is: $\\boxed{N}$. I hope it is correct.'
    ("## Step 1: Add\n5 + 13 = 18\n\nTherefore, the final answer is: $\\boxed{18}$. I hope it is correct.", "18"),
    # MetaMath / WizardMath: 'The answer is: N'
    ("Janet has 5 + 13 = 18 apples.\nThe answer is: 18", "18"),
    # DeepSeek-R1: a <think> block (with a discarded boxed guess), then the answer
    ("<think>\nFirst try: \\boxed{17}? That misses one.\n</think>\n\n**Answer:** 18", "18"),
    ("<think>\n5 + 13 is 18.\n</think>\n\nJanet has 18 apples.\n\n\\boxed{18}", "18"),
    # DeepSeek-R1 cut off while thinking: no final answer yet, whatever the thought says
    ("<think>\n5 + 13 = 18, so the answer is 18... wait, let me re-check the", None),
    # Mistral / Phi markdown: the result alone in bold on the last line
    ("Janet starts with 5 apples.\nShe buys 13 more: 5 + 13 = 18.\n\n**18**", "18"),
    ("The temperature falls by 3 * 4 = 12 degrees.\n\n**−7**", "-7"),
    # Mistral: the marker inside the bold
    ("5 + 13 = 18\n\n**Answer: 18**", "18"),
    # GPT-4: '**Answer:** N' and '**Final answer:** ...'
    ("1. Start: 5\n2. Buy 13 more: 5 + 13 = 18\n\n**Answer:** 18 apples", "18"),
    ("**Final answer:** $1,250.50", "1250.5"),
    # GPT-4o: the closing sentence puts the result in bold
    ("She starts with 5 and buys 13.\n\nSo, Janet has **18 apples**.", "18"),
    # Claude: 'The answer is N.' and 'N is the answer.'
    ("Janet starts with 5 and buys 13 more, so 5 + 13 = 18.\n\nThe answer is 18.", "18"),
    ("Adding 5 and 13 gives us the total. So **18** is the answer.", "18"),
    ("5 + 13 = 18, so 18 is the answer.", "18"),
    # Gemma: the whole concluding sentence in bold
    ("Janet has 5 + 13 apples.\n\n**Therefore, the answer is 18.**", "18"),
    # o1 / GPT-4o markdown headings ('####' is a heading here, not GSM8K's marker)
    ("#### Step 1\n5 + 13 = 18\n\n#### Final Answer\nJanet has **18** apples.", "18"),
    ("### Final Answer\n\n18", "18"),
    # Q/A few-shot completion (base Llama, Falcon): 'A: N' opening a line
    ("Q: Janet has 5 apples and buys 13 more. How many does she have?\nA: 18", "18"),
    ("She had 5 and got 13 more.\nA: 18", "18"),
    # base-model equation style: the last line ends '= N'
    ("5 apples + 13 apples\n= 18", "18"),
    ("Total = 5 + 13 = 18 apples", "18"),
    # bare answers: LaTeX inline, \(\boxed{}\), currency
    ("$18$", "18"),
    ("\\(\\boxed{18}\\)", "18"),
    ("The answer is $18.", "18"),
    ("Answer: **18**", "18"),
    ("Final answer: 18", "18"),
    ("Therefore, the answer is 18.", "18"),
    # traps: numbers in the reasoning with no marker are never the answer
    ("so the total is 18 apples.", None),
    ("5 + 13 = 18 apples, then she gave 3 away.", None),
    ("**Step 1:** 5 + 13 = 18\n**Step 2:** 18 - 3 = 15\nNow she gives some away.", None),
]

NLI = [
    # Mistral / Phi: the label alone, in bold
    ("**Entailment**", "entailment"),
    # structured output: 'Label: ...'
    ("Label: contradiction", "contradiction"),
    # Llama-2 chat: a sentence naming the relation
    ("The relationship is neutral.", "neutral"),
    # GPT-4: the bold verdict first, an explanation that names other labels after it
    ("**Neutral**\n\nThe premise says nothing about his mood; it could entail or contradict the claim.", "neutral"),
    # DeepSeek-R1: the thought weighs a label, the answer after </think> is another
    ("<think>\nAnswer: neutral? No: the premise says exactly this.\n</think>\n\n**Entailment**", "entailment"),
    # FLAN-T5: the bare label
    ("contradiction", "contradiction"),
    # Llama-3 instruct: 'The answer is: ...'
    ("The premise states he is asleep.\nThe answer is: contradiction.", "contradiction"),
    # Claude: reasoning, then 'so the relationship is ...'
    ("The hypothesis follows directly from the premise, so the relationship is entailment.", "entailment"),
    # GPT-4: 'Final answer: **...**'
    ("A man can't be both sitting and running.\n\nFinal answer: **Contradiction**", "contradiction"),
]

CHOICE = [
    # MMLU answer-only: the letter in parentheses
    ("(C)", "C"),
    # MMLU 5-shot CoT (Llama-3 evals): 'Answer: C' after the reasoning
    ("Water boils at 100 °C at sea level.\nAnswer: C", "C"),
    # Mistral / Phi: the bold letter with its period, or with the option's text
    ("**C.**", "C"),
    ("**C. Paris**\n\nParis has been the capital of France since 508.", "C"),
    # GPT-4: '**Answer:** C'
    ("Only Paris is a capital.\n\n**Answer:** C", "C"),
    # Claude: 'The answer is C.'
    ("Rome and Madrid are other capitals, so the answer is C.", "C"),
    # Llama-3 MMLU CoT: 'Therefore, the answer is (C).'
    ("Paris is the capital of France. Therefore, the answer is (C).", "C"),
    # DeepSeek-R1: the thought weighs another letter
    ("<think>\nAnswer: B? No, B is a trap.\n</think>\n\n**C**", "C"),
    # free-text QA: the span after the marker, bold removed
    ("The capital of France is well known. The answer is Paris.", "Paris."),
    ("**Answer:** **Paris**", "Paris"),
]


@pytest.mark.parametrize(("text", "expected"), MATH)
def test_math_answers_of_real_models(text: str, expected: str | None) -> None:
    assert get_task("math").parse(text) == expected


@pytest.mark.parametrize(("text", "expected"), NLI)
def test_nli_answers_of_real_models(text: str, expected: str) -> None:
    assert get_task("nli").parse(text) == expected


@pytest.mark.parametrize(("text", "expected"), CHOICE)
def test_multiple_choice_answers_of_real_models(text: str, expected: str) -> None:
    assert get_task("qa").parse(text) == expected


def test_the_table_is_large_and_says_something() -> None:
    assert len(MATH) + len(NLI) + len(CHOICE) >= 40
    assert sum(v is None for _, v in MATH) >= 3  # traps included


def test_reasoning_models_reply_after_the_thought() -> None:
    convo = get_task("conversation")
    assert convo.parse("<think>\nThey greet me; be brief.\n</think>\n\nHello! How can I help?") == (
        "Hello! How can I help?"
    )
    summary = get_task("summarization", chain_of_thought=True)
    assert summary.parse("<think>Key points: a, b. Summary: draft</think>\nSummary: The final one.") == (
        "The final one."
    )
