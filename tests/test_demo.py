"""The offline demo, end to end (`potstill demo --quick`), and its task generator."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_cli

from potstill.data.tasks import parse_math
from potstill.demo import TEACHER_DIR, build_assets, check_targets, teacher_card
from potstill.demo.task import SAMPLE_SEED, col_add, col_mul, col_sub, problems
from potstill.demo.train_teacher import accuracy, training_rows
from potstill.errors import PotstillError


def _check_columns(text: str) -> None:
    """Every 'x op y = z' in a worked answer is true arithmetic."""
    for a, op, b, rest, z in re.findall(r"(\d+) ([-+*]) (\d+)((?: [-+] \d+)*) = (\d+)", text):
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        for sign, n in re.findall(r" ([-+]) (\d+)", rest):
            value += int(n) if sign == "+" else -int(n)
        assert value == int(z), text


@pytest.mark.parametrize("steps", [1, 2])
def test_worked_answers_are_right_and_parse(steps: int) -> None:
    rows = problems(3000, seed=7, steps=steps)
    assert len({r["prompt"] for r in rows}) == 3000
    for r in rows:
        assert parse_math(str(r["answer"])) == str(r["value"])
        _check_columns(str(r["answer"]))


def test_column_arithmetic_carries_and_borrows() -> None:
    assert col_add(47, 38) == "47 + 38: 7 + 8 = 15, 4 + 3 + 1 = 8"
    assert col_add(85, 82) == "85 + 82: 5 + 2 = 7, 8 + 8 = 16"
    assert col_sub(85, 29) == "85 - 29: 15 - 9 = 6, 8 - 1 - 2 = 5"
    assert col_sub(205, 98) == "205 - 98: 15 - 8 = 7, 10 - 1 - 9 = 0, 2 - 1 = 1"
    assert col_mul(9, 49) == "9 * 49: 9 * 9 = 81, 9 * 4 + 8 = 44"


def test_splits_do_not_overlap() -> None:
    test = problems(300, seed=3, steps=1)
    train = problems(1000, seed=1, exclude={str(r["prompt"]) for r in test}, steps=1)
    assert not {str(r["prompt"]) for r in test} & {str(r["prompt"]) for r in train}


def test_committed_teacher_reaches_its_documented_accuracy() -> None:
    """The shipped checkpoint: safetensors + tokenizer, ≤ 30 MB, and the accuracy its card states, re-measured
    on the card's fixed sample of held-out problems."""
    card = teacher_card()
    files = {p.name for p in TEACHER_DIR.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= files
    assert sum(p.stat().st_size for p in TEACHER_DIR.iterdir()) <= 30 * 2**20
    assert card["sample_seed"] == SAMPLE_SEED and card["sample_accuracy"] >= 0.9
    acc = accuracy(TEACHER_DIR, problems(card["sample_size"], seed=SAMPLE_SEED), batch_size=256)
    assert abs(acc - card["sample_accuracy"]) <= 0.01, (acc, card["sample_accuracy"])


def test_train_teacher_defaults_are_the_shipped_recipe() -> None:
    import inspect

    from potstill.demo.train_teacher import train_teacher

    card = teacher_card()
    defaults = {k: p.default for k, p in inspect.signature(train_teacher).parameters.items()}
    keys = ("hidden", "layers", "heads", "rows", "steps", "batch_size", "seed", "precision")
    assert {k: defaults[k] for k in keys} == {k: card[k] for k in keys}
    assert defaults["lr"] == card["learning_rate"]


def test_demo_splits_are_unseen_by_the_teacher(tmp_path: Path) -> None:
    build_assets(tmp_path, quick=True, log=lambda m: None)
    card = teacher_card()
    seen = {str(r["prompt"]) for r in training_rows(card["rows"], card["seed"])}
    splits = {}
    for name in ("train", "validation", "test"):
        splits[name] = {json.loads(x)["prompt"] for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()}
        assert not splits[name] & seen, name
    assert not splits["test"] & (splits["train"] | splits["validation"])
    assert not splits["train"] & splits["validation"]
    assert card["parameters"] >= 10 * _parameters(tmp_path / "student")  # the student is ≤ 1/10 of the teacher


def _parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return sum(f.get_tensor(k).numel() for k in f.keys())  # noqa: SIM118


def test_targets_are_checked_against_the_results() -> None:
    def model(name: str, acc: float, params: int, p50: float, mem: float) -> dict[str, object]:
        return {
            "name": name,
            "accuracy": acc,
            "parameters": params,
            "latency": {"p50_ms": p50},
            "memory": {"peak_tensor_mb": mem},
        }

    good = {
        "models": [
            model("teacher", 0.98, 2_700_000, 200.0, 12.0),
            model("distilled", 0.95, 242_000, 30.0, 1.2),
            model("gold-only", 0.30, 242_000, 30.0, 1.2),
        ]
    }
    met = {what: ok for what, _, ok in check_targets(good)}
    assert len(met) == 6 and all(met.values()), met
    bad = {
        "models": [
            model("teacher", 0.98, 2_000_000, 100.0, 12.0),
            model("distilled", 0.90, 242_000, 30.0, 1.2),
            model("gold-only", 0.80, 242_000, 30.0, 1.2),
        ]
    }
    missed = [what for what, _, ok in check_targets(bad) if not ok]
    assert len(missed) == 4, missed  # retention 91.8 %, 1/8.3 of the parameters, +10 points, 3.3× faster


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path: Path) -> None:
    res = run_cli("demo", "--quick", "--run-dir", str(tmp_path / "demo"), timeout=1200)
    assert res.returncode == 0, res.stderr[-2000:]
    rd = tmp_path / "demo"
    results = json.loads((rd / "eval" / "results.json").read_text())
    acc = {m["name"]: m["accuracy"] for m in results["models"]}
    assert acc["teacher"] >= 0.9  # the committed teacher
    assert acc["distilled"] > acc["baseline"]  # distillation beats the untrained student
    by = {m["name"]: m for m in results["models"]}
    assert by["distilled"]["parameters"] < by["teacher"]["parameters"]
    assert (rd / "report" / "report.html").exists() and (rd / "report" / "report.md").exists()
    assert "accuracy retention" in res.stdout
    assert "the whole demo ≤ 2 minutes:" in res.stdout  # the time is a target too, checked and printed


