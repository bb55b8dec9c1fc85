"""Live curves: `regimes run --log tensorboard|mlflow|wandb` sends what the run records to the
logger as it trains; checked by reading each logger's own files back with its own reader."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")

from regimes.cli import main
from regimes.records import RunDirectory

ARGS = ["run", "mlp-breast-cancer", "--quiet", "--threads", "1", "--set", "max_epochs=2"]


@pytest.fixture(autouse=True)
def _data(tmp_path, monkeypatch):
    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "data"))


def test_tensorboard_gets_every_measurement_and_epoch_while_the_run_trains(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from regimes.experiment import Callback, get_preset, train_run

    seen = []

    class ReadAfterEpochOne(Callback):  # what a user's TensorBoard shows while the run trains
        def on_epoch_end(self, run, **kwargs):
            if run.epoch == 1:
                events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
                events.Reload()
                seen.append(len(events.Scalars("regimes/delta_w")))

    config = get_preset("mlp-breast-cancer").replace(max_epochs=2)
    summary = train_run(config, tmp_path / "run", log=["tensorboard"], callbacks=[ReadAfterEpochOne()])
    assert seen == [summary["batches_per_epoch"]]  # the first epoch's curve, before the second began
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    steps = RunDirectory(tmp_path / "run").read_steps()
    for tag, column in (("regimes/delta_w", "dw"), ("regimes/delta_a", "da")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == steps["iteration"].tolist()
        np.testing.assert_allclose([s.value for s in scalars], steps[column], rtol=1e-6)  # stored as float32
    epochs = RunDirectory(tmp_path / "run").read_epochs()
    np.testing.assert_allclose(
        [s.value for s in events.Scalars("epoch/val_score")], [r["val_score"] for r in epochs], rtol=1e-6
    )


@pytest.mark.slow
def test_mlflow_and_wandb_runs_hold_the_curves(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    from test_integrations import wandb_history

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default
    out = tmp_path / "run"
    assert main([*ARGS, "--out", str(out), "--log", "mlflow", "--log", "wandb"]) == 0
    steps = RunDirectory(out).read_steps()

    client = mlflow.tracking.MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("regimes").experiment_id])
    history = sorted(client.get_metric_history(run.info.run_id, "regimes/delta_a"), key=lambda m: m.step)
    assert [m.step for m in history] == steps["iteration"].tolist()
    np.testing.assert_allclose([m.value for m in history], steps["da"], rtol=1e-12)
    assert run.data.params["lr"] == "0.01" and run.info.status == "FINISHED"

    deadline, logged = time.time() + 30, {}
    while time.time() < deadline:  # W&B's service writes the offline file on its own schedule
        (run_file,) = out.glob("wandb/offline-run-*/run-*.wandb")
        logged = {
            int(row["_step"]): float(row["regimes/delta_w"])
            for row in wandb_history(run_file)
            if "regimes/delta_w" in row
        }
        if len(logged) >= len(steps["iteration"]):
            break
        time.sleep(0.5)
    assert sorted(logged) == steps["iteration"].tolist()
    np.testing.assert_allclose([logged[s] for s in sorted(logged)], steps["dw"], rtol=1e-12)


def test_an_unknown_logger_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert main([*ARGS, "--out", str(tmp_path / "run"), "--log", "tensorbord"]) == 2
    err = capsys.readouterr().err
    assert "tensorbord" in err and "tensorboard" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
