"""The report: built from files alone, self-contained HTML with every plot embedded, the numbers of
results.json on the page, a real headless Chromium rendering it from disk; and `potstill compare`."""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from browser import Chromium, find_chromium
from conftest import run_cli

from potstill.report.build import build_report, loss_history
from potstill.report.tables import comparison_rows
from potstill.run_dir import RunDir

PLOTS = {"metrics", "latency", "loss", "funnel", "accuracy_vs_parameters"}


class Parsed(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.imgs: list[dict[str, str | None]] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "poster", "srcset") and v is not None]
        if tag == "img":
            self.imgs.append(a)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def _model(name: str, role: str, acc: float, lo: float, hi: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "role": role,
        "kind": "local",
        "model": f"/models/{name}",
        "device": "cpu",
        "dtype": "float32",
        "parameters": 1_250_000 if role != "teacher" else 7_000_000,
        "size_on_disk_mb": 4.77,
        "accuracy": acc,
        "agreement_with_teacher": None if role == "teacher" else acc - 0.05,
        "metrics": {"accuracy": acc, "bleu": 100 * acc / 2},
        "intervals": {
            "accuracy": {"lo": lo, "hi": hi, "method": "wilson"},
            "bleu": {"lo": 50 * lo, "hi": 50 * hi, "method": "bootstrap (1000 resamples)"},
        },
        "n_scored": 40,
        "latency": {"mean_ms": 12.5, "p50_ms": 11.25, "p95_ms": 19.75, "n": 4, "samples_ms": [9.5, 11.0, 11.5, 19.75]},
        "throughput": {"answers_per_s": 81.5, "tokens_per_s": 640.0, "batch_size": 16},
        "memory": {"peak_tensor_mb": 5.5, "weights_mb": 4.75, "rss_mb": 391.0, "how": "profiler"},
        "cost_per_1k_answers_usd": None,
        **extra,
    }


def synthetic_run(root: Path) -> dict[str, Any]:
    """A run folder written by hand: the report must need nothing but these files."""
    rd = RunDir(root)
    rd.create()
    teacher = _model(
        "teacher",
        "teacher",
        0.8,
        0.65,
        0.9,
        kind="api",
        parameters=None,
        size_on_disk_mb=None,
        throughput=None,
        memory=None,
        cost_per_1k_answers_usd=2.5,
    )
    teacher["latency"] = {"mean_ms": 870.0, "p50_ms": 812.5, "p95_ms": 1500.0, "n": 3, "samples_ms": [600, 812.5, 1500]}
    results = {
        "version": 2,
        "split": "test",
        "rows": 40,
        "task_type": "summarization",
        "scored_against": "reference",
        "confidence": 0.95,
        "bootstrap_samples": 1000,
        "max_new_tokens": 64,
        "batch_size": 16,
        "models": [
            teacher,
            _model("baseline", "baseline", 0.25, 0.14, 0.4),
            _model("distilled", "distilled", 0.675, 0.52, 0.8),
            _model("gold-only", "extra", 0.55, 0.4, 0.69),
        ],
        "comparison": {
            "accuracy_retention_pct": 84.375,
            "accuracy_retention_pct_ci": [70.0, 97.5],
            "gain_over_baseline": 0.425,
            "gain_over_baseline_ci": [0.25, 0.6],
            "speedup_x": 72.2,
            "by_model": {
                "distilled": {"accuracy_retention_pct": 84.375, "gain_over_baseline": 0.425},
                "gold-only": {"accuracy_retention_pct": 68.75, "gain_over_baseline": 0.3},
            },
        },
    }
    rd.write_json(rd.eval / "results.json", results)
    rd.write_json(
        rd.data / "filter_report.json",
        {
            "filters": ["nonempty", "parse"],
            "splits": {
                "train": {
                    "rows_in": 120,
                    "kept": 100,
                    "rejected": 20,
                    "rejected_by_filter": {"nonempty": 5, "parse": 15},
                    "reasons": {
                        "nonempty: teacher call failed": 1,
                        "nonempty: empty output": 4,
                        "parse: no parseable answer": 15,
                    },
                },
                "validation": {
                    "rows_in": 40,
                    "kept": 38,
                    "rejected": 2,
                    "rejected_by_filter": {"parse": 2},
                    "reasons": {"parse: no parseable answer": 2},
                },
            },
        },
    )
    ledger = {"calls": 160, "prompt_tokens": 12345, "completion_tokens": 6789, "mean_latency_s": 0.8, "cost_usd": 0.4}
    rd.mark_done("generate", "fp", train={"prompts": 120}, ledger=ledger)
    with rd.open_jsonl(rd.outputs / "train.jsonl") as w:
        w({"id": "a", "finish_reason": "error", "output": None})
        w({"id": "b", "finish_reason": "stop", "output": "x"})
    # an aborted run (steps 1-2), a fresh run that crashed after step 3 and resumed from its step-2 checkpoint
    rd.event("train", "start")
    for s in (1, 2):
        rd.event("train", "step", step=s, loss=9.0)
    rd.event("train", "start")
    for s in (1, 2, 3):
        rd.event("train", "step", step=s, loss=4.0 - s)
    rd.event("train", "start")
    rd.event("train", "resume", step=2)
    for s in (3, 4):
        rd.event("train", "step", step=s, loss=2.0 - s / 4, **({"val_loss": 1.5} if s == 4 else {}))
    rd.write_text(
        rd.job_yaml,
        yaml.safe_dump(
            {
                "name": "synthetic",
                "task_type": "summarization",
                "teacher": {"kind": "hf", "model": "big"},
                "student": {"model": "s"},
            }
        ),
    )
    return results


