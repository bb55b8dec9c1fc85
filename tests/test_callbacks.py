"""The training loop's callbacks: the contract every callback keeps, the order and count of
the calls, and a callback's own state carried across a resume."""

from __future__ import annotations

import inspect
import sys

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")

from regimes.experiment import Callback, get_preset, train_run
from regimes.experiment.callbacks import Checkpoint, EarlyStopping, EpochRecords, ProgressBar
from regimes.records import RunDirectory

HOOKS = [name for name in vars(Callback) if name.startswith("on_")]


def every_callback() -> list[type]:
    """Every Callback subclass the package defines (a new one is tested the moment it exists)."""
    found, todo = [], [Callback]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("regimes."):
                found.append(sub)
            todo.append(sub)
    return found


def test_the_package_callbacks_are_all_found():
    assert {EarlyStopping, EpochRecords, Checkpoint, ProgressBar} <= set(every_callback())


@pytest.mark.parametrize("callback", every_callback(), ids=lambda c: c.__name__)
def test_callback_contract(callback):
    """Each hook takes the run and **kwargs (skorch's shape), so new arguments never break it;
    state_dict() gives a dict."""
    for hook in HOOKS:
        parameters = list(inspect.signature(getattr(callback, hook)).parameters.values())
        assert parameters[0].name == "self" and parameters[1].name == "run", (callback, hook)
        assert parameters[-1].kind is inspect.Parameter.VAR_KEYWORD, (callback, hook)
    state = callback.state_dict(callback.__new__(callback))
    assert isinstance(state, dict)


class Recording(Callback):
    """Keeps the sequence of calls, and a count that must survive a resume."""

    def __init__(self, stop_at=None):
        self.stop_at = stop_at
        self.calls_ = []
        self.steps_seen_ = 0

    def on_train_begin(self, run, **kwargs):
        self.calls_.append(("begin", run.epoch))

    def on_step_end(self, run, loss, **kwargs):
        self.steps_seen_ += 1
        assert loss.requires_grad is not None and run.tracker.iteration == self.steps_seen_

    def on_epoch_end(self, run, row, **kwargs):
        self.calls_.append(("epoch", run.epoch, self.steps_seen_))
        assert row["epoch"] == run.epoch and run.epochs[-1] is row
        if run.epoch == self.stop_at:
            raise KeyboardInterrupt

    def on_train_end(self, run, **kwargs):
        self.calls_.append(("end", run.status))

    def on_interrupt(self, run, **kwargs):
        self.calls_.append(("interrupt", run.epoch))

    def state_dict(self):
        return {"steps_seen": self.steps_seen_}

    def load_state_dict(self, state):
        self.steps_seen_ = state.get("steps_seen", 0)


def test_calls_come_in_order_and_a_callback_state_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "data"))
    config = get_preset("mlp-breast-cancer").replace(max_epochs=3, patience=10)
    whole = Recording()
    summary = train_run(config, tmp_path / "whole", callbacks=[whole])
    per_epoch = summary["batches_per_epoch"]
    assert whole.calls_ == [
        ("begin", 0),
        ("epoch", 1, per_epoch),
        ("epoch", 2, 2 * per_epoch),
        ("epoch", 3, 3 * per_epoch),
        ("end", "finished"),
    ]

    cut = Recording(stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        train_run(config, tmp_path / "cut", callbacks=[cut])
    assert cut.calls_[-1] == ("interrupt", 2)
    assert RunDirectory(tmp_path / "cut").read_summary()["status"] == "interrupted"
    resumed = Recording()
    train_run(config, tmp_path / "cut", resume=True, callbacks=[resumed])
    # Restored from the epoch-2 checkpoint: the count goes on where it was.
    assert resumed.calls_ == [("begin", 2), ("epoch", 3, 3 * per_epoch), ("end", "finished")]


def test_a_run_without_matplotlib_finishes_and_skips_its_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "data"))
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    summary = train_run(get_preset("mlp-breast-cancer").replace(max_epochs=1), tmp_path / "run")
    assert summary["status"] == "finished"
    run = RunDirectory(tmp_path / "run")
    assert run.read_summary()["status"] == "finished" and not run.figure_path.exists()


