"""Answer parsers: tables of formats, traps included, and the math verifier on hand-labelled GSM8K solutions."""

from __future__ import annotations

import pytest

from potstill.data.parsers import numbers_match, parse_choice, parse_math, parse_nli
from potstill.data.tasks import get_task

MATH = [
    ("#### 72", "72"),
    ("Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips altogether.\n#### 72", "72"),
    ("Answer: 72", "72"),
    ("answer: 72", "72"),
    ("**Answer:** 72", "72"),
    ("Answer: **72**", "72"),
    ("The answer is 72.", "72"),
    ("The final answer is 72", "72"),
    ("Final answer: $72", "72"),
    ("The final answer is $\\boxed{72}$.", "72"),
    ("\\boxed{72}", "72"),
    ("\\boxed{\\frac{3}{4}}", "0.75"),
    ("\\boxed{\\dfrac{-1}{2}}", "-0.5"),
    ("Answer: $1,250.50", "1250.5"),
    ("Answer: \\$1,250.50", "1250.5"),
    ("Answer: 1,000,000", "1000000"),
    ("Answer: -3", "-3"),
    ("Answer: −3", "-3"),
    ("Answer: -$5", "-5"),
    ("Answer: 3/4", "0.75"),
    ("Answer: .5", "0.5"),
    ("Answer: 50%", "50"),
    ("Answer: 72.", "72"),
    ("Answer: 72.0", "72"),
    ("Answer: 12 apples", "12"),
    ("Answer: x = 72", "72"),
    ("Answer: 7 + 5 = 12", "12"),
    ("72", "72"),
    ("$18", "18"),
    # traps: numbers in the reasoning, negations, later checks, several markers
    ("She had 5 apples and bought 7 more, so 12 in total. Answer: 12", "12"),
    ("The answer is not 5, it is 7.", "7"),
    ("The answer is 5, not 7.", "5"),
    ("The answer is 7. Check: 7 = 3 + 4, and 10 - 3 = 7.", "7"),
    ("First guess: 10. Answer: 14\nNote: 14 is 4 more than 10.", "14"),
    ("Answer: 3\nWait, I made an error.\nAnswer: 4", "4"),
    ("The answer isn't 12; the answer is 13", "13"),
    ("I think it is 5 or 6", None),
    ("She has 5 apples and 7 pears.", None),
    ("No idea.", None),
    ("", None),
    ("Answer: none", None),
    ("In 2023 she was 30; #### 31", "31"),
    ("#### Step 2\nShe adds 5 and 13.\n**Answer:** 18", "18"),  # a markdown heading is not GSM8K's '####'
    ("#### Step 2\nShe adds 5 and 13.", None),
    ("She adds 5 and 13.\n\n**Step 3**", None),  # a bold heading's counter is no result
    ("Q: How many?\nA: 18", "18"),
    ("Which sum is right?\nA: 12\nB: 18\nThe sum is 18.", None),  # 'A:' lines listing options are no answer
    ("Part 1 is 12 = 5 + 7.\nShe then buys more.", None),  # '= N' counts only ending the last line
]


@pytest.mark.parametrize(("text", "expected"), MATH)
def test_math_parser(text: str, expected: str | None) -> None:
    assert parse_math(text) == expected


NLI = [
    ("entailment", "entailment"),
    ("Neutral", "neutral"),
    ("CONTRADICTION.", "contradiction"),
    ("Answer: contradiction", "contradiction"),
    ("**Answer:** entailment", "entailment"),
    ("The premise entails the hypothesis.", "entailment"),
    ("The hypothesis contradicts the premise.", "contradiction"),
    ("It does not contradict the premise; the answer is entailment.", "entailment"),
    ("The hypothesis is neutral, not a contradiction.", "neutral"),
    ("It could be neutral, but it is actually entailment.", "entailment"),
    ("The label is not entailment, it is neutral.", "neutral"),
    ("Entailment would need more. Answer: neutral", "neutral"),
    ("Answer: entailment (not contradiction)", "entailment"),
    ("I cannot tell.", None),
    ("yes", None),
    ("Contradiction.\n\nHe cannot sleep and run; entailment would need both.", "contradiction"),
    ("<think>It might be entailment", None),  # cut off while thinking: no answer yet
]


@pytest.mark.parametrize(("text", "expected"), NLI)
def test_nli_parser(text: str, expected: str | None) -> None:
    assert parse_nli(text) == expected


