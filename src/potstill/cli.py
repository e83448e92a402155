"""The command line: thin typer wrappers around the public functions.

    potstill run job.yaml [--run-dir runs/NAME]      every stage, resuming a previous run
    potstill generate|validate|train|evaluate|report RUN_DIR     one stage of an existing run
    potstill status RUN_DIR                          each stage's state, counts and time
    potstill compare RUN_DIR... [--model NAME]       several runs side by side
    potstill demo [--quick]                          the offline demo

Exit codes: 0 ok, 2 bad input (spec or data), 1 any other failure. Errors are one line each, on stderr.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import PotstillError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Distil a large teacher into a small student.")
out = Console()
err = Console(stderr=True)

RunDirArg = Annotated[Path, typer.Argument(help="a run folder made by `potstill run`")]
ForceOpt = Annotated[bool, typer.Option("--force", help="re-run even when done with unchanged inputs")]


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PotstillError as exc:
            err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted: finished work is saved; run the same command again to resume")
            raise typer.Exit(130) from None

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
    from .report.tables import comparison_rows, derived_lines

    path = run_dir / "eval" / "results.json"
    if not path.exists():
        return
    results = json.loads(path.read_text())
    out.print(_table(*comparison_rows(results), title="teacher vs student (95 % CIs in brackets)"))
    for line in derived_lines(results):
        out.print(f"  {line}")
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
    """Stage 3: fine-tune the student on the kept teacher outputs."""
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
    quick: Annotated[bool, typer.Option("--quick", help="a smaller slice, about a minute")] = False,
    run_dir: Annotated[Path, typer.Option(help="where the demo writes")] = Path("runs/demo"),
) -> None:
    """The offline demo: train a small teacher, distil it into a smaller student, compare them."""
    from .demo import run_demo

    rd = run_demo(run_dir, quick=quick, log=_say)
    print_results(rd)


def main() -> None:
    app(prog_name="potstill")


if __name__ == "__main__":
    sys.exit(main())
