"""Each task type end to end on a tiny job: a tiny teacher that memorised the five tasks, a tiny student.

The teacher learns, under short per-task system prompts, to answer NLI with a one-line reason then the label,
multiple-choice questions with the letter, arithmetic with 'Answer: N', documents with their first sentence,
and two-turn conversations. Each job runs generate -> validate -> train -> evaluate -> report in-process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import QUESTIONS, write_jsonl

from potstill.config import validate_spec
from potstill.pipeline import run_pipeline

NLI = [
    ("A dog runs in the park.", "An animal is outside.", "entailment", "Both say it is outside."),
    ("A man sleeps on a sofa.", "A man is awake.", "contradiction", "Sleeping is not awake."),
    ("A girl reads a book.", "The girl likes school.", "neutral", "School is not said."),
    ("Two cats eat fish.", "Animals are eating.", "entailment", "Cats are animals."),
    ("The car is red.", "The car is blue.", "contradiction", "Red is not blue."),
    ("A boy plays music.", "The boy is famous.", "neutral", "Fame is not said."),
]
MC = [
    ("Which is a fruit?", ["stone", "apple", "car"], 1),
    ("Which animal barks?", ["dog", "fish", "tree"], 0),
    ("What is frozen water?", ["fire", "sand", "ice"], 2),
    ("Which one flies?", ["bird", "rock", "shoe"], 0),
    ("What do cows drink?", ["oil", "water", "ink"], 1),
    ("Which is a color?", ["run", "blue", "ten"], 1),
]
DOCS = [
    ("The river flooded the town. Many homes were damaged in the night.", "The river flooded the town."),
    ("A new school opened today. Children sang songs at the gate.", "A new school opened today."),
    ("The team won the final. Fans danced in the streets until dawn.", "The team won the final."),
    ("Prices rose this month. Bread and milk cost more than before.", "Prices rose this month."),
    ("A storm hit the coast. Boats stayed in the harbour all week.", "A storm hit the coast."),
    ("The library got new books. Readers lined up to borrow them.", "The library got new books."),
]
CHATS = [
    ("Hi there!", "Hello! How can I help?", "What is your name?", "I am a small bot."),
    ("Good morning.", "Good morning to you!", "Is it sunny?", "I cannot see outside."),
    ("Can you help me?", "Yes, tell me more.", "I lost my key.", "Check your coat pocket."),
    ("Hello bot.", "Hi! What do you need?", "Tell me a joke.", "Why did the cat nap? It was tired."),
    ("Hey.", "Hey! What is up?", "I am bored.", "Try reading a good book."),
    ("Thanks!", "You are welcome!", "Bye now.", "Goodbye, take care."),
]
SYSTEM = {"nli": "nli", "qa": "qa", "math": "math", "summarization": "sum", "conversation": "chat"}


def nli_rows() -> list[dict[str, Any]]:
    return [{"premise": p, "hypothesis": h, "label": lab} for p, h, lab, _ in NLI]


def mc_rows() -> list[dict[str, Any]]:
    return [{"question": q, "choices": ch, "answer": a} for q, ch, a in MC]


def math_rows() -> list[dict[str, Any]]:
    return [{"question": q, "answer": f"{q[8:-1].replace(' plus ', ' + ')} = {a}\n#### {a}"} for q, a in QUESTIONS]


def doc_rows() -> list[dict[str, Any]]:
    return [{"document": d, "summary": s} for d, s in DOCS]


def chat_rows() -> list[dict[str, Any]]:
    roles = ("user", "assistant", "user", "assistant")
    return [{"messages": [{"role": r, "content": c} for r, c in zip(roles, turns, strict=True)]} for turns in CHATS]


def teacher_conversations() -> list[list[dict[str, str]]]:
    """What the teacher memorises: each task's user message (as the row formats render it) -> its answer."""
    letters = "ABC"
    convs = []
    for p, h, lab, why in NLI:
        convs.append(("nli", f"Premise: {p}\nHypothesis: {h}", f"{why} Answer: {lab}"))
    for q, ch, a in MC:
        lines = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(ch))
        convs.append(("qa", f"{q}\n\nChoices:\n{lines}", f"Answer: {letters[a]}"))
    for q, a in QUESTIONS:
        convs.append(("math", q, f"Answer: {a}"))
    for d, s in DOCS:
        convs.append(("sum", f"Document:\n{d}", s))
    out = [
        [{"role": "system", "content": sys}, {"role": "user", "content": u}, {"role": "assistant", "content": a}]
        for sys, u, a in convs
    ]
    for u1, a1, u2, a2 in CHATS:
        turns = [("user", u1), ("assistant", a1), ("user", u2), ("assistant", a2)]
        out.append([{"role": "system", "content": "chat"}, *({"role": r, "content": c} for r, c in turns)])
    return out


