"""The command line: thin typer wrappers around the public functions.

    potstill run job.yaml [--run-dir runs/NAME]      every stage, resuming a previous run
    potstill tune job.yaml [--trials N]              search the recipe (the spec's tune: section), keep the best
    potstill generate|validate|train|evaluate|report RUN_DIR     one stage of an existing run
    potstill status RUN_DIR                          each stage's state, counts and time
    potstill export RUN_DIR --format hf,onnx,onnx-int8,gguf-q8_0   merged HF / ONNX / GGUF (each checked)
    potstill serve MODEL_DIR|RUN_DIR [--port 8000]   an OpenAI-compatible server on 127.0.0.1
    potstill compare RUN_DIR... [--model NAME]       several runs side by side
    potstill demo [--quick]                          the offline demo

Exit codes: 0 ok, 2 bad input (spec or data), 1 any other failure. Errors are one line each, on stderr.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import PotstillError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Distil a large teacher into a small student.")
out = Console()
err = Console(stderr=True)

RunDirArg = Annotated[Path, typer.Argument(help="a run folder made by `potstill run`")]
ForceOpt = Annotated[bool, typer.Option("--force", help="re-run even when done with unchanged inputs")]


def _error(message: str, code: int) -> typer.Exit:
    """Print ``message`` so that its last line starts with ``error:`` (details of a multi-line one first)."""
    head, *details = message.splitlines() or [""]
    for line in details:
        err.print(escape(line), highlight=False, soft_wrap=True)
    suffix = " (listed above)" if details else ""
    err.print(f"[bold red]error:[/] {escape(head)}{suffix}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PotstillError as exc:
            raise _error(str(exc) or type(exc).__name__, exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted: finished work is saved; run the same command again to resume")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug or the system (disk full, permissions): one line, never a traceback
            if os.environ.get("POTSTILL_DEBUG"):
                raise
            what = " ".join(str(exc).split())[:300]
            raise _error(
                f"{type(exc).__name__}{': ' + what if what else ''} (unexpected: run again with POTSTILL_DEBUG=1 "
                "for the traceback, and please report it)",
                1,
            ) from None

    return wrapper


def _say(msg: str) -> None:
    err.print(f"[dim]potstill[/] {msg}", highlight=False)


def _table(header: list[str], rows: list[list[str]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for r in rows:
        table.add_row(*r)
    return table


def print_results(run_dir: Path) -> None:
    """The comparison table of a run (from eval/results.json), the derived numbers and where the report is."""
    from .report.tables import compact_rows, comparison_rows, derived_lines
    from .train.advice import still_improving, why_it_stopped

    path = run_dir / "eval" / "results.json"
    if not path.exists():
        return
    results = json.loads(path.read_text())
    if out.width >= 120:
        out.print(_table(*comparison_rows(results), title="teacher vs student (95 % CIs in brackets)"))
    else:  # an 80-column terminal, or a log file (rich assumes 80 columns there)
        out.print(_table(*compact_rows(results), title="teacher vs student"))
    for line in derived_lines(results):
        out.print(f"  {line}")
    summary = run_dir / "student" / "training_summary.json"
    if summary.exists() and (more := still_improving(json.loads(summary.read_text()).get("history") or [])):
        out.print(f"  ! {more.message()}", highlight=False)
    if summary.exists() and (why := why_it_stopped(json.loads(summary.read_text()))):
        out.print(f"  {why}", highlight=False)
    html = run_dir / "report" / "report.html"
    if html.exists():
        out.print(f"report: {html} (and report.md)")


@app.command()
@_guard
def run(
    job: Annotated[Path, typer.Argument(help="the job YAML")],
    run_dir: Annotated[Path | None, typer.Option(help="run folder (default runs/<name>)")] = None,
    force: ForceOpt = False,
) -> None:
    """Run every stage of a job: generate, validate, train, evaluate, report (resumes a previous run)."""
    from .job import load_job
    from .pipeline import run_pipeline

    j = load_job(job)
    rd = run_pipeline(j.spec, run_dir or j.default_run_dir(), force=force, log=_say)
    print_results(rd.root)


@app.command()
@_guard
def tune(
    job: Annotated[Path, typer.Argument(help="the job YAML, with a tune: section")],
    run_dir: Annotated[Path | None, typer.Option(help="run folder (default runs/<name>)")] = None,
    trials: Annotated[int | None, typer.Option(min=1, help="finished trials wanted (default tune.trials)")] = None,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (default: SQLite in RUN_DIR/tune; postgresql://... shared)")
    ] = None,
    timeout: Annotated[float | None, typer.Option(min=0, help="start no trial after this many seconds")] = None,
    workers: Annotated[int, typer.Option(min=1, help="worker processes on this machine sharing the study")] = 1,
) -> None:
    """Search the recipe and the student size on the validation split; promote the best student, test it."""
    from .job import load_job
    from .tune import run_tune
    from .tune.summary import trials_table

    j = load_job(job)
    rd = run_tune(j.spec, run_dir or j.default_run_dir(), trials, storage, timeout, log=_say, workers=workers)
    out.print(_table(*trials_table(json.loads((rd.root / "tune" / "summary.json").read_text()))))
    print_results(rd.root)


def _stage(name: str, run_dir: Path, force: bool) -> None:
    from .config import load_spec
    from .pipeline import run_pipeline

    if not (run_dir / "job.yaml").exists():
        raise PotstillError(f"{run_dir}: no job.yaml here; start a run with `potstill run JOB.yaml`")
    spec = load_spec(run_dir / "job.yaml")
    run_pipeline(spec, run_dir, only=[name], force=force, log=_say)


@app.command()
@_guard
def generate(run_dir: RunDirArg, force: ForceOpt = False) -> None:
    """Stage 1: the teacher answers the training and validation prompts (cached, resumable)."""
    _stage("generate", run_dir, force)


@app.command()
@_guard
def validate(run_dir: RunDirArg, force: ForceOpt = False) -> None:
    """Stage 2: filter the teacher's outputs; write data/ and the reasons for each rejection."""
    _stage("validate", run_dir, force)


