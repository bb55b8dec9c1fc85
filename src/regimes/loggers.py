"""Live curves where people look: what a `regimes.Run` records, sent to the loggers it is given.

    regimes run mlp-mnist --log tensorboard      # then: tensorboard --logdir runs/
    regimes run mlp-mnist --log mlflow --log wandb

A logger takes `log_metrics(metrics, step)` (float values by name, the optimizer step),
`flush()` (the run calls it after every epoch, so that a long run shows its curves as it
trains) and `close()`. What is sent: `regimes/delta_w`, `regimes/delta_a` (and
`regimes/delta_a/<site>` with `log_sites`) at every measurement, the epoch's metrics as
`epoch/<name>`, and the detector's events as `regimes/settled_w`, `regimes/settled_p`.

Each logger writes beside the run's own records unless told otherwise: TensorBoard's event
files in `RUN/tensorboard`, an MLflow run in `RUN/mlruns` (or the store MLFLOW_TRACKING_URI
names), a W&B run in `RUN/wandb` (offline unless WANDB_MODE says otherwise). Nothing is
created before the first value arrives, so a run that fails to start leaves no logger behind.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from regimes.extras import require
from regimes.registry import Registry

__all__ = ["LOGGERS", "TensorBoardLogger", "MLflowLogger", "WandbLogger", "make_loggers"]

LOGGERS = Registry("logger")


@LOGGERS.register("tensorboard")
class TensorBoardLogger:
    """Scalars in TensorBoard event files (`folder`, made at the first value)."""

    def __init__(self, folder, config: Mapping | None = None) -> None:
        self.folder, self.writer = Path(folder) / "tensorboard", None
        require("tensorboard", "--log tensorboard")  # a missing extra: one line before the run starts

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.folder))
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@LOGGERS.register("mlflow")
class MLflowLogger:
    """An MLflow run (experiment "regimes") in `RUN/mlruns`, or in MLFLOW_TRACKING_URI's store;
    the run's config as its parameters."""

    def __init__(self, folder, config: Mapping | None = None) -> None:
        self.mlflow = require("mlflow", "--log mlflow")
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or (Path(folder).absolute() / "mlruns").as_uri()
        self.config, self.client, self.run_id = dict(config or {}), None, None
        self.name = Path(folder).name

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric, Param

        if self.client is None:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps a file store behind this
            self.client = self.mlflow.tracking.MlflowClient(tracking_uri=self.uri)
            experiment = self.client.get_experiment_by_name("regimes")
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("regimes")
            self.run_id = self.client.create_run(experiment_id, run_name=self.name).info.run_id
            params = [Param(k, str(v)[:500]) for k, v in _flat(self.config).items()]
            for start in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[start : start + 100])
        stamp = _milliseconds()
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in metrics.items()])

    def flush(self) -> None:
        pass  # every log_batch is written when it returns

    def close(self) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id)
            self.client = None


@LOGGERS.register("wandb")
class WandbLogger:
    """A W&B run (project "regimes") in `RUN/wandb`, offline unless WANDB_MODE says otherwise
    (`wandb sync RUN/wandb/offline-run-*` uploads it later)."""

    def __init__(self, folder, config: Mapping | None = None) -> None:
        self.wandb = require("wandb", "--log wandb")
        self.folder, self.config, self.run = Path(folder), dict(config or {}), None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.run is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.run = self.wandb.init(
                project="regimes",
                name=self.folder.name,
                dir=str(self.folder),
                mode=os.environ.get("WANDB_MODE", "offline"),
                config=self.config,
                reinit="create_new",
            )
        self.run.log(dict(metrics), step=step)

    def flush(self) -> None:
        pass  # W&B's service writes on its own schedule

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def make_loggers(names, folder, config: Mapping | None = None) -> list:
    """The loggers `names` ("tensorboard", "mlflow", "wandb") for the run in `folder`; an
    unknown name is one message with the known ones, a missing package names its extra."""
    return [LOGGERS.get(name)(folder, config) for name in dict.fromkeys(names)]


def _flat(config: Mapping, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _milliseconds() -> int:
    import time

    return int(time.time() * 1000)