@pytest.fixture(scope="module")
def task_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from potstill.demo.tiny import build_tokenizer, save_model, tiny_llama
    from potstill.train.data import encode_chat
    from potstill.train.trainer import FitConfig, fit

    root = tmp_path_factory.mktemp("task-models")
    convs = teacher_conversations()
    tok = build_tokenizer([m["content"] for c in convs for m in c] * 5, vocab_size=400)
    teacher = tiny_llama(tok, hidden=64, layers=2, heads=4, seed=0)
    rows = [encode_chat(tok, c, 128) for c in convs]
    cfg = FitConfig(
        learning_rate=1e-2, batch_size=16, num_epochs=1000, max_steps=250, warmup_ratio=0.0, save_every=10**9
    )
    fit(teacher, rows, [], cfg, tok.pad_token_id)
    student = tiny_llama(tok, hidden=16, layers=1, heads=2, seed=1)
    return {
        "teacher": save_model(teacher, tok, root / "teacher"),
        "student": save_model(student, tok, root / "student"),
    }


CASES = {
    "nli": (nli_rows, ["parse", "answer_check", {"balance": 0.5}], {"chain_of_thought": True, "cot": "multitask"}),
    "qa": (mc_rows, ["parse", "answer_check", "refusal", "dedup"], {}),
    "math": (math_rows, ["parse", "answer_check", {"self_consistency": 0.5}], {"samples": 2, "temperature": 0.3}),
    "summarization": (doc_rows, ["nonempty", {"length": {"max": 40, "unit": "words"}}, "dedup"], {}),
    "conversation": (chat_rows, ["nonempty", "refusal", "dedup"], {}),
}
METRICS = {
    "nli": {"accuracy", "macro_f1"},
    "qa": {"accuracy", "exact_match", "f1"},
    "math": {"accuracy"},
    "summarization": {"accuracy", "bleu", "chrf", "rouge1", "rouge2", "rougeL"},
    "conversation": {"accuracy", "bleu", "chrf", "rouge1", "rouge2", "rougeL"},
}


def job(task_type: str, models: dict[str, Path], data: Path) -> Any:
    make, filters, generation = CASES[task_type]
    rows = make()
    train = write_jsonl(data / "train.jsonl", rows)
    val = write_jsonl(data / "val.jsonl", rows[:3])
    test = write_jsonl(data / "test.jsonl", rows)
    d = {
        "name": f"e2e-{task_type}",
        "task_type": task_type,
        "teacher": {"kind": "hf", "model": str(models["teacher"]), "batch_size": 16},
        "student": str(models["student"]),
        "data": {"training": str(train), "validation": str(val), "test": str(test)},
        "prompts": {"system": SYSTEM[task_type]},
        "generation": {"temperature": 0.0, "max_tokens": 24, **generation},
        "filters": filters,
        "hyperparameters": {"learning_rate": 1e-3, "batch_size": 4, "num_epochs": 1, "save_every": 100},
        "evaluation": {"max_new_tokens": 24, "latency_samples": 1, "batch_size": 16, "baseline": False},
    }
    return validate_spec(d)


@pytest.mark.slow
@pytest.mark.parametrize("task_type", list(CASES))
def test_task_type_end_to_end(task_type: str, task_models: dict[str, Path], tmp_path: Path) -> None:
    spec = job(task_type, task_models, tmp_path / "data")
    rd = run_pipeline(spec, tmp_path / "run")
    rep = json.loads((rd.data / "filter_report.json").read_text())
    train = rep["splits"]["train"]
    assert train["kept"] > 0 and train["kept"] + train["rejected"] == train["rows_in"]
    assert [f["filter"] for f in train["funnel"]] == [
        n if isinstance(n, str) else next(iter(n)) for n in CASES[task_type][1]
    ]
    results = json.loads((rd.eval / "results.json").read_text())
    by = {m["name"]: m for m in results["models"]}
    assert set(by) == {"teacher", "distilled"}
    for m in by.values():
        assert set(m["metrics"]) == METRICS[task_type]
    teacher = by["teacher"]["metrics"]
    assert teacher["accuracy"] >= 0.8, teacher  # the teacher memorised every row
    kept = [json.loads(line) for line in (rd.data / "train.jsonl").read_text().splitlines()]
    match task_type:
        case "nli":
            assert teacher["macro_f1"] >= 0.8
            assert max(train["labels_after"].values()) <= 0.5 * train["kept"]
            assert {r["messages"][-2]["content"].split(" ", 1)[0] for r in kept} == {"[answer]", "[rationale]"}
        case "math":
            assert train["rows_in"] == 2 * len(QUESTIONS) and train["kept"] <= len(QUESTIONS)
        case "conversation":
            assert teacher["bleu"] > 50 and teacher["rougeL"] > 0.5
            convo = kept[0]["messages"]
            assert [m["role"] for m in convo] == ["user", "assistant", "user", "assistant"]
            assert convo[1]["content"] == CHATS[0][1] and convo[3]["content"] == CHATS[0][3]
        case "summarization":
            assert teacher["rougeL"] > 0.5
    assert (rd.report / "report.md").exists()