@app.command()
@_guard
def train(run_dir: RunDirArg, force: ForceOpt = False) -> None:
    """Stage 3: fine-tune the student on the kept teacher outputs (several processes under `accelerate launch`)."""
    from .train.dist import cpu_fanout, spawn_cpu_workers

    if n := cpu_fanout():
        raise typer.Exit(spawn_cpu_workers(n, sys.argv[1:]))
    _stage("train", run_dir, force)


@app.command()
@_guard
def evaluate(run_dir: RunDirArg, force: ForceOpt = False) -> None:
    """Stage 4: teacher, baseline and distilled student side by side."""
    _stage("evaluate", run_dir, force)
    print_results(run_dir)


@app.command()
@_guard
def report(run_dir: RunDirArg, force: ForceOpt = False) -> None:
    """Stage 5: write report/ from the run's files and print the comparison."""
    _stage("report", run_dir, force)
    print_results(run_dir)


@app.command()
@_guard
def status(run_dir: RunDirArg) -> None:
    """Each stage's state, counts and elapsed time."""
    from .run_dir import STAGES, RunDir

    rd = RunDir(run_dir)
    if not rd.state_path.exists():
        raise PotstillError(f"{run_dir}: not a potstill run folder (no state.json)")
    stages = rd.state().get("stages", {})
    table = Table("stage", "status", "elapsed", "counts", title=str(run_dir), title_justify="left")
    for name in STAGES:
        s = stages.get(name, {})
        st = s.get("status", "pending")
        if st == "running" and s.get("started"):
            elapsed = f"{time.time() - s['started']:.0f}s so far"
        else:
            elapsed = f"{s['elapsed_s']:.1f}s" if s.get("elapsed_s") is not None else "–"
        counts = s.get("counts") or ({"error": s["error"]} if s.get("error") else {})
        table.add_row(name, st, elapsed, json.dumps(counts, default=str)[:120])
    out.print(table)


@app.command("export")
@_guard
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (its student/) or a model folder")],
    format: Annotated[
        list[str],
        typer.Option(
            "--format", "-f", help="hf | onnx | onnx-int8 | gguf | gguf-q8_0 | gguf-q4_k_m; repeat or comma-separate"
        ),
    ] = ["hf"],  # noqa: B006  (typer reads the default; it is never mutated)
    out_dir: Annotated[Path | None, typer.Option("--out", help="where to write (default RUN_DIR/export)")] = None,
    prompts: Annotated[int, typer.Option(help="fixed prompts for the parity check and timing")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="greedy tokens per parity prompt")] = 32,
    min_int8_agreement: Annotated[
        float, typer.Option(help="share of prompts whose quantized (onnx-int8, gguf-q*) greedy answer equals torch's")
    ] = 0.5,
    measure: Annotated[
        int, typer.Option(min=0, help="evaluate torch and each format on this many test rows (0: skip)")
    ] = 200,
) -> None:
    """Export the distilled student (merged HF, ONNX, ONNX int8, GGUF), check parity, write the model card."""
    from .exporter import export
    from .exporter.measure import table, teacher_table

    done = export(run_dir, format, out_dir, prompts, max_new_tokens, min_int8_agreement, _say, measure)
    for fmt, path in done.items():
        out.print(f"{fmt}: {path}  (model card: {path / 'README.md'})")
    manifest = next(iter(done.values())).parent / "manifest.json" if done else None
    measured = json.loads(manifest.read_text()).get("measured") if manifest and manifest.exists() else None
    if measured:
        title = f"each format on {measured['rows']} {measured['split']} rows (greedy; p50 at batch 1)"
        out.print(_table(*table(measured), title=title))
        if against := teacher_table(measured):
            out.print(_table(*against, title="against the teacher in torch (p50 at batch 1; weights in memory)"))


