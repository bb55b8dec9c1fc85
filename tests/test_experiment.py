"""The study's runner: protocol, run directory, resume, failures, and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")
pd = pytest.importorskip("pandas", reason="these tests read runs with pandas: pip install -e '.[study]'")

from regimes.cli import main
from regimes.experiment import (
    Callback,
    ConfigError,
    EarlyStopping,
    RunConfig,
    apply_overrides,
    get_preset,
    list_presets,
    train_run,
)
from regimes.experiment.setup import batches_per_epoch
from regimes.records import RunDirectory
from regimes.zoo import create_model, list_models

OFFLINE = ["mlp-breast-cancer", "mlp-digits", "lenet5-digits", "mlp-mnist1d"]

# The study's Table II rows this runner covers: (preset, optimizer, weight decay, lr).
STUDY_ROWS = [
    ("mlp-adult", "adam", 1e-4, 1e-2),
    ("mlp-breast-cancer", "sgd", 1e-4, 1e-2),
    ("mlp-har", "sgd", 1e-4, 1e-2),
    ("mlp-mnist", "sgd", 1e-4, 1e-2),
    ("lenet5-mnist", "sgd", 1e-4, 1e-2),
    ("lenet5-cifar10", "adam", 1e-4, 1e-3),
    ("alexnet-cifar100", "sgd", 1e-3, 1e-3),
]


@pytest.fixture(autouse=True)
def _data_cache(tmp_path_factory, monkeypatch):
    # MNIST-1D caches what it generates: keep that out of the user's home.
    monkeypatch.setenv("REGIMES_DATA", str(tmp_path_factory.getbasetemp() / "data"))


def small(preset: str, **changes) -> RunConfig:
    return get_preset(preset).replace(**{"max_epochs": 3, **changes})


@pytest.mark.parametrize("preset, optimizer, wd, lr", STUDY_ROWS)
def test_presets_hold_the_winning_configuration(preset, optimizer, wd, lr):
    config = get_preset(preset)
    assert (config.optimizer, config.weight_decay, config.lr) == (optimizer, wd, lr)
    assert config.max_epochs == (200 if preset.startswith("alexnet") else 30)
    assert config.early_stopping_patience == config.max_epochs // 3 or config.early_stopping_patience == round(
        config.max_epochs / 3
    )
    assert config.min_delta == 0.01


# Built at full size here; the Transformer and large-CNN presets are built at tiny
# sizes in test_study_transformers.py (full size costs seconds each and needs transformers).
BUILT_HERE = ("mlp", "lenet5", "alexnet")


@pytest.mark.parametrize("preset", list(list_presets()))
def test_every_preset_names_a_registered_model(preset):
    config = get_preset(preset)
    assert config.model in list_models() and preset in list_presets()
    if config.model in BUILT_HERE:
        model = create_model(config.model, **config.model_args)
        assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("preset", OFFLINE)
def test_offline_presets_run_end_to_end(preset, tmp_path):
    summary = train_run(small(preset, max_epochs=2), tmp_path / "run")
    run = RunDirectory(tmp_path / "run")
    steps = pd.read_parquet(tmp_path / "run" / "steps")
    epochs = pd.read_parquet(tmp_path / "run" / "epochs.parquet")
    assert summary["status"] == "finished" and summary["stop_epoch"] == 2
    assert len(steps) == summary["steps"] == 2 * summary["batches_per_epoch"]
    assert list(steps.iteration) == list(range(1, len(steps) + 1))
    assert {f"da:{s}" for s in summary["sites"]} <= set(steps.columns)
    np.testing.assert_allclose(steps.da, steps[[f"da:{s}" for s in summary["sites"]]].mean(axis=1))
    assert list(epochs.epoch) == [1, 2] and epochs.val_score.between(0, 1).all()
    assert math.isfinite(summary["rho"]) and summary["best_score"] == epochs.val_score.max()
    assert run.read_summary()["rho"] == pytest.approx(summary["rho"])
    assert (tmp_path / "run" / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run.read_config()["preset"] == preset


def test_same_seed_same_numbers_and_other_seed_differs(tmp_path):
    a = train_run(small("mlp-breast-cancer"), tmp_path / "a")
    b = train_run(small("mlp-breast-cancer"), tmp_path / "b")
    c = train_run(small("mlp-breast-cancer", seed=1), tmp_path / "c")
    assert a["rho"] == b["rho"] and a["best_score"] == b["best_score"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "steps"), pd.read_parquet(tmp_path / "b" / "steps"))
    assert a["rho"] != c["rho"]


def test_probe_is_the_studys_size_and_from_validation(tmp_path):
    summary = train_run(small("mlp-breast-cancer", max_epochs=1), tmp_path / "run")
    assert summary["probe_size"] == round(0.2 * 32)
    assert get_preset("mlp-mnist").probe_size == round(0.2 * 128)
    assert RunConfig(model="mlp", dataset="digits", batch_size=2).probe_size == 1


def test_resume_gives_the_same_numbers_as_an_uninterrupted_run(tmp_path):
    config = small("mlp-breast-cancer", max_epochs=4)
    whole = train_run(config, tmp_path / "whole")

    class InterruptAfterTwo(Callback):
        def on_epoch_end(self, run, **kwargs):
            if run.epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(config, tmp_path / "cut", callbacks=[InterruptAfterTwo()])
    assert RunDirectory(tmp_path / "cut").read_summary()["status"] == "interrupted"
    assert len(pd.read_parquet(tmp_path / "cut" / "epochs.parquet")) == 2  # readable as left
    resumed = train_run(config, tmp_path / "cut", resume=True)
    for key in ("rho", "auc_w", "auc_p", "best_score", "stop_epoch", "steps"):
        assert resumed[key] == whole[key], key
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "whole" / "steps"), pd.read_parquet(tmp_path / "cut" / "steps")
    )
    a = pd.read_parquet(tmp_path / "whole" / "epochs.parquet").drop(columns="seconds")
    b = pd.read_parquet(tmp_path / "cut" / "epochs.parquet").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)


def test_resume_after_a_kill_mid_epoch_rewinds_to_the_checkpoint(tmp_path):
    """A killed process leaves records of finished epochs; extra step chunks past the checkpoint are dropped."""
    config = small("mlp-breast-cancer", max_epochs=3)
    whole = train_run(config, tmp_path / "whole")
    train_run(config.replace(max_epochs=2), tmp_path / "cut")
    run = RunDirectory(tmp_path / "cut")
    run.write_config(config.to_dict())  # as if the same 3-epoch run had been killed after epoch 2 ...
    run.write_summary({**run.read_summary(), "status": "running"})
    extra = run.read_steps()
    run.append_steps({k: v[:3] if k != "iteration" else v[:3] + 1000 for k, v in extra.items()})  # ... mid-write
    resumed = train_run(config, tmp_path / "cut", resume=True)
    assert resumed["rho"] == whole["rho"] and resumed["steps"] == whole["steps"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "whole" / "steps"), pd.read_parquet(tmp_path / "cut" / "steps")
    )


def test_early_stopping_rules():
    stop = EarlyStopping(patience=2, min_delta=0.01)
    assert [stop.update(s, e) for e, s in enumerate([0.5, 0.505, 0.509, 0.6], 1)] == [False, False, True, False]
    assert stop.best_epoch == 4 and stop.best_score == 0.6
    lower = EarlyStopping(patience=1, min_delta=0.0, higher_is_better=False)
    assert lower.update(30.0, 1) is False and lower.update(25.0, 2) is False and lower.update(25.0, 3) is True
    assert lower.best_score == 25.0


def test_early_stopping_in_the_loop(tmp_path):
    summary = train_run(small("mlp-breast-cancer", max_epochs=30, patience=1, min_delta=0.5), tmp_path / "run")
    assert summary["stop_epoch"] == 2 and summary["stopping_epoch"] == 1 and summary["status"] == "finished"
    assert summary["best_epoch"] in (1, 2)  # the true best; early stopping's reference moved only at epoch 1


def test_divergence_stops_and_keeps_the_records(tmp_path):
    with pytest.warns(UserWarning, match="non-finite"):
        summary = train_run(small("mlp-breast-cancer", lr=1e30, max_epochs=5), tmp_path / "run")
    assert summary["status"] == "diverged"
    assert summary["stop_epoch"] < 5
    assert len(pd.read_parquet(tmp_path / "run" / "steps")) == summary["steps"] > 0


def test_batches_per_epoch_drops_a_last_batch_of_one():
    assert batches_per_epoch(64, 32) == 2 and batches_per_epoch(65, 32) == 2 and batches_per_epoch(66, 32) == 3


def test_config_errors_name_the_problem(tmp_path):
    config = get_preset("mlp-breast-cancer")
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        apply_overrides(config, ["lrr=1e-3"])
    with pytest.raises(ConfigError, match="lr must be a float"):
        apply_overrides(config, ["lr='fast'"])
    with pytest.raises(ConfigError, match="optimizer must be one of .*did you mean 'adam'"):
        apply_overrides(config, ["optimizer=adma"])
    with pytest.raises(ConfigError, match="nesterov needs"):
        apply_overrides(config, ["nesterov=true"])
    with pytest.raises(ConfigError, match="unknown preset 'mlp-mnits' \\(did you mean 'mlp-mnist'"):
        get_preset("mlp-mnits")
    assert apply_overrides(config, ["model_args.hidden=[8, 4]", "lr=1e-3"]).model_args["hidden"] == [8, 4]


def test_a_different_run_in_the_output_directory_is_refused(tmp_path):
    train_run(small("mlp-breast-cancer", max_epochs=1), tmp_path / "run")
    with pytest.raises(FileExistsError, match="--force"):
        train_run(small("mlp-breast-cancer", max_epochs=1, seed=3), tmp_path / "run")
    assert train_run(small("mlp-breast-cancer", max_epochs=1, seed=3), tmp_path / "run", force=True)["seed"] == 3


# ---------------------------------------------------------------------- the command line


def test_cli_run_report_and_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "mlp-breast-cancer", "--out", str(out), "--set", "max_epochs=2", "--quiet"]) == 0
    assert main(["run", "mlp-breast-cancer", "--out", str(out), "--set", "max_epochs=2"]) == 2  # the same run again
    assert "already holds this run (finished, 2 epochs): use --resume" in capsys.readouterr().err
    assert main(["run", "--resume", str(out)]) == 0  # finished: prints its result
    printed = capsys.readouterr().out
    assert "rho" in printed and "best accuracy" in printed
    summary = json.loads((out / "summary.json").read_text())
    neurons = next(line for line in printed.splitlines() if line.startswith("neurons, last epoch"))
    assert f"dead {summary['dead']:.3f}, always on {summary['always_on']:.3f}" in neurons
    assert f"holding {summary['dead_units']:.3f} / {summary['always_on_units']:.3f} of the units" in neurons
    assert main(["report", str(tmp_path), "--format", "csv", "--figure", str(tmp_path / "grid.png")]) == 0
    csv_text = capsys.readouterr().out
    assert csv_text.splitlines()[0].startswith("model,dataset,optimizer")
    assert (tmp_path / "grid.png").is_file()
    assert main(["run", "mlp-breast-cancr"]) == 2
    assert "did you mean 'mlp-breast-cancer'" in capsys.readouterr().err
    assert main(["run", "mlp-breast-cancer", "--out", str(out), "--seed", "5", "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "nothing")]) == 2
    assert (
        main(["run", "mlp-adult", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "adult"), "--quiet"])
        == 2
    )
    assert "adult" in capsys.readouterr().err


def test_cli_show_round_trips_through_a_toml_file(tmp_path, capsys):
    assert main(["show", "mlp-digits"]) == 0
    toml_text = capsys.readouterr().out
    path = tmp_path / "my.toml"
    path.write_text(toml_text.replace("max_epochs = 30", "max_epochs = 1"))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert RunDirectory(tmp_path / "run").read_summary()["stop_epoch"] == 1
    assert main(["presets"]) == 0
    assert "mlp-breast-cancer" in capsys.readouterr().out


def test_cli_resume_after_interrupt(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    calls = {"n": 0}
    from regimes.experiment.callbacks import Checkpoint

    original = Checkpoint.on_epoch_end

    def save_then_interrupt(*args, **kwargs):
        original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "on_epoch_end", save_then_interrupt)
    assert main(["run", "mlp-breast-cancer", "--out", str(out), "--set", "max_epochs=2", "--quiet"]) == 130
    assert "regimes run --resume" in capsys.readouterr().err
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert RunDirectory(out).read_summary()["status"] == "finished"
    assert len(pd.read_parquet(out / "epochs.parquet")) == 2


def test_cli_run_with_seeds_and_threads(tmp_path, capsys):
    """`regimes run PRESET --seeds N --threads T`: N runs of one config, their rho interval as a
    sweep's seed phase gives it, each run recording the thread count it used."""
    import json

    import torch

    from regimes.analysis import aggregate

    threads = torch.get_num_threads()
    out = tmp_path / "seeds"
    try:
        assert (
            main(
                [
                    "run",
                    "mlp-breast-cancer",
                    "--seeds",
                    "3",
                    "--threads",
                    "1",
                    "--set",
                    "max_epochs=2",
                    "--out",
                    str(out),
                    "--quiet",
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    summaries = [RunDirectory(out / "seeds" / f"seed{s}").read_summary() for s in range(3)]
    assert [s["seed"] for s in summaries] == [0, 1, 2] and all(s["threads"] == 1 for s in summaries)
    seeds = json.loads((out / "selected.json").read_text())["seeds"]
    assert seeds["seeds"] == 3 and seeds["rho"] == pytest.approx(aggregate([s["rho"] for s in summaries])[0])
    assert seeds["rho_low"] <= seeds["rho"] <= seeds["rho_high"]
    assert main(["run", "mlp-breast-cancer", "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
