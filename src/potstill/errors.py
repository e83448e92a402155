"""potstill's one exception tree.

    PotstillError                 base of everything potstill raises on purpose
    ├── ConfigError               the job spec is wrong (all problems listed at once)
    ├── DataError                 an input file is missing, empty or malformed (file:line: what, how to fix)
    ├── TeacherError              the teacher cannot be reached or refuses (auth, too many failures, budget)
    ├── TrainingError             the student cannot be trained (tokenizer mismatch, no data left, ...)
    ├── EvaluationError           evaluation cannot run (no split to score, unknown model)
    └── ExportError               export or its parity check failed

CLI exit codes: 2 for ConfigError and DataError (the user's input is wrong), 1 for every other PotstillError.
Messages never contain secrets: keys are named by their variable, never printed.
"""

from __future__ import annotations


class PotstillError(Exception):
    """Base class. ``str(err)`` is one line a user can act on."""

    exit_code = 1


class ConfigError(PotstillError):
    """The job spec is invalid. ``problems`` holds every problem, one line each."""

    exit_code = 2

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        lines = [f"{prefix}{p}" for p in self.problems]
        head = f"{len(lines)} problem(s) in the job spec" if len(lines) > 1 else lines[0]
        super().__init__(head if len(lines) == 1 else head + ":\n  " + "\n  ".join(lines))


class DataError(PotstillError):
    """An input data file is missing, empty or malformed."""

    exit_code = 2


class TeacherError(PotstillError):
    """The teacher failed in a way that stops the stage."""


class TrainingError(PotstillError):
    """Training the student cannot proceed."""


class EvaluationError(PotstillError):
    """Evaluation cannot proceed."""


class ExportError(PotstillError):
    """Export failed or its parity check did not hold."""
