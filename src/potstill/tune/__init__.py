"""potstill tune: an Optuna search over the train stage's settings (docs/tuning.md).

    run_tune(spec, run_dir, trials=None, storage=None, timeout=None, log=None)   # see tune/run.py

space.py (a sampled point -> a trial's spec), pruning.py (the metric reported during training), trial.py (one
trial's folder and objective), study.py (storage, sampler, pruner, resume), summary.py (summary.json, the line
per trial, the winner's promotion), run.py (the whole tune).
"""

from .run import run_tune

__all__ = ["run_tune"]