def test_loss_history_joins_a_resumed_training(tmp_path: Path) -> None:
    synthetic_run(tmp_path)
    hist = loss_history(RunDir(tmp_path))
    assert [(h["step"], h["loss"]) for h in hist] == [(1, 3.0), (2, 2.0), (3, 1.25), (4, 1.0)]
    assert hist[-1]["val_loss"] == 1.5


def test_report_html_is_self_contained_and_shows_the_results(tmp_path: Path) -> None:
    results = synthetic_run(tmp_path)
    out = build_report(tmp_path)
    assert set(out["plots"]) == PLOTS
    html = (tmp_path / "report" / "report.html").read_text()
    page = Parsed(html)
    assert page.tags[0] == "html" and "table" in page.tags
    # nothing is fetched: every URL is inline data or an in-page anchor; no scripts or stylesheets from outside
    assert page.urls and all(u.startswith(("data:", "#")) for u in page.urls), page.urls
    assert "http://" not in html and "https://" not in html and "@import" not in html
    # every plot is embedded as a PNG, identical to the file written beside the report
    assert {i["data-plot"] for i in page.imgs} == PLOTS
    for img in page.imgs:
        src = img["src"] or ""
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1])
        w, h = png_size(data)
        assert w >= 600 and h >= 200
        assert data == (tmp_path / "report" / f"{img['data-plot']}.png").read_bytes()
    text = " ".join(" ".join(page.text).split())
    # the table's numbers are those of results.json
    _, rows = comparison_rows(results)
    assert _table_rows(html, "comparison") == rows
    for needle in (
        "812.5",
        "11.2",
        "1500.0",
        "80.0 % (65.0–90.0)",
        "67.5 % (52.0–80.0)",
        "33.8 (26.0–40.0)",
        "1.25M",
        "2.5",
        "84.4 % (95 % CI 70.0 to 97.5)",
        "+42.5 (95 % CI +25.0 to +60.0)",
    ):
        assert needle in text, needle
    # funnel, ledger (with the failed call counted from teacher/outputs), job spec
    assert "parse: no parseable answer (15)" in text and "100" in text
    assert "12,345" in text and "6,789" in text and "0.4000" in text
    ledger_row = next(r for r in _table_rows(html, "ledger") if r[0] == "failed answers")
    assert ledger_row[1] == "1"
    assert "name: synthetic" in html
    md = (tmp_path / "report" / "report.md").read_text()
    for name in PLOTS:
        assert f"]({name}.png)" in md
    assert "| accuracy (95 % CI) | 80.0 % (65.0–90.0) | 25.0 % (14.0–40.0) |" in md


def test_report_shows_targets_when_the_run_has_them(tmp_path: Path) -> None:
    synthetic_run(tmp_path)
    build_report(tmp_path)
    assert 'class="targets"' not in (tmp_path / "report" / "report.html").read_text()
    targets = [
        {"target": "retention ≥ 95 % of the teacher", "measured": "96.4 %", "met": True},
        {"target": "≥ 5× faster per answer", "measured": "3.1×", "met": False},
    ]
    (tmp_path / "eval" / "targets.json").write_text(json.dumps({"targets": targets}))
    build_report(tmp_path)
    html = (tmp_path / "report" / "report.html").read_text()
    assert _table_rows(html, "targets") == [
        ["retention ≥ 95 % of the teacher", "96.4 %", "yes"],
        ["≥ 5× faster per answer", "3.1×", "no"],
    ]
    assert "| ≥ 5× faster per answer | 3.1× | no |" in (tmp_path / "report" / "report.md").read_text()


def _table_rows(html: str, cls: str) -> list[list[str]]:
    start = html.index(f'<table class="{cls}">')
    body = html[start : html.index("</table>", start)]
    rows = [[c.split("</td>")[0].strip() for c in tr.split("<td>")[1:]] for tr in body.split("<tr>")[1:]]
    return [r for r in rows if r]  # the header row has <th> cells only