@app.command()
@_guard
def serve(
    path: Annotated[Path, typer.Argument(help="a model folder, an ONNX or GGUF export folder, or a run folder")],
    host: Annotated[
        str, typer.Option(help="interface to bind; 0.0.0.0 exposes it to the network (needs --api-key-env)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    format: Annotated[
        str, typer.Option(help="for a run folder: auto (student/) | hf | onnx | onnx-int8 | gguf | gguf-q8_0 | ...")
    ] = "auto",
    model_name: Annotated[str | None, typer.Option(help="the model id clients send (default: folder name)")] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="NAME of the env variable holding the key clients must send as Bearer")
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps (torch models)")] = "auto",
    max_tokens: Annotated[int, typer.Option(help="cap on max_tokens per request (and its default)")] = 512,
    max_messages: Annotated[int, typer.Option(help="cap on messages per request")] = 64,
    max_body_bytes: Annotated[int, typer.Option(help="cap on the request body size")] = 1 << 20,
    max_batch: Annotated[int, typer.Option(help="requests decoded together")] = 8,
    max_queue: Annotated[int, typer.Option(help="requests that may wait for the model; more get 503")] = 64,
    request_timeout: Annotated[
        float, typer.Option(help="seconds a request may take, queueing included (504 after); 0: no limit")
    ] = 300.0,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="allow a non-loopback --host without --api-key-env")
    ] = False,
) -> None:
    """Serve a student with an OpenAI-compatible API (/v1/chat/completions, /v1/models, /health)."""
    from .server import serve as run_server

    run_server(
        path,
        host=host,
        port=port,
        format=format,
        model_name=model_name,
        api_key_env=api_key_env,
        device=device,
        max_tokens=max_tokens,
        max_messages=max_messages,
        max_body_bytes=max_body_bytes,
        max_batch=max_batch,
        max_queue=max_queue,
        request_timeout=request_timeout,
        insecure=insecure,
        log=_say,
    )


@app.command()
@_guard
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="two or more run folders (one works too)")],
    model: Annotated[
        list[str] | None, typer.Option("--model", help="only rows of this model (repeatable), e.g. distilled")
    ] = None,
    markdown: Annotated[Path | None, typer.Option(help="also write the tables to this markdown file")] = None,
) -> None:
    """Several runs side by side: each model's scores with CIs, speed, memory, and the settings that differ."""
    from .report.compare import compare_markdown, compare_rows, load_runs, spec_differences
    from .run_dir import atomic_write_text

    runs = load_runs(run_dirs)
    out.print(_table(*compare_rows(runs, model), title="runs side by side (95 % CIs in brackets)"))
    header, rows = spec_differences(runs)
    if rows:
        out.print(_table(header, rows, title="settings that differ"))
    if markdown is not None:
        atomic_write_text(markdown, compare_markdown(runs, model))
        out.print(f"written: {markdown}")


@app.command()
@_guard
def demo(
    quick: Annotated[bool, typer.Option("--quick", help="a smaller slice, under two minutes")] = False,
    run_dir: Annotated[
        Path | None, typer.Option(help="where the demo writes (default runs/demo, or runs/demo-quick)")
    ] = None,
) -> None:
    """The offline demo: distil the shipped 2.7M-parameter teacher into a 10× smaller student, compare them."""
    from .demo import check_targets, default_run_dir, run_demo

    t0 = time.perf_counter()
    rd = run_demo(run_dir or default_run_dir(quick), quick=quick, log=_say)
    print_results(rd)
    results = json.loads((rd / "eval" / "results.json").read_text())
    aside = " (set for the full demo; --quick trains for 800 steps, not 2,200)" if quick else ""
    out.print(f"the demo's targets{aside}:")
    for what, measured, ok in check_targets(results):
        out.print(f"  {'✓' if ok else '✗'} {what}: {measured}", highlight=False)
    took = time.perf_counter() - t0
    limit = 120 if quick else 600  # the targets on a 2-core machine
    clock = f"{int(took // 60)} min {took % 60:.0f} s"
    out.print(f"  {'✓' if took <= limit else '✗'} the whole demo ≤ {limit // 60} minutes: {clock}", highlight=False)


def main() -> None:
    app(prog_name="potstill")


if __name__ == "__main__":
    sys.exit(main())