def test_full_demo_flow_on_a_small_slice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full demo's order on 64 questions: the gold-only student trained in its own process with the distilled
    student's recipe (steps, batch size, learning rate) on the labelled rows, then evaluation, the targets file,
    and a report that shows the targets."""
    import potstill.demo as demo

    monkeypatch.setitem(demo.SIZES, False, {"train": 64, "validation": 16, "test": 16, "steps": 4})
    rd = demo.run_demo(tmp_path / "demo", quick=False)
    steps = json.loads((rd / "student" / "training_summary.json").read_text())["steps"]
    recipe = json.loads((rd / "assets" / "gold-only" / "recipe.json").read_text())
    assert steps == 4 and recipe == {"rows": 16, "steps": 4, **demo.RECIPE}
    assert (rd / "assets" / "gold-only.log").exists()  # written by its own process
    results = json.loads((rd / "eval" / "results.json").read_text())
    assert {m["name"] for m in results["models"]} == {"teacher", "baseline", "distilled", "gold-only"}
    targets = json.loads((rd / "eval" / "targets.json").read_text())["targets"]
    assert [t["target"] for t in targets] == [w for w, _, _ in check_targets(results)] and len(targets) == 6
    assert next(t for t in targets if t["target"].startswith("teacher"))["met"]  # the committed teacher, ≥ 90 %
    assert 'class="targets"' in (rd / "report" / "report.html").read_text()


def test_gold_only_trains_once_per_recipe_and_reports_a_failed_process(tmp_path: Path) -> None:
    """gold_only.start trains in a child process and skips a recipe already trained; a failed child is an error
    that quotes its log."""
    from potstill.demo import RECIPE, gold_only

    build_assets(tmp_path, quick=True, log=lambda m: None)
    student, labelled, out = tmp_path / "student", tmp_path / "labelled.jsonl", tmp_path / "gold-only"
    labelled.write_text("".join((tmp_path / "validation.jsonl").read_text().splitlines(keepends=True)[:8]))
    proc = gold_only.start(student, out, labelled, 2, RECIPE)
    assert proc is not None
    gold_only.wait(proc, out)
    assert json.loads((out / "recipe.json").read_text()) == {"rows": 8, "steps": 2, **RECIPE}
    assert (
        _parameters(out) == _parameters(student)
        and (out / "model.safetensors").read_bytes() != (student / "model.safetensors").read_bytes()
    )
    assert gold_only.start(student, out, labelled, 2, RECIPE) is None  # the same recipe: nothing to train
    bad = gold_only.start(tmp_path / "no-such-student", tmp_path / "bad", labelled, 2, RECIPE)
    with pytest.raises(PotstillError, match="gold-only student's training failed"):
        gold_only.wait(bad, tmp_path / "bad")
