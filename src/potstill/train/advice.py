"""Was the training long enough? A check on a finished training's loss history, for the console and the report.

    still_improving(history) -> Improving | None
    why_it_stopped(summary) -> str | None     # max_steps: auto and max_minutes: why the training ended

``history``: the per-step records of a training (``training_summary.json``'s "history", or the report's step
events): {"step", "loss", "val_loss"?}. The validation loss decides when there is one measured at or before 90 %
of the steps and one at the end: it is "still improving" when it fell by at least ``MIN_DROP`` over the last tenth
(from the last measurement at or before 90 % of the steps to the last one). Without such validation points the
training loss decides: the mean over the last 5 % of the steps against the mean over the 5 % before, with the
larger threshold ``MIN_DROP_TRAIN`` (a training loss is noisier).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIN_DROP = 0.02  # relative fall of the validation loss over the last tenth that counts as still improving
MIN_DROP_TRAIN = 0.05


@dataclass(frozen=True)
class Improving:
    kind: str  # "validation" | "training"
    from_step: int
    to_step: int
    before: float
    after: float

    @property
    def drop_pct(self) -> float:
        return 100.0 * (self.before - self.after) / self.before

    def message(self) -> str:
        if self.kind == "validation":
            fell = (
                f"its validation loss fell from {self.before:.4g} at step {self.from_step:,} to {self.after:.4g} at "
                f"step {self.to_step:,}"
            )
        else:
            fell = (
                f"its training loss fell from {self.before:.4g} (mean of the 5 % of steps up to {self.from_step:,}) "
                f"to {self.after:.4g} (the last 5 %, up to step {self.to_step:,})"
            )
        return (
            f"the student is still improving: {fell} (−{self.drop_pct:.0f} %) at the end of its training; more steps "
            "would help (hyperparameters.max_steps or num_epochs)"
        )


def still_improving(history: list[dict[str, Any]]) -> Improving | None:
    steps = [h for h in history if isinstance(h.get("step"), int)]
    if len(steps) < 20:
        return None
    total = max(h["step"] for h in steps)
    val = [(h["step"], float(h["val_loss"])) for h in steps if h.get("val_loss") is not None]
    earlier = [v for v in val if v[0] <= 0.9 * total]
    if earlier and val and val[-1][0] == total:
        (s0, before), (s1, after) = earlier[-1], val[-1]
        if before > 0 and (before - after) / before >= MIN_DROP:
            return Improving("validation", s0, s1, before, after)
        return None
    losses = [(h["step"], float(h["loss"])) for h in steps if h.get("loss") is not None]
    k = max(1, len(losses) // 20)
    if len(losses) < 2 * k:
        return None
    prev, last = losses[-2 * k : -k], losses[-k:]
    before = sum(v for _, v in prev) / k
    after = sum(v for _, v in last) / k
    if before > 0 and (before - after) / before >= MIN_DROP_TRAIN:
        return Improving("training", prev[-1][0], last[-1][0], before, after)
    return None


def why_it_stopped(summary: dict[str, Any]) -> str | None:
    """Why a training ended, from training_summary.json, when that is news: the validation metric stopped
    improving (max_steps: auto) or the time cap (max_minutes) was reached; None for a fixed number of steps."""
    reason, steps = summary.get("stop_reason"), summary.get("steps")
    minutes = (summary.get("train_seconds") or 0) / 60
    name, value, best = summary.get("metric_name") or "metric", summary.get("metric"), summary.get("best_step")
    best_text = f"; its best validation {name}, {value:.4g} at step {best:,}, is kept" if value is not None else ""
    if reason == "plateau":
        return (
            f"training stopped at step {steps:,} after {minutes:.1f} min: the validation {name} had stopped improving"
            f"{best_text}"
        )
    if reason == "time":
        cap = (summary.get("max_seconds") or summary.get("train_seconds") or 0) / 60
        rising = value is not None and best == steps  # its last validation was its best
        more = "; it was still improving: a longer max_minutes would help" if rising else ""
        return (
            f"training stopped at its time cap ({cap:.3g} min, hyperparameters.max_minutes) at step {steps:,}"
            f"{best_text}{more}"
        )
    return None
