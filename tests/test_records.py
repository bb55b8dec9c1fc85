"""The run directory: every table round-trips, writes are atomic, runs are not overwritten by accident."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from regimes import records
from regimes.records import RunDirectory, is_run_directory, software_versions

SITES = ("features.relu", "classifier.1")


def chunk(start: int, stop: int, epoch: int, seed: int = 0) -> dict:
    """Records for iterations start..stop-1 with two sites."""
    rng = np.random.default_rng(seed + start)
    n = stop - start
    out = {
        "iteration": np.arange(start, stop),
        "epoch": np.full(n, epoch),
        "dw": rng.random(n),
        "da": rng.random(n),
    }
    for site in SITES:
        out[f"da:{site}"] = rng.random(n)
    return out


def concat(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


@pytest.fixture
def run(tmp_path) -> RunDirectory:
    directory = RunDirectory(tmp_path / "run")
    directory.create({"model": "mlp", "dataset": "digits", "lr": 1e-2})
    return directory


# Chunks of 10 iterations: 1..10 (epoch 1), 11..20 (epoch 2), 21..30 (epoch 3).
PARTS = [chunk(1, 11, 1), chunk(11, 21, 2), chunk(21, 31, 3)]


def test_steps_round_trip_across_chunks(run):
    for part in PARTS:
        run.append_steps(part)
    assert [p.name for p in run.chunk_paths()] == [f"part-0000{i}.parquet" for i in (1, 2, 3)]

    got, want = run.read_steps(), concat(PARTS)
    assert list(got) == ["iteration", "epoch", "dw", "da", *(f"da:{s}" for s in SITES)]
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    assert got["iteration"].dtype == np.int64 and got["epoch"].dtype == np.int64
    assert got["dw"].dtype == np.float64
    assert run.sites() == list(SITES)

    # pandas opens the folder directly, with the same columns and dtypes.
    frame = pd.read_parquet(run.steps_dir).sort_values("iteration", ignore_index=True)
    assert list(frame.columns) == list(want)
    assert frame["iteration"].dtype == np.int64 and frame["da:features.relu"].dtype == np.float64
    for key in want:
        np.testing.assert_array_equal(frame[key].to_numpy(), want[key])


def test_read_steps_column_subset_and_empty(run):
    empty = run.read_steps()
    assert set(empty) == {"iteration", "epoch", "dw", "da"}
    assert all(v.size == 0 for v in empty.values())
    run.append_steps({k: v[:0] for k, v in PARTS[0].items()})  # empty input: no chunk
    assert run.chunk_paths() == []
    run.append_steps(PARTS[0])
    subset = run.read_steps(columns=["iteration", "dw"])
    assert list(subset) == ["iteration", "dw"]
    np.testing.assert_array_equal(subset["dw"], PARTS[0]["dw"])


def test_append_steps_rejects_bad_records(run):
    bad_length = dict(PARTS[0], dw=np.zeros(3))
    with pytest.raises(ValueError, match="different lengths"):
        run.append_steps(bad_length)
    with pytest.raises(KeyError, match="da"):
        run.append_steps({k: v for k, v in PARTS[0].items() if k != "da"})
    with pytest.raises(ValueError, match="integers"):
        run.append_steps(dict(PARTS[0], iteration=PARTS[0]["iteration"] + 0.5))
    run.append_steps(PARTS[0])
    with pytest.raises(ValueError, match="same sites"):
        run.append_steps({k: v for k, v in PARTS[1].items() if k != "da:classifier.1"})
    with pytest.raises(ValueError, match="truncate_steps"):
        run.append_steps(chunk(5, 15, 1))  # overlaps what is written: a resume that forgot to rewind
    assert len(run.chunk_paths()) == 1


@pytest.mark.parametrize("n", [0, 1, 7, 10, 11, 20, 25, 30, 99])
def test_truncate_steps_keeps_exactly_iterations_up_to_n(run, n):
    for part in PARTS:
        run.append_steps(part)
    run.truncate_steps(n)

    want = concat(PARTS)
    keep = want["iteration"] <= n
    got = run.read_steps()
    # With no chunk left there are no site columns to read either.
    assert list(got) == (list(want) if n > 0 else ["iteration", "epoch", "dw", "da"])
    for key in got:
        np.testing.assert_array_equal(got[key], want[key][keep])
    kept = min(n, 30)
    assert len(run.chunk_paths()) == -(-kept // 10)  # later chunks deleted
    assert temp_files(run.path) == []

    # A resume appends from the next iteration and gets a contiguous record.
    run.append_steps(chunk(kept + 1, kept + 6, 9))
    np.testing.assert_array_equal(run.read_steps()["iteration"], np.arange(1, kept + 6))
    assert len(pd.read_parquet(run.steps_dir)) == kept + 5


def test_epochs_round_trip(run):
    rows = [
        {"epoch": e, "train_loss": 1 / e, "train_score": 0.5 + e / 10, "val_loss": 1.1 / e,
         "val_score": 0.4 + e / 10, "seconds": 0.25 * e}
        for e in (1, 2, 3)
    ]  # fmt: skip
    assert run.read_epochs() == []
    run.write_epochs(rows[:2])
    run.write_epochs(rows)  # rewritten whole each epoch
    assert run.read_epochs() == rows
    frame = pd.read_parquet(run.epochs_path)
    assert list(frame.columns) == ["epoch", "train_loss", "train_score", "val_loss", "val_score", "seconds"]
    assert frame["epoch"].dtype == np.int64 and frame["val_score"].dtype == np.float64
    assert frame["epoch"].tolist() == [1, 2, 3]


def test_summary_round_trip(run):
    assert run.read_summary() is None
    summary = {
        "model": "mlp",
        "best_score": np.float32(0.875),  # numpy scalars become plain numbers
        "best_epoch": np.int64(3),
        "higher_is_better": True,
        "rho": float("nan"),  # strict JSON: NaN is written as null
        "status": "finished",
        "versions": software_versions(),
    }
    run.write_summary(summary)
    back = run.read_summary()
    assert back["best_score"] == 0.875 and back["best_epoch"] == 3
    assert back["higher_is_better"] is True and back["rho"] is None
    assert back["versions"]["numpy"] == np.__version__
    assert "NaN" not in run.summary_path.read_text()
    with pytest.raises(ValueError, match="status"):
        run.write_summary({"status": "done"})


def test_config_round_trip(run):
    config = {
        "model": "lenet5",
        "lr": 1e-3,
        "epochs": np.int64(30),
        "hidden": (64, 32),
        "data_dir": None,  # TOML has no null: left out
        "out": Path("runs/x"),
        "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True},
    }
    run.write_config(config)
    assert run.read_config() == {
        "model": "lenet5",
        "lr": 1e-3,
        "epochs": 30,
        "hidden": [64, 32],
        "out": "runs/x",
        "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True},
    }


def test_atomic_writes_leave_no_temp_files_and_keep_the_old_file_on_failure(run, monkeypatch):
    run.append_steps(PARTS[0])
    run.write_epochs([{"epoch": 1, "train_loss": 1.0}])
    run.write_summary({"status": "running", "rho": 1.5})
    assert temp_files(run.path) == []

    def killed(*args):
        raise OSError("killed before the rename")

    monkeypatch.setattr(records.os, "replace", killed)
    with pytest.raises(OSError):
        run.write_summary({"status": "finished", "rho": 2.0})
    with pytest.raises(OSError):
        run.append_steps(PARTS[1])
    monkeypatch.undo()
    assert run.read_summary() == {"status": "running", "rho": 1.5}
    assert len(run.chunk_paths()) == 1
    assert temp_files(run.path) == []


def test_a_temp_file_left_by_a_crash_is_invisible_to_readers(run):
    run.append_steps(PARTS[0])
    (run.steps_dir / ".part-00002.parquet.abc.tmp").write_bytes(b"half a file")
    assert len(pd.read_parquet(run.steps_dir)) == 10
    assert len(run.read_steps()["iteration"]) == 10


def test_create_refuses_a_different_run(run):
    run.append_steps(PARTS[0])
    with pytest.raises(FileExistsError, match="--force.*--resume") as info:
        run.create({"model": "mlp", "dataset": "digits", "lr": 1e-3})
    assert "lr" in str(info.value)
    assert run.read_config()["lr"] == 1e-2

    # The same config (as it reads back from TOML) is accepted and nothing is removed.
    run.create({"model": "mlp", "dataset": "digits", "lr": 1e-2, "data_dir": None})
    assert len(run.chunk_paths()) == 1


def test_create_force_clears_the_old_run_only(run):
    run.append_steps(PARTS[0])
    run.write_epochs([{"epoch": 1}])
    run.write_summary({"status": "finished"})
    run.checkpoint_path.write_bytes(b"weights")
    notes = run.path / "notes.txt"
    notes.write_text("mine")

    run.create({"model": "lenet5"}, force=True)
    assert run.read_config() == {"model": "lenet5"}
    assert run.chunk_paths() == [] and run.steps_dir.is_dir()
    assert run.read_epochs() == [] and run.read_summary() is None
    assert not run.checkpoint_path.exists()
    assert notes.read_text() == "mine"


def test_create_new_folder_and_paths(tmp_path):
    directory = RunDirectory(tmp_path / "a" / "b")
    assert not is_run_directory(directory.path)
    directory.create({"model": "mlp"})
    assert is_run_directory(directory.path)
    assert directory.steps_dir.is_dir()
    assert directory.figure_path == directory.path / "figure.png"
    assert directory.checkpoint_path == directory.path / "checkpoint.pt"
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        RunDirectory(tmp_path / "file").create({})


def test_software_versions():
    versions = software_versions()
    assert {"python", "torch", "numpy", "regimes"} <= set(versions)
    assert versions["numpy"] == np.__version__
