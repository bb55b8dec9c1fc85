"""The records room: every table round-trips, writes are atomic, runs are not overwritten by
accident, the summary is typed, and nobody outside the room spells a file name."""

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")
pd = pytest.importorskip("pandas", reason="these tests read runs with pandas: pip install -e '.[study]'")

import regimes
from regimes.records import (
    DONE,
    RunDirectory,
    RunSummary,
    Status,
    SweepDirectory,
    files,
    find_runs,
    is_run_directory,
    is_sweep_directory,
    software_versions,
)

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
        {
            "epoch": e,
            "train_loss": 1 / e,
            "train_score": 0.5 + e / 10,
            "val_loss": 1.1 / e,
            "val_score": 0.4 + e / 10,
            "seconds": 0.25 * e,
        }
        for e in (1, 2, 3)
    ]
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

    monkeypatch.setattr(files.os, "replace", killed)
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


# -- the status vocabulary and the typed summary ------------------------------------------------


@pytest.mark.parametrize("status", list(Status))
def test_status_round_trips_through_summary_json(run, status):
    run.write_summary(RunSummary(model="mlp", status=status, rho=1.25))
    on_disk = json.loads(run.summary_path.read_text())
    assert on_disk["status"] == status.value and type(on_disk["status"]) is str
    back = run.read_summary()
    assert back.status is status and back["status"] == status.value
    assert f"{back.status}" == str(back.status) == status.value  # the same text on every Python
    assert json.dumps(status) == f'"{status.value}"'
    assert status.done == (status in (Status.FINISHED, Status.DIVERGED))
    run.write_summary({"status": status.value})  # a plain string is read as the same status
    assert run.read_summary().status is status


def test_the_vocabulary():
    assert [s.value for s in Status] == ["running", "finished", "diverged", "interrupted", "failed"]
    assert Status.FINISHED == "finished" and "diverged" in DONE and "failed" not in DONE
    assert DONE == (Status.FINISHED, Status.DIVERGED)
    with pytest.raises(ValueError, match="status must be one of running, finished"):
        RunSummary(status="done")


def test_failed_is_accepted_with_its_error(run):
    run.write_summary(RunSummary(model="mlp", status=Status.FAILED, error="ValueError: no site matches"))
    back = run.read_summary()
    assert back.status == "failed" and back.error == "ValueError: no site matches"
    run.write_summary({"status": "failed"})  # refused before the status vocabulary
    assert run.read_summary()["status"] == Status.FAILED


# What training's summary held before the typed summary (the golden mlp-digits run's keys).
OLD_SUMMARY = {
    "preset": "mlp-digits",
    "model": "mlp",
    "dataset": "digits",
    "optimizer": "sgd",
    "momentum": 0.0,
    "nesterov": False,
    "weight_decay": 1e-4,
    "lr": 0.01,
    "batch_size": 64,
    "precision": "fp32",
    "seed": 0,
    "score_name": "accuracy",
    "higher_is_better": True,
    "best_score": 0.9444444444444444,
    "best_epoch": 4,
    "stop_epoch": 4,
    "max_epochs": 4,
    "auc_w": 0.26707290543565865,
    "auc_p": 0.2112553400920697,
    "rho": 1.264218482331677,
    "stabilization_w": 0.8023255813953488,
    "stabilization_p": 0.6744186046511628,
    "window": 7,
    "batches_per_epoch": 23,
    "steps": 92,
    "sites": ["blocks.0.relu", "blocks.1.relu"],
    "probe_size": 13,
    "train_size": 1437,
    "val_size": 360,
    "data_source": "scikit-learn",
    "status": "finished",
    "seconds": 1.5,
    "device": "cpu",
    "versions": {"python": "3.11.7", "torch": "2.4.0"},
}


