"""One run lifecycle (`regimes.Run`) for every host.

The same curves, fed through the runner, the Lightning, Trainer and accelerate adapters and a
plain loop, give the same summary (window, steps, AUCs, rho under both readings, t_tau and the
online detector's settle steps) and the same steps table: measuring every step and every
second step, with an uneven last batch. The curves are scripted (`ScriptedTracker`: the k-th
measurement of every host is the same number), so that any difference is the lifecycle's.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")
import torch
from torch import nn

import regimes
import regimes.run
from regimes import analysis
from regimes.detect import RegimeChangeDetector
from regimes.experiment import get_preset, train_run
from regimes.records import RunDirectory

EPOCHS = 6
COMPARED = (
    "window",
    "steps",
    "batches_per_epoch",
    "auc_w",
    "auc_p",
    "rho",
    "rho_global",
    "rho_layerwise",
    "stabilization_w",
    "stabilization_p",
    "settled_w_online",
    "settled_p_online",
    "stop_epoch",
)


def scripted(k: np.ndarray) -> dict[str, np.ndarray]:
    """The curves measured at optimizer step k (k = 1, 2, ...): both decay, the pattern first, with a
    wiggle so that no window is flat; the detector settles both within the run."""
    wiggle = 0.02 * np.sin(1.7 * k)
    return {
        "dw": np.exp(-k / 12) + 0.1 + wiggle,
        "dw_layerwise": np.exp(-k / 10) + 0.2 + wiggle,
        "da": np.exp(-k / 4) + 0.05 + wiggle,
    }


class ScriptedTracker(regimes.Tracker):
    """A real tracker (sites, probe, state) whose measurements are `scripted`, by optimizer step."""

    def step(self) -> None:
        self.iteration += 1
        if self.iteration % self.every:
            return
        k = np.array([self.iteration])
        curves = scripted(k)
        values = {c: curves["dw"] for c in self.history.columns if c.startswith("dw:")}
        values.update({c: curves["da"] for c in self.history.columns if c.startswith("da:")})
        values.update({c: np.zeros(1) for c in self.history.columns if c not in values})
        values.update(curves)
        self.history.append(np.array([self.iteration]), values)


@pytest.fixture
def scripted_trackers(monkeypatch, tmp_path):
    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(regimes, "Tracker", ScriptedTracker)  # the runner's setup builds regimes.Tracker
    monkeypatch.setattr(regimes.run, "Tracker", ScriptedTracker)  # Run.watch, and so every adapter
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def data(n: int, seed: int = 0) -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 30, generator=generator)
    return torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 2))


# ---------------------------------------------------------------------- the hosts


def through_runner(out, every: int) -> dict:
    config = get_preset("mlp-breast-cancer").replace(max_epochs=EPOCHS, patience=EPOCHS + 1, track_every=every)
    return dict(train_run(config, out))


def through_plain_loop(out, every: int, n: int, batch_size: int) -> dict:
    model, train = mlp(), data(n)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    run = regimes.Run(out)
    tracker = run.watch(model, train.tensors[0][:6], every=every, optimizer=optimizer)
    for epoch in range(1, EPOCHS + 1):
        for x, y in torch.utils.data.DataLoader(train, batch_size=batch_size):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            tracker.step()
        run.end_epoch(epoch, {"val_score": 0.5})
    return dict(run.finish())


def through_lightning(out, every: int, n: int, batch_size: int) -> dict:
    L = pytest.importorskip("lightning")
    from regimes.integrations.lightning import RegimesCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-2)

    train = data(n)
    callback = RegimesCallback(train.tensors[0][:6], out=out, every=every)
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(Module(), torch.utils.data.DataLoader(train, batch_size=batch_size))
    return dict(callback.summary)


class HostModel(nn.Module):
    """What the Trainer takes: inputs and labels by name, a loss in the output."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x, labels=None):
        logits = self.net(x)
        return (
            {"logits": logits}
            if labels is None
            else {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}
        )


def through_trainer(out, every: int, n: int, batch_size: int) -> dict:
    transformers = pytest.importorskip("transformers")
    from regimes.integrations.huggingface import RegimesCallback

    train = data(n)
    rows = [{"x": x, "labels": y} for x, y in zip(*train.tensors)]
    callback = RegimesCallback({"x": train.tensors[0][:6]}, out=out, every=every)
    args = transformers.TrainingArguments(
        output_dir=str(out.parent / "trainer"),
        per_device_train_batch_size=batch_size,
        num_train_epochs=EPOCHS,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
    )
    trainer = transformers.Trainer(model=HostModel(), args=args, train_dataset=rows)
    callback.attach(trainer)
    trainer.train()
    return dict(callback.summary)


