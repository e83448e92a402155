"""Input formats: task-shaped JSONL rows, CSV and Parquet files, prompt templates, per-line errors, small splits."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import write_jsonl

from potstill.data.jsonl import check_file, read_examples
from potstill.errors import DataError


def one(rows: list[dict[str, Any]], tmp_path: Path, template: str | None = None) -> list[Any]:
    return list(read_examples(write_jsonl(tmp_path / "rows.jsonl", rows), "train", template))


def test_task_shaped_rows(tmp_path: Path) -> None:
    gsm, nli, nli_id, qa, mc, summ, chat = one(
        [
            {"question": "Natalia sold 48 clips...", "answer": "48/2 = 24\n#### 72"},
            {"premise": "A man sleeps.", "hypothesis": "A man is awake.", "label": "contradiction"},
            {"premise": "A dog runs.", "hypothesis": "An animal moves.", "label": 0},
            {"question": "Who wrote it?", "context": "It was written by Ann.", "answer": ["Ann", "Ann B."]},
            {"question": "Capital of France?", "choices": ["Rome", "Paris", "Oslo"], "answer": "Paris"},
            {"document": "Long text here.", "summary": "Short."},
            {
                "messages": [
                    {"role": "system", "content": "Be kind."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"},
                ]
            },
        ],
        tmp_path,
    )
    assert gsm.messages == [{"role": "user", "content": "Natalia sold 48 clips..."}]
    assert gsm.reference.endswith("#### 72")
    assert nli.messages[0]["content"] == "Premise: A man sleeps.\nHypothesis: A man is awake."
    assert nli.reference == "contradiction" and nli_id.reference == "entailment"
    assert qa.messages[0]["content"] == "Context: It was written by Ann.\n\nQuestion: Who wrote it?"
    assert qa.reference == "Ann"
    assert mc.messages[0]["content"].endswith("Choices:\nA. Rome\nB. Paris\nC. Oslo")
    assert mc.reference == "B"
    assert summ.messages[0]["content"] == "Document:\nLong text here." and summ.reference == "Short."
    assert chat.messages[0] == {"role": "system", "content": "Be kind."} and chat.reference == "Hello!"


def test_choice_answers_by_index_and_letter(tmp_path: Path) -> None:
    rows = one(
        [
            {"question": "q1", "choices": ["x", "y"], "answer": 1},
            {"question": "q2", "choices": ["x", "y"], "answer": "a"},
        ],
        tmp_path,
    )
    assert [r.reference for r in rows] == ["B", "A"]


def test_template_override(tmp_path: Path) -> None:
    rows = [{"premise": "P.", "hypothesis": "H.", "label": 1, "genre": "news"}]
    (ex,) = one(rows, tmp_path, template="[{genre}] Does '{premise}' imply '{hypothesis}'?")
    assert ex.messages[0]["content"] == "[news] Does 'P.' imply 'H.'?"
    with pytest.raises(DataError, match=r"rows.jsonl:1: prompts.template uses \{topic\}, which this row lacks"):
        one(rows, tmp_path, template="{topic}: {premise}")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"premise": "P", "hypothesis": "H", "label": "maybe"}, "label 'maybe' is not entailment"),
        ({"premise": "P"}, "'hypothesis' is missing"),
        ({"question": "q", "choices": ["x", "y"], "answer": "z"}, "answer 'z' is none of the choices"),
        ({"question": "q", "choices": "x,y"}, "'choices' must be a list"),
        ({"document": ""}, "'document' is empty"),
        ({"text": "hello"}, "unknown row format (keys: text)"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, row: dict[str, Any], message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "fine"}) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as info:
        check_file(path, "train")
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)


def test_csv_rows(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text(
        'question,choices,answer,context\n"Capital of France?","[""Rome"", ""Paris""]",Paris,\n'
        '"Two\nlines?",,yes,Some context\n'
    )
    mc, multi = list(read_examples(path, "train"))
    assert mc.reference == "B" and "B. Paris" in mc.messages[0]["content"]
    assert multi.messages[0]["content"] == "Context: Some context\n\nQuestion: Two\nlines?"
    bad = tmp_path / "bad.csv"
    bad.write_text("premise,hypothesis,label\nP,H,0\nP,H\nP,H,7\n")
    with pytest.raises(DataError) as info:
        check_file(bad, "train")
    lines = str(info.value).splitlines()
    assert lines[0] == f"{bad}:3: 2 cells but the header has 3 columns"
    assert lines[1].startswith(f"{bad}:4: label '7'")


def test_parquet_rows(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    table = pa.table({"document": ["Doc one.", "Doc two."], "summary": ["One.", None]})
    pq.write_table(table, path)
    a, b = list(read_examples(path, "train"))
    assert a.messages[0]["content"] == "Document:\nDoc one." and a.reference == "One." and b.reference is None
    pq.write_table(pa.table({"document": ["ok", ""]}), path)
    with pytest.raises(DataError, match=r"train.parquet: row 2: 'document' is empty"):
        check_file(path, "train")


def test_small_split_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_jsonl(tmp_path / "v.jsonl", [{"prompt": f"q{i}"} for i in range(3)])
    with caplog.at_level(logging.WARNING, logger="potstill"):
        assert check_file(path, "validation") == 3
    assert "has 3 validation rows; at least 10" in caplog.text