def test_run_summary_reads_an_old_summary(run):
    summary = RunSummary.from_dict(OLD_SUMMARY)
    assert {k: summary[k] for k in OLD_SUMMARY} == OLD_SUMMARY  # same values under the same keys
    assert summary.status is Status.FINISHED
    for key in ("rho_global", "rho_layerwise", "freeze_iteration", "threads", "error"):  # new keys: defaults
        assert summary[key] is None
    assert summary.extra == {}
    assert list(summary)[: len(OLD_SUMMARY)] == list(OLD_SUMMARY)  # today's keys keep their order

    # A summary.json written by an older version, with a key this one does not know and
    # without some it does: read, then rewritten, it loses nothing.
    old = {k: v for k, v in OLD_SUMMARY.items() if k not in ("window", "data_source")} | {"tau": 0.1}
    run.summary_path.write_text(json.dumps(old))
    back = run.read_summary()
    assert back.window is None and back.data_source is None and back.rho == OLD_SUMMARY["rho"]
    assert back.extra == {"tau": 0.1} and back["tau"] == 0.1 and "tau" in back
    assert back == old  # equal to the mapping it was read from (a missing key counts as its default)
    run.write_summary(back)
    assert json.loads(run.summary_path.read_text())["tau"] == 0.1
    assert RunSummary.from_dict({}) == RunSummary() and RunSummary().status is Status.RUNNING
    assert RunSummary.from_dict({"status": None}).status is Status.RUNNING


def test_run_summary_is_a_read_only_mapping():
    summary = RunSummary(model="mlp", rho=1.5, sites=["a"], status=Status.DIVERGED, extra={"tau": 0.1})
    assert summary["rho"] == 1.5 and summary.get("rho") == 1.5 and summary.get("freeze_iteration") is None
    assert summary.get("no-such-key", "x") == "x" and "no-such-key" not in summary and "rho" in summary
    with pytest.raises(KeyError):
        summary["no-such-key"]
    as_dict = dict(summary)
    assert as_dict["status"] == "diverged" and as_dict["tau"] == 0.1 and "extra" not in as_dict
    assert len(summary) == len(as_dict) == len(dataclasses.fields(RunSummary))  # the fields less extra, plus tau
    assert {**summary} == as_dict and summary == as_dict and as_dict == summary
    assert summary != {**as_dict, "rho": 2.0} and summary != 3
    with pytest.raises(TypeError):
        summary["rho"] = 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.rho = 2.0
    changed = summary.replace(status=Status.FAILED, error="boom", note="kept")
    assert (changed.status, changed.error, changed["note"], changed.rho) == (Status.FAILED, "boom", "kept", 1.5)
    assert summary.status is Status.DIVERGED  # the original is unchanged
    with pytest.raises(ValueError, match="fields"):
        RunSummary(extra={"rho": 1.0})


def test_summary_json_stays_strict_with_the_same_keys(run):
    run.write_summary(RunSummary.from_dict({**OLD_SUMMARY, "rho": float("inf"), "best_score": float("nan")}))
    text = run.summary_path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    on_disk = json.loads(text)
    assert list(on_disk) == [f.name for f in dataclasses.fields(RunSummary) if f.name != "extra"]
    assert on_disk["rho"] is None and on_disk["best_score"] is None


# -- the rest of the run directory --------------------------------------------------------------


def test_error_checkpoint_and_resume_check(tmp_path):
    directory = RunDirectory(tmp_path / "new")
    with pytest.raises(FileNotFoundError, match="no run to resume"):
        directory.check_resumable()
    assert directory.read_error() is None and directory.read_checkpoint() is None
    directory.write_error("Traceback ...\nValueError: x\n")  # makes the folder
    assert directory.read_error().endswith("ValueError: x\n")
    directory.clear_error()
    assert directory.read_error() is None
    directory.clear_error()  # nothing to clear is fine

    directory.create({"model": "mlp"})
    directory.check_resumable()
    torch = pytest.importorskip("torch")
    directory.write_checkpoint({"epoch": 3, "weights": torch.arange(4.0)})
    state = directory.read_checkpoint()
    assert state["epoch"] == 3 and torch.equal(state["weights"], torch.arange(4.0))
    assert directory.has_checkpoint()
    directory.write_error("boom")
    directory.create({"model": "lenet5"}, force=True)  # a forced restart forgets the old failure
    assert directory.read_error() is None and not directory.has_checkpoint()

    copy = directory.copy_to(tmp_path / "copy")
    assert copy.read_config() == {"model": "lenet5"} and not list(tmp_path.glob(".*"))