def test_report_stage_on_a_real_run(tiny_run: Path) -> None:
    res = json.loads((tiny_run / "eval" / "results.json").read_text())
    html = (tiny_run / "report" / "report.html").read_text()
    page = Parsed(html)
    assert {i["data-plot"] for i in page.imgs} == PLOTS
    assert all(u.startswith(("data:", "#")) for u in page.urls)
    for m in res["models"]:
        assert f"<th>{m['name']}</th>" in html
        assert f"{m['latency']['p50_ms']:.1f}" in html
        assert f"{m['memory']['peak_tensor_mb']:.2f}" in html
    assert (tiny_run / "report" / "report.md").exists()


@pytest.mark.skipif(
    find_chromium() is None and not os.environ.get("CI"), reason="needs Debian's chromium (installed by .ci/run)"
)
def test_report_renders_in_headless_chromium(tiny_run: Path, tmp_path: Path) -> None:
    res = json.loads((tiny_run / "eval" / "results.json").read_text())
    with Chromium(tmp_path) as browser:
        page = browser.open(tiny_run / "report" / "report.html")
    assert page.errors == []
    assert page.resources == []  # nothing loaded from anywhere: the plots are inline
    for needle in ("Comparison", "parameters", "inference time", "accuracy (95 % CI)", "throughput", "Job spec"):
        assert needle in page.text
    for m in res["models"]:
        assert m["name"] in page.text
        assert f"{m['latency']['p50_ms']:.1f}" in page.text
    assert {i["plot"] for i in page.images} == PLOTS
    for img in page.images:
        assert img["complete"] and img["natural"][0] >= 600 and img["natural"][1] >= 200, img
        assert img["shown"][0] >= 600 and img["shown"][1] >= 200, img
    w, h = png_size(page.screenshot)
    assert w == 1200 and h >= page.height >= 2000
    (tmp_path / "report.png").write_bytes(page.screenshot)
    from PIL import Image  # matplotlib's own dependency

    shot = Image.open(tmp_path / "report.png").convert("RGB")
    top = shot.crop((0, 0, w, 600))
    assert len(top.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10  # text and table rules, not a blank page


def test_compare_two_runs(tiny_run: Path, tmp_path: Path) -> None:
    run_b = tmp_path / "run-b"
    shutil.copytree(tiny_run, run_b)
    job = yaml.safe_load((tiny_run / "job.yaml").read_text())
    job["hyperparameters"]["learning_rate"] = 3e-3
    job["evaluation"]["models"] = []
    (tmp_path / "job-b.yaml").write_text(yaml.safe_dump(job))
    res = run_cli("run", str(tmp_path / "job-b.yaml"), "--run-dir", str(run_b))
    assert res.returncode == 0, res.stderr
    assert "generate: done earlier" in res.stderr and "train: running" in res.stderr

    out = run_cli("compare", str(tiny_run), str(run_b), "--markdown", str(tmp_path / "cmp.md"))
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "cmp.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith(f"| {tiny_run} |") or line.startswith(f"| {run_b} |")]
    assert len(rows) == 4 + 3  # every model of each run
    a = json.loads((tiny_run / "eval" / "results.json").read_text())["models"][2]
    b = json.loads((run_b / "eval" / "results.json").read_text())["models"][2]
    assert f"| {tiny_run} | distilled | {a['parameters'] / 1000:.3g}K |" in md
    assert f"{b['latency']['p50_ms']:.1f}" in md
    assert "| hyperparameters.learning_rate | 0.001 | 0.003 |" in md
    assert "runs side by side" in out.stdout and "settings that differ" in out.stdout

    only = run_cli("compare", str(tiny_run), str(run_b), "--model", "distilled")
    assert only.returncode == 0 and "baseline" not in only.stdout.split("settings that differ")[0]
    missing = run_cli("compare", str(tiny_run), str(tmp_path / "nope"))
    assert missing.returncode == 1 and "nope/eval/results.json not found" in missing.stderr


def test_console_table_fits_80_columns_and_a_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Printed to an 80-column terminal or a log file, each model's figures stay on one line per metric."""
    import io

    from rich.console import Console

    import potstill.cli as cli

    synthetic_run(tmp_path)
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    buf = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buf, width=80))  # what rich assumes when not a terminal
    cli.print_results(tmp_path)
    lines = buf.getvalue().splitlines()
    assert max(len(ln) for ln in lines) <= 80
    acc = next(ln for ln in lines if ln.lstrip("│ ").startswith("accuracy"))
    assert all(name in lines[1] + lines[2] for name in ("teacher", "baseline", "distilled", "gold-only"))
    assert acc.count("%") == len(res["models"])  # every model's accuracy on the accuracy line itself
    body = [ln for ln in lines if ln.startswith("│")]
    assert all(ln.split("│")[1].strip() for ln in body)  # no row wraps onto a second line
