"""Optional experiment trackers (``hyperparameters.report_to``): the training curves also go to TensorBoard or MLflow.

logs/events.jsonl always holds every step; trackers are extra views of the same numbers. Both are optional
installs (`pip install tensorboard` / `pip install mlflow`); asking for one that is missing is a clear error.
TensorBoard writes to logs/tensorboard/; MLflow logs to $MLFLOW_TRACKING_URI, or to logs/mlruns/ without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import TrainingError

CURVES = ("loss", "ce", "kd", "hidden", "lr", "val_loss")


def _need(package: str, name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise TrainingError(
            f"hyperparameters.report_to lists {name!r} but the {name} package is not installed: "
            f"pip install {name} (or remove it from report_to)"
        ) from None


class Trackers:
    def __init__(self, names: list[str], logs: Path, run_name: str, params: dict[str, Any]) -> None:
        self.tb: Any = None
        self.mlflow: Any = None
        if "tensorboard" in names:
            _need("tensorboard", "tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(logs / "tensorboard"))
        if "mlflow" in names:
            mlflow = _need("mlflow", "mlflow")
            mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or (logs / "mlruns").resolve().as_uri())
            mlflow.set_experiment("potstill")
            mlflow.start_run(run_name=run_name)
            mlflow.log_params({k: str(v)[:250] for k, v in params.items()})
            self.mlflow = mlflow

    def log(self, event: str, fields: dict[str, Any]) -> None:
        if event != "step":
            return
        step = fields["step"]
        scalars = {k: float(fields[k]) for k in CURVES if fields.get(k) is not None}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"train/{k}" if k != "val_loss" else "validation/loss", v, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.end_run()