def test_sweep_directory(tmp_path):
    sweep = SweepDirectory(tmp_path / "sweep")
    assert not is_sweep_directory(sweep.path)
    sweep.start({"base": {"lr": 0.1}, "grid": {"name": "g"}})
    assert is_sweep_directory(sweep.path) and sweep.read_description()["base"] == {"lr": 0.1}
    sweep.start({"base": {"lr": 0.1}, "grid": {"name": "g"}, "versions": {}})  # the same sweep again
    with pytest.raises(FileExistsError, match="lr"):
        sweep.start({"base": {"lr": 0.2}, "grid": {"name": "g"}})

    assert sweep.trial_name("sgd-lr1e-2") == "trials/sgd-lr1e-2" and sweep.seed_name(3) == "seeds/seed3"
    run = sweep.run(sweep.trial_name("sgd-lr1e-2"))
    assert run.path == sweep.path / "trials" / "sgd-lr1e-2"
    run.create({"model": "mlp"})
    run.write_summary(RunSummary(status=Status.FINISHED))

    assert sweep.read_table(sweep.TRIALS) == [] and sweep.read_selected() == {}
    rows = [
        {"trial": "a", "status": Status.FINISHED, "rho": float("nan")},
        {"trial": "b", "status": Status.FAILED, "rho": 1.0},
    ]
    sweep.write_table(sweep.TRIALS, rows)
    assert pd.read_csv(sweep.table_path(sweep.TRIALS, "csv")).status.tolist() == ["finished", "failed"]
    assert [r["status"] for r in sweep.read_table(sweep.TRIALS)] == ["finished", "failed"]
    with pytest.raises(ValueError, match="tables"):
        sweep.table_path("results")
    sweep.write_selected({"trial": "a", "status": Status.FINISHED, "rho": float("inf")})
    assert sweep.read_selected() == {"trial": "a", "status": "finished", "rho": None}

    # find_runs: a sweep is one entry (its runs belong to it), runs beside it are found too.
    other = RunDirectory(tmp_path / "deeper" / "run")
    other.create({"model": "mlp"})
    other.write_summary(RunSummary())
    assert find_runs(tmp_path) == [other.path, sweep.path]
    assert find_runs(sweep.path) == [sweep.path] and find_runs(run.path) == [run.path]

    notes = sweep.path / "notes.txt"
    notes.write_text("mine")
    sweep.start({"base": {"lr": 0.2}, "grid": {"name": "g"}}, force=True)
    assert not run.path.exists() and not sweep.selected_path.exists() and notes.read_text() == "mine"
    assert not sweep.table_path(sweep.TRIALS).exists()


# -- one room owns the layouts ------------------------------------------------------------------

# The names of the run's and the sweep's files: only regimes/records/ may spell them.
FILE_NAMES = re.compile(
    r"summary\.json|config\.toml|sweep\.json|selected\.json|error\.txt|\.parquet\b|checkpoint\.pt|figure\.png"
    r"|trials\.csv|seeds\.csv"
)
# Files that others are changing in parallel and still spell one; each must be cleaned up (and
# taken off this list) when merged. The test fails if a listed file no longer needs its place.
NOT_YET: set[str] = set()


def test_no_module_outside_the_records_room_spells_a_file_name():
    package = Path(regimes.__file__).parent
    offenders, pending = [], set()
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(package).as_posix()
        if name.startswith("records/"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FILE_NAMES.search(line):
                if name in NOT_YET:
                    pending.add(name)
                else:
                    offenders.append(f"{name}:{number}: {line.strip()}")
    assert offenders == [], "ask RunDirectory / SweepDirectory for these paths:\n" + "\n".join(offenders)
    assert pending == NOT_YET, f"{sorted(NOT_YET - pending)} no longer spell a file name: take them off NOT_YET"