def through_accelerate(out, every: int, n: int, batch_size: int) -> dict:
    accelerate = pytest.importorskip("accelerate")
    from regimes.integrations.accelerate import RegimesTracking

    accelerator = accelerate.Accelerator(cpu=True)
    model, train = mlp(), data(n)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    tracking = RegimesTracking(
        accelerator,
        model,
        train.tensors[0][:6],
        out=out,
        every=every,
        epochs=EPOCHS,
        optimizer=optimizer,
        batch_size=batch_size,
    )
    for epoch in range(1, EPOCHS + 1):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            tracking.step()
        tracking.end_epoch(epoch)
    return dict(tracking.finish())


HOSTS = {
    "plain loop": through_plain_loop,
    "lightning": through_lightning,
    "trainer": through_trainer,
    "accelerate": through_accelerate,
}


@pytest.mark.slow
@pytest.mark.parametrize("every", [1, 2])
def test_the_same_curves_give_the_same_summary_through_every_host(tmp_path, scripted_trackers, every):
    runner = through_runner(tmp_path / "runner", every)
    n, batch_size = runner["train_size"], runner["batch_size"]
    assert n % batch_size not in (0, 1)  # an uneven last batch (of more than one sample)
    reference_steps = RunDirectory(tmp_path / "runner").read_steps()
    # The slow reference: the scripted curves through the analysis and a fresh detector.
    k = every * np.arange(1, runner["steps"] // every + 1)  # the optimizer steps measured
    curves = scripted(k)
    per_epoch = runner["batches_per_epoch"] // every
    expected = analysis.summarize(curves["dw_layerwise"], curves["da"], per_epoch)
    detector = RegimeChangeDetector(per_epoch)
    for dw, da in zip(curves["dw_layerwise"], curves["da"]):
        detector.update(dw, da)
    assert runner["rho"] == expected["rho"] and runner["window"] == expected["window"]
    assert runner["settled_p_online"] == detector.settled_p * every and runner["settled_w_online"] is not None
    assert runner["rho_global"] == analysis.summarize(curves["dw"], curves["da"], per_epoch)["rho"]
    for name, host in HOSTS.items():
        summary = host(tmp_path / name, every, n, batch_size)
        differing = {key: (summary[key], runner[key]) for key in COMPARED if not _same(summary[key], runner[key])}
        assert differing == {}, f"{name}: {differing}"
        # What the host knows of the run is recorded (the report shows no "?").
        assert summary["optimizer"] == ("adamw" if name == "trainer" else "sgd"), name  # the Trainer's default
        assert summary["lr"] == pytest.approx(1e-2), name
        assert summary["batch_size"] == (batch_size if name != "plain loop" else None), name
        steps = RunDirectory(tmp_path / name).read_steps()
        for column in ("iteration", "epoch", "dw", "dw_layerwise", "da"):
            np.testing.assert_array_equal(steps[column], reference_steps[column], err_msg=f"{name}: {column}")


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


# ---------------------------------------------------------------------- a plain loop


def plain_loop(out, epochs: int, *, resume_from: dict | None = None, stop_after: int | None = None) -> dict:
    """A user's loop on a seeded MLP; returns the checkpoint it would save at its last epoch."""
    torch.manual_seed(0)
    model, train = mlp(), data(100)
    optimizer = torch.optim.SGD(model.parameters(), lr=5e-2)
    run = regimes.Run(out, resume=resume_from is not None)
    first = 1
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        run.load_state_dict(resume_from["regimes"])
        first = resume_from["epoch"] + 1
    tracker = run.watch(model, train.tensors[0][:4], optimizer=optimizer)
    checkpoint = None
    for epoch in range(first, epochs + 1):
        order = torch.randperm(100, generator=torch.Generator().manual_seed(epoch))
        for batch in order.split(32):
            loss = nn.functional.cross_entropy(model(train.tensors[0][batch]), train.tensors[1][batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            tracker.step()
        run.end_epoch(epoch, {"train_loss": loss, "val_score": 1.0 / epoch})
        # What a user's checkpoint holds; torch.save / torch.load(weights_only=True) round trip.
        checkpoint = {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "regimes": run.state_dict(),
        }
        if epoch == stop_after:
            run.abort(KeyboardInterrupt())
            return checkpoint
    run.finish()
    return checkpoint


def test_a_plain_loop_writes_the_runner_s_run_directory_and_resumes_to_the_same_records(tmp_path):
    import io

    plain_loop(tmp_path / "whole", 5)
    saved = plain_loop(tmp_path / "cut", 5, stop_after=3)
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    assert RunDirectory(tmp_path / "cut").read_summary()["status"] == "interrupted"
    plain_loop(tmp_path / "cut", 5, resume_from=torch.load(buffer, weights_only=True))  # plain data only
    whole, cut = RunDirectory(tmp_path / "whole"), RunDirectory(tmp_path / "cut")
    for column, values in whole.read_steps().items():
        np.testing.assert_array_equal(cut.read_steps()[column], values, err_msg=column)
    assert cut.read_epochs() == whole.read_epochs()
    summary, resumed = dict(whole.read_summary()), dict(cut.read_summary())
    for key in (
        "rho",
        "rho_global",
        "auc_w",
        "auc_p",
        "window",
        "steps",
        "batches_per_epoch",
        "best_score",
        "stabilization_w",
        "stabilization_p",
        "settled_w_online",
        "settled_p_online",
        "stop_epoch",
        "status",
    ):
        assert resumed[key] == summary[key], key
    assert summary["status"] == "finished" and summary["optimizer"] == "sgd" and summary["lr"] == 5e-2
    assert whole.figure_path.is_file() and summary["integration"] == "loop"


def test_a_fresh_run_refuses_a_folder_with_records_and_one_writer_at_a_time(tmp_path):
    plain_loop(tmp_path / "run", 1)
    with pytest.raises(FileExistsError, match="already holds this run"):
        plain_loop(tmp_path / "run", 1)
    holder = regimes.Run(tmp_path / "held")
    holder.open()
    from regimes.records import RunLockedError

    with pytest.raises(RunLockedError, match="is being written by process"):
        regimes.Run(tmp_path / "held").open()
    holder.close()
    regimes.Run(tmp_path / "held").open()  # released


@pytest.mark.slow
def test_the_plain_loop_example_gives_a_report_row(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("sklearn")
    example = Path(__file__).parents[1] / "examples" / "plain_loop.py"
    done = subprocess.run(
        [sys.executable, str(example), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    summary = RunDirectory(tmp_path / "run").read_summary()
    assert f"rho {summary['rho']:.2f}" in done.stdout
    assert (tmp_path / "run" / "figure.png").is_file()
    from regimes.report import format_table, study_table
    from regimes.runs import load_runs

    rows = study_table(load_runs([tmp_path / "run"]))
    assert len(rows) == 1 and "?" not in format_table(rows)


def test_plot_run_draws_a_tracker_and_a_run(tmp_path):
    pytest.importorskip("matplotlib")
    from regimes.plots import plot_run

    torch.manual_seed(0)
    model, train = mlp(), data(64)
    optimizer = torch.optim.SGD(model.parameters(), lr=5e-2)
    run = regimes.Run(tmp_path / "run")
    tracker = run.watch(model, train.tensors[0][:4])
    for epoch in (1, 2):
        for batch in torch.arange(64).split(16):
            nn.functional.cross_entropy(model(train.tensors[0][batch]), train.tensors[1][batch]).backward()
            optimizer.step()
            optimizer.zero_grad()
            tracker.step()
        run.end_epoch(epoch, {"val_score": 0.5})
    with pytest.raises(ValueError, match="batches_per_epoch"):
        plot_run(tracker)
    _, from_tracker = plot_run(tracker, batches_per_epoch=4)
    _, from_run = plot_run(run)
    for a, b in zip(from_tracker.right_ax.get_lines(), from_run.right_ax.get_lines()):
        np.testing.assert_array_equal(a.get_ydata(), b.get_ydata())
    assert len(from_run.right_ax.get_lines()) == 2
    run.finish()


def test_two_callbacks_with_one_name_are_refused_before_the_run_starts(tmp_path, monkeypatch):
    from regimes.experiment import Callback

    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "data"))

    class Counter(Callback):
        pass

    config = get_preset("mlp-breast-cancer").replace(max_epochs=1)
    with pytest.raises(ValueError, match="two callbacks are named 'Counter'"):
        train_run(config, tmp_path / "run", callbacks=[Counter(), Counter()])
    assert not (tmp_path / "run").exists()  # refused before anything was written
    second = Counter()
    second.name = "second counter"
    assert train_run(config, tmp_path / "run", callbacks=[Counter(), second])["status"] == "finished"


# ---------------------------------------------------------------------- mistakes around a run's life


def test_an_overflowing_learning_rate_ends_the_run_as_diverged(tmp_path, monkeypatch, capsys):
    from regimes.cli import main

    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "data"))
    out = tmp_path / "run"
    assert (
        main(["run", "mlp-breast-cancer", "--quiet", "--set", "lr=1e308", "--set", "max_epochs=3", "--out", str(out)])
        == 3
    )
    summary = RunDirectory(out).read_summary()
    assert summary["status"] == "diverged" and summary["stop_epoch"] == 1 and summary["steps"] == 0


def test_freeze_under_torchrun_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from regimes.cli import main

    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets in each process it starts
    assert main(["run", "mlp-breast-cancer", "--quiet", "--set", "freeze='auto'", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "under torchrun" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_resume_without_a_checkpoint_changes_nothing(tmp_path, monkeypatch, capsys):
    from regimes.cli import main
    from regimes.experiment import Callback

    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "data"))

    class StopAtTwo(Callback):
        def on_epoch_end(self, run, **kwargs):
            if run.epoch == 2:
                raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_run(get_preset("mlp-breast-cancer").replace(max_epochs=4), out, callbacks=[StopAtTwo()])
    RunDirectory(out).checkpoint_path.unlink()  # a full disk, or a user's mistake
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert main(["run", "--resume", str(out)]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def test_a_frozen_or_untrained_run_says_so_in_its_summary_and_its_printed_lines(tmp_path, monkeypatch, capsys):
    from regimes.cli import main

    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "data"))
    args = ["run", "mlp-breast-cancer", "--set", "max_epochs=3", "--threads", "1"]
    assert main([*args, "--set", "freeze=1", "--out", str(tmp_path / "frozen")]) == 0
    frozen = RunDirectory(tmp_path / "frozen").read_summary()
    assert frozen["frozen"] is True and frozen["freeze_iteration"] == frozen["batches_per_epoch"]
    assert f"frozen from iteration {frozen['freeze_iteration']}" in capsys.readouterr().out
    # lr 1e-12: the weights barely move and the score stays below the majority class: not learned.
    assert main([*args, "--set", "lr=1e-12", "--out", str(tmp_path / "still")]) == 0
    still = RunDirectory(tmp_path / "still").read_summary()
    assert still["learned"] is False and still["majority_score"] == pytest.approx(0.6316, abs=1e-4)
    assert "DID NOT LEARN" in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "not learned" in table and "frozen" in table
    mean_line = [line for line in table.splitlines() if line.startswith("mean rho")]
    assert mean_line and all("over 0 runs" in line or "left out" in line for line in mean_line)


def test_a_frozen_runs_figure_says_so(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from regimes.plots import plot_run

    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "data"))
    summary = train_run(get_preset("mlp-breast-cancer").replace(max_epochs=2, freeze=1), tmp_path / "run")
    _, ax = plot_run(tmp_path / "run")
    assert f"FROZEN from iteration {summary['freeze_iteration']}" in ax.get_title()