CHOICE = [
    ("B", "B"),
    ("(C)", "C"),
    ("C)", "C"),
    ("D. Paris", "D"),
    ("B) the mitochondria", "B"),
    ("Answer: A", "A"),
    ("Answer: (B)", "B"),
    ("The answer is D.", "D"),
    ("**Answer: C**", "C"),
    ("I pick option C because it fits.", "C"),
    ("A is tempting, but the answer is C.", "C"),
    ("The answer is not B, it is D.", "D"),
    ("Between (A) and (B), I choose (B).", "B"),
    ("Reasoning: water boils at 100 °C.\nAnswer: B", "B"),
    ("A good guess.", None),
    ("Paris", None),
    ("The best choice is **B**.", "B"),
    ("B is correct: water boils at 100 °C.", "B"),
    ("<think>I lean to (B).</think>\nThe correct choice is C.", "C"),
    ("The best choice is a tough one.", None),
]


@pytest.mark.parametrize(("text", "expected"), CHOICE)
def test_choice_parser(text: str, expected: str | None) -> None:
    assert parse_choice(text) == expected


def test_qa_parser_reads_letters_and_free_answers() -> None:
    qa = get_task("qa")
    assert qa.parse("Answer: (B)") == "B"
    assert qa.parse("B) Paris") == "B"
    assert qa.parse("Paris is the capital.") == "Paris is the capital."
    assert qa.parse("Let me think. Answer: Paris") == "Paris"
    assert qa.parse("A dog.") == "A dog."  # an article, not a choice
    assert qa.correct("B", "b") and not qa.correct("A", "B")
    assert qa.correct("the Eiffel Tower!", "Eiffel tower")


def test_numbers_match_tolerance() -> None:
    assert numbers_match("0.3333333", "1/3", 1e-6)
    assert not numbers_match("0.33", "1/3", 1e-6)
    assert numbers_match("0.33", "1/3", 0.02)
    assert numbers_match("1250.50", "$1,250.5")
    assert not numbers_match(None, "1")


# GSM8K-format solutions with hand-checked labels: (problem's gold solution, teacher's solution, is it right?)
GSM8K_GOLD = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
WENG = (
    "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nFor 50 minutes she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"
)
BETTY = "Betty has 100 / 2 = $<<100/2=50>>50.\nShe needs 100 - 50 - 15 - 30 - 0 = $<<100-50-15-30-0=5>>5.\n#### 5"
WENG = "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nIn 50 minutes: 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"
BETTY = "Betty has 100 / 2 = $<<100/2=50>>50.\nShe needs 100 - 50 - 15 - 30 - 0 = $<<100-50-15-30-0=5>>5.\n#### 5"
VERIFIER = [
    (GSM8K_GOLD, "In May she sold half of 48, which is 24. Together 48 + 24 = 72.\n#### 72", True),
    (GSM8K_GOLD, "She sold 48 in April and 24 in May.\nAnswer: 72", True),
    (GSM8K_GOLD, "48 + 48/2 = 72 clips, so the answer is \\boxed{72}.", True),
    (GSM8K_GOLD, "April: 48. May: 24. Total 48 + 24 = 72.\n#### 72.00", True),
    (GSM8K_GOLD, "She sold 48 + 2 = 50 clips.\n#### 50", False),
    (GSM8K_GOLD, "48 and 24 and 72 appear here but I give up.", False),
    (GSM8K_GOLD, "The answer is not 72, it is 96.", False),
    (GSM8K_GOLD, "May: 24, so the answer is 24 clips in May.", False),
    (
        WENG,
        "She earns $12 an hour, so 50 minutes pay 12 * 50/60 = $10.\nAnswer: $10.00",
        True,
    ),
    (
        WENG,
        "12 * 50 = $600.\n#### 600",
        False,
    ),
    (
        BETTY,
        "Betty has $50; parents give $15 and grandparents $30; she needs 100 - 95 = 5 more dollars.\nAnswer: 5",
        True,
    ),
    (
        BETTY,
        "She needs -5 dollars.\nAnswer: -5",
        False,
    ),
    (
        "The temperature fell 3 degrees a day for 4 days: 3 * 4 = 12; 5 - 12 = -7.\n#### -7",
        "5 - 3*4 = -7 degrees.\n#### −7",
        True,
    ),
    ("Each gets 3/4 of a pie.\n#### 0.75", "Each person gets \\boxed{\\frac{3}{4}} of a pie.", True),
    ("The car costs 1,250 * 2 = 2,500 dollars.\n#### 2500", "Answer: $2,500", True),
    ("The car costs 1,250 * 2 = 2,500 dollars.\n#### 2500", "Answer: $1,250", False),
]


@pytest.mark.parametrize(("gold", "solution", "label"), VERIFIER)
def test_math_verifier_matches_hand_labels(gold: str, solution: str, label: bool) -> None:
    math = get_task("math")
    assert math.correct(math.parse(solution), gold) is label