@pytest.mark.parametrize("reading", ["layerwise", "global"])
def test_the_headline_rho_is_the_configured_weight_change(tmp_path, monkeypatch, reading):
    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "data"))
    summary = train_run(get_preset("mlp-breast-cancer").replace(max_epochs=3, weight_change=reading), tmp_path / "run")
    steps = RunDirectory(tmp_path / "run").read_steps()
    per_epoch = summary["batches_per_epoch"]
    from regimes import summarize

    assert summary["rho_global"] == summarize(steps["dw"], steps["da"], per_epoch)["rho"]
    assert summary["rho_layerwise"] == summarize(steps["dw_layerwise"], steps["da"], per_epoch)["rho"]
    assert (
        summary["rho"]
        == summary[f"rho_{reading}"]
        != summary["rho_global" if reading == "layerwise" else "rho_layerwise"]
    )


def test_online_detection_in_the_runner_equals_the_detector_fed_the_written_curves(tmp_path, monkeypatch):
    from regimes.detect import RegimeChangeDetector

    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "data"))

    class Events(Callback):
        def __init__(self):
            self.seen_ = []

        def on_regime_change(self, run, event, iteration, **kwargs):
            self.seen_.append((event, iteration))

    events = Events()
    config = get_preset("mlp-breast-cancer").replace(max_epochs=8, patience=10)
    summary = train_run(config, tmp_path / "run", callbacks=[events])
    steps = RunDirectory(tmp_path / "run").read_steps()
    reference, told = RegimeChangeDetector(summary["batches_per_epoch"], 0.1), []
    for dw, da in zip(steps["dw_layerwise"], steps["da"]):
        told += reference.update(dw, da)
    assert (summary["settled_w_online"], summary["settled_p_online"]) == (reference.settled_w, reference.settled_p)
    # Every event reached the callback, in order, with its optimizer step (at tau 0.1 this run
    # tells none: tests/test_run.py holds the events themselves, at tau 0.5, for every host).
    assert [e for e, _ in events.seen_] == told
    assert all(it == (e.step if e.step is None else e.step * config.track_every) for e, it in events.seen_)


def test_the_per_tensor_weight_change_is_a_long_table_that_resumes(tmp_path, monkeypatch):
    """RUN/tensor_steps: one row per (iteration, tensor); its mean over tensors is the steps
    table's dw_layerwise, its size-weighted mean is dw; a resumed run writes the same table."""
    import pandas as pd

    from regimes.zoo import create_model

    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "data"))
    config = get_preset("mlp-breast-cancer").replace(max_epochs=3, patience=10)
    train_run(config, tmp_path / "whole")
    run = RunDirectory(tmp_path / "whole")
    long = pd.read_parquet(tmp_path / "whole" / "tensor_steps")
    assert list(long.columns) == ["iteration", "epoch", "tensor", "dw"]
    wide = long.pivot(index="iteration", columns="tensor", values="dw")
    steps = run.read_steps()
    np.testing.assert_array_equal(wide.index.to_numpy(), steps["iteration"])
    sizes = {n: p.numel() for n, p in create_model(config.model, **config.model_args).named_parameters()}
    names = list(sizes)
    np.testing.assert_allclose(wide[names].mean(axis=1).to_numpy(), steps["dw_layerwise"], rtol=1e-12)
    weighted = (wide[names] * pd.Series(sizes)).sum(axis=1) / sum(sizes.values())
    np.testing.assert_allclose(weighted.to_numpy(), steps["dw"], rtol=1e-10)

    class StopAfterTwo(Callback):
        def on_epoch_end(self, run, **kwargs):
            if run.epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(config, tmp_path / "cut", callbacks=[StopAfterTwo()])
    RunDirectory(tmp_path / "cut").append_tensor_steps([10_000], 9, names, np.ones((1, len(names))))  # a killed write
    train_run(config, tmp_path / "cut", resume=True)
    pd.testing.assert_frame_equal(long, pd.read_parquet(tmp_path / "cut" / "tensor_steps"))


def test_a_run_that_fails_after_its_first_epoch_says_so_and_keeps_its_records(tmp_path, monkeypatch):
    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "data"))

    class OutOfMemoryAtEpochTwo(Callback):
        def on_epoch_end(self, run, **kwargs):
            if run.epoch == 2:
                raise RuntimeError("out of memory (simulated)")

    config = get_preset("mlp-breast-cancer").replace(max_epochs=4, patience=10)
    with pytest.raises(RuntimeError, match="out of memory"):
        train_run(config, tmp_path / "run", callbacks=[OutOfMemoryAtEpochTwo()])
    run = RunDirectory(tmp_path / "run")
    summary = run.read_summary()
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: out of memory (simulated)"
    assert summary["stop_epoch"] == 2 and len(run.read_epochs()) == 2 and len(run.read_steps()["iteration"]) > 0