def test_mistakes_in_data_args_classes_and_checkpoints_are_one_line(tmp_path, monkeypatch, capsys):
    from regimes.cli import main
    from regimes.experiment import Callback

    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "data"))
    base = ["run", "mlp-breast-cancer", "--quiet", "--set", "max_epochs=2"]
    for wrong, says in (("data_args.bogus=1", "data_args 'bogus'"), ("model_args.num_classes=1", "has 2 classes")):
        assert main([*base, "--set", wrong, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "x").exists()

    class StopAtOne(Callback):
        def on_epoch_end(self, run, **kwargs):
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_run(get_preset("mlp-breast-cancer").replace(max_epochs=3), out, callbacks=[StopAtOne()])
    run = RunDirectory(out)
    other = torch.load(run.checkpoint_path, weights_only=True)
    other["model"] = {k: v[:1] if v.dim() else v for k, v in other["model"].items()}  # another model's weights
    run.write_checkpoint(other)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert main(["run", "--resume", str(out)]) == 2
    assert "does not fit the run its config describes" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_a_model_too_big_and_a_name_too_long_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys):
    from regimes.cli import main

    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "data"))
    huge = ["run", "mlp-breast-cancer", "--quiet", "--set", "model_args.hidden=[1000000, 1000000]"]
    assert main([*huge, "--out", str(tmp_path / "big")]) == 2  # 4 TB of float32 weights
    assert "does not fit in this machine's memory" in capsys.readouterr().err
    assert not (tmp_path / "big").exists()
    long = tmp_path / ("x" * 300)
    assert main(["run", "mlp-breast-cancer", "--quiet", "--out", str(long)]) == 2
    err = capsys.readouterr().err
    assert "File name too long" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "data"] or not any(
        p.name.startswith("x") for p in tmp_path.iterdir()
    )
