"""Safe to share, honest to read (issue 18): nothing read from disk runs code, nothing written
follows a symbolic link or leaves the folder the user named, nothing a user made is lost, every
damaged input and every mistake is one line, and nothing is silently wrong."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")
import torch

from regimes.records import DamagedRecordError, RunDirectory, RunDirectoryError, SweepDirectory, load_state, plain_state

MARKER = "regimes-test-marker"


class _Hostile:
    """Unpickling this writes a marker file: the code a downloaded checkpoint could run."""

    def __init__(self, folder: Path):
        self.folder = str(folder)

    def __reduce__(self):
        return (Path.write_text, (Path(self.folder) / MARKER, "ran"))


# ------------------------------------------------------------- nothing read from disk runs code


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_hostile_checkpoint_is_refused_and_runs_nothing(tmp_path, protocol):
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    buffer = io.BytesIO()
    torch.save({"epoch": 1, "payload": _Hostile(tmp_path)}, buffer, pickle_protocol=protocol)
    run.checkpoint_path.write_bytes(buffer.getvalue())
    with pytest.raises(DamagedRecordError, match="without unpickling") as caught:
        run.read_checkpoint()
    assert not (tmp_path / MARKER).exists()
    assert "\n" not in str(caught.value) and "weights_only=False" in str(caught.value)
    with pytest.raises(DamagedRecordError, match="without unpickling"):
        load_state(run.checkpoint_path)
    assert not (tmp_path / MARKER).exists()


def test_a_plain_state_checkpoint_loads(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    state = {
        "epoch": 3,
        "weights": torch.arange(4.0),
        "rng": {"python": [3, [1, 2, 3], None], "name": "MT19937"},
        "numbers": [0.5, 2],
        "nested": {"a": (1, 2)},
    }
    run.write_checkpoint(state)
    loaded = run.read_checkpoint()
    assert loaded["epoch"] == 3 and torch.equal(loaded["weights"], torch.arange(4.0))
    assert loaded["rng"] == state["rng"] and loaded["nested"] == {"a": (1, 2)}
    assert load_state(run.checkpoint_path)["numbers"] == [0.5, 2]


def test_an_older_checkpoint_is_refused_with_a_conversion_that_works(tmp_path):
    import random

    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    old = {"epoch": 2, "rng": {"numpy": np.random.get_state(), "python": random.getstate()}}
    buffer = io.BytesIO()
    torch.save(old, buffer)
    run.checkpoint_path.write_bytes(buffer.getvalue())
    with pytest.raises(DamagedRecordError, match="numpy") as caught:
        run.read_checkpoint()
    assert "plain_state" in str(caught.value) and "\n" not in str(caught.value)
    # the conversion the message gives, for a file the user trusts
    torch.save(plain_state(torch.load(run.checkpoint_path, weights_only=False)), run.checkpoint_path)
    converted = run.read_checkpoint()
    assert converted["epoch"] == 2
    assert np.array_equal(converted["rng"]["numpy"][1].numpy(), old["rng"]["numpy"][1])
    assert converted["rng"]["python"] == old["rng"]["python"]
    np.random.set_state(converted["rng"]["numpy"])  # the forms the random modules take back
    random.setstate(converted["rng"]["python"])


def test_the_conversion_command_is_quoted_whatever_the_folder_is_named(tmp_path):
    """The command the refusal gives, pasted into a shell as it stands, converts the file and
    runs nothing that a quote or `$(...)` in the run folder's name would smuggle in."""
    import random
    import subprocess
    import sys

    run = RunDirectory(tmp_path / "it's $(touch PWNED) `touch PWNED2` run")
    run.path.mkdir()
    buffer = io.BytesIO()
    torch.save({"epoch": 3, "rng": {"numpy": np.random.get_state(), "python": random.getstate()}}, buffer)
    run.checkpoint_path.write_bytes(buffer.getvalue())
    with pytest.raises(DamagedRecordError) as caught:
        run.read_checkpoint()
    command = str(caught.value).split("convert it once: `", 1)[1].rsplit("`; the run cannot continue", 1)[0]
    command = command.replace("python -c", f"{sys.executable} -c", 1)
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert run.read_checkpoint()["epoch"] == 3
    assert not any(tmp_path.rglob("PWNED*")), "the folder's name ran as code"


# ------------------------------------------------- nothing written follows a link or leaves the folder


def test_a_linked_lock_does_not_make_a_writer_overwrite_its_target(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    run.lock_path.symlink_to(target)
    with pytest.raises(RunDirectoryError, match="symbolic link") as caught:
        with run.writer():
            pass
    assert target.read_text() == "keep me" and "\n" not in str(caught.value)
    sweep = SweepDirectory(tmp_path / "sweep")
    sweep.path.mkdir()
    sweep.lock_path.symlink_to(target)
    with pytest.raises(RunDirectoryError, match="symbolic link"):
        with sweep.writer():
            pass
    assert target.read_text() == "keep me"


@pytest.mark.parametrize(
    "name",
    [RunDirectory.SUMMARY, RunDirectory.CONFIG, RunDirectory.EPOCHS, RunDirectory.CHECKPOINT, RunDirectory.ERROR],
)
def test_no_file_of_a_run_is_written_through_a_link(tmp_path, name):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    (run.path / name).symlink_to(target)
    write = {
        RunDirectory.SUMMARY: lambda: run.write_summary({"status": "finished"}),
        RunDirectory.CONFIG: lambda: run.write_config({"model": "mlp"}),
        RunDirectory.EPOCHS: lambda: run.write_epochs([{"epoch": 1, "val_score": 0.5}]),
        RunDirectory.CHECKPOINT: lambda: run.write_checkpoint({"epoch": 1}),
        RunDirectory.ERROR: lambda: run.write_error("Traceback"),
    }[name]
    with pytest.raises(RunDirectoryError, match="symbolic link"):
        write()
    assert target.read_text() == "keep me" and (run.path / name).is_symlink()


def test_step_chunks_are_not_written_into_a_linked_folder(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    run.steps_dir.symlink_to(elsewhere, target_is_directory=True)
    records = {"iteration": [1], "epoch": [1], "dw": [0.1], "da": [0.2]}
    with pytest.raises(RunDirectoryError, match="symbolic link"):
        run.append_steps(records)
    run.tensors_dir.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(RunDirectoryError, match="symbolic link"):
        run.append_tensor_steps([1], 1, ["w"], np.zeros((1, 1)))
    assert list(elsewhere.iterdir()) == []


def test_sweep_files_and_trials_are_not_written_through_links(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    sweep = SweepDirectory(tmp_path / "sweep")
    sweep.path.mkdir()
    sweep.description_path.symlink_to(target)
    with pytest.raises(RunDirectoryError, match="symbolic link"):
        sweep.start({"base": {}, "grid": {}}, force=True)
    sweep.description_path.unlink()
    sweep.selected_path.symlink_to(target)
    with pytest.raises(RunDirectoryError, match="symbolic link"):
        sweep.write_selected({"trial": "x"})
    sweep.table_path("trials").symlink_to(target)
    with pytest.raises(RunDirectoryError, match="symbolic link"):
        sweep.write_table("trials", [{"trial": "x"}])
    assert target.read_text() == "keep me"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (sweep.path / "trials").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(RunDirectoryError, match="symbolic link"):
        sweep.run("trials/sgd")


@pytest.mark.parametrize("name", ["trials/..", "trials/../..", "../x", "/tmp/x", "trials/a/b", "other/x", "trials/."])
def test_a_sweep_run_name_cannot_leave_its_folder(tmp_path, name):
    with pytest.raises(ValueError, match="names no run of the sweep"):
        SweepDirectory(tmp_path / "sweep").run(name)


# ----------------------------------------------------- names that become paths stay names


@pytest.mark.parametrize("preset", ["../escape", "..", "/tmp/abs", "a/b", "a\\b", ".hidden"])
def test_a_preset_that_is_not_a_folder_name_is_refused(preset):
    from regimes.experiment import ConfigError, get_preset

    with pytest.raises(ConfigError, match="preset .* cannot name a folder"):
        get_preset("mlp-breast-cancer").replace(preset=preset)


def test_a_preset_name_is_refused_by_the_cli_in_one_line(tmp_path, capsys, monkeypatch):
    from regimes.cli import main

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "my.toml"
    config.write_text('model = "mlp"\ndataset = "breast-cancer"\npreset = "../../escape"\n')
    assert main(["run", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("regimes: error: preset") and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my.toml"]


@pytest.mark.parametrize("value", ["..", ".", ".hidden"])
def test_a_grid_value_that_would_name_no_trial_folder_is_refused(value):
    from regimes.experiment import ConfigError, get_preset
    from regimes.experiment.grids import grid_from_dict

    grid = grid_from_dict({"optimizer": [{"name": value, "optimizer": "sgd"}, "adam"]})
    with pytest.raises(ConfigError, match="grid key 'optimizer'"):
        grid.trials(get_preset("mlp-breast-cancer"))


# ------------------------------------------------- --force removes only what regimes wrote


def _a_run(path: Path) -> RunDirectory:
    run = RunDirectory(path)
    run.create({"model": "mlp", "dataset": "breast-cancer"})
    run.append_steps({"iteration": [1], "epoch": [1], "dw": [0.1], "da": [0.2]})
    run.write_epochs([{"epoch": 1, "val_score": 0.5}])
    run.write_summary({"status": "finished", "rho": 1.0})
    return run


def test_force_keeps_a_users_files_and_a_nested_run(tmp_path):
    run = _a_run(tmp_path / "run")
    (run.steps_dir / "notes.txt").write_text("mine")
    nested = _a_run(run.steps_dir / "nested")
    (run.path / "analysis.ipynb").write_text("mine too")
    run.create({"model": "mlp", "dataset": "other"}, force=True)
    assert (run.steps_dir / "notes.txt").read_text() == "mine"
    assert (run.path / "analysis.ipynb").read_text() == "mine too"
    assert nested.read_summary()["rho"] == 1.0 and nested.chunk_paths()
    assert not run.chunk_paths() and not run.epochs_path.exists() and not run.has_summary()
    run.remove(up_to=run.path)
    assert (run.steps_dir / "notes.txt").exists() and nested.has_config()


def test_force_refuses_a_linked_steps_folder_and_removes_nothing_there(tmp_path):
    elsewhere = _a_run(tmp_path / "elsewhere")
    run = _a_run(tmp_path / "run")
    for path in run.chunk_paths():
        path.unlink()
    run.steps_dir.rmdir()
    run.steps_dir.symlink_to(elsewhere.steps_dir, target_is_directory=True)
    with pytest.raises(RunDirectoryError, match="symbolic link"):
        run.create({"model": "mlp"}, force=True)
    assert elsewhere.chunk_paths()


class _Writes:
    """An engine that trains nothing: each job's run gets its config and a finished summary."""

    def run(self, jobs, on_result):
        from regimes.records import RunSummary

        for job in jobs:
            run = RunDirectory(job.out)
            run.create(job.config.to_dict(), force=True)
            summary = RunSummary(status="finished", best_score=0.9, higher_is_better=True, rho=1.0)
            run.write_summary(summary)
            on_result(job, summary)

    def close(self):
        pass


def test_sweep_force_twice_keeps_a_users_file_inside_trials(tmp_path):
    from regimes.experiment import get_preset
    from regimes.experiment.grids import grid_from_dict
    from regimes.experiment.sweep import run_sweep

    grid = grid_from_dict({"optimizer": ["sgd", "adam"], "lr": [1e-2]})
    base = get_preset("mlp-breast-cancer").replace(max_epochs=1)
    out = tmp_path / "sweep"
    run_sweep(base, grid, out, _Writes(), seeds=2)
    (out / "trials" / "notes.txt").write_text("mine")
    (out / "trials" / "sgd-lr1e-2" / "plot.png").write_bytes(b"mine")
    (out / "seeds" / "seed1" / "notes.txt").write_text("mine")
    mine = _a_run(out / "trials" / "sgd-lr1e-2" / "my-run")
    for _ in range(2):
        run_sweep(base.replace(max_epochs=2), grid, out, _Writes(), seeds=2, force=True)
    assert (out / "trials" / "notes.txt").read_text() == "mine"
    assert (out / "trials" / "sgd-lr1e-2" / "plot.png").read_bytes() == b"mine"
    assert (out / "seeds" / "seed1" / "notes.txt").read_text() == "mine"
    assert mine.read_summary()["rho"] == 1.0
    assert RunDirectory(out / "trials" / "adam-lr1e-2").read_config()["max_epochs"] == 2


# ------------------------------------- `regimes report` skips a damaged or hostile run, in one line


def _hostile_runs(root: Path) -> list[str]:
    """Run (and sweep) directories whose files a report must not believe; their names."""
    import json

    from test_report import make_run

    made = []

    def run(name):
        made.append(name)
        return make_run(root / name)

    (run("nested").summary_path).write_text("[" * 100_000 + "]" * 100_000)
    (run("config-nested").config_path).write_text("a = " + "[" * 100_000 + "]" * 100_000)
    summary = run("rho-text").summary_path
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "rho": "12.5"}))
    summary = run("members-claimed").summary_path
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "steps": "many"}))
    summary = run("sites-numbers").summary_path
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "sites": [1, 2]}))
    geometry = run("geometry-text")
    geometry.write_geometry(
        [
            {
                "epoch": 1,
                "iteration": 40,
                "distance_median": "far",
                "certified_median": 0.1,
                "step_over_radius": 1.0,
                "no_flip_guaranteed": 0.5,
                "no_flip_observed": 0.5,
            }
        ]
    )
    import pyarrow as pa
    import pyarrow.parquet as pq

    epochs = run("score-text")
    pq.write_table(pa.table({"epoch": [1], "val_score": ["0.99"]}), epochs.epochs_path)
    sweep = SweepDirectory(root / "sweep-list")
    sweep.path.mkdir()
    sweep.description_path.write_text("[]")
    made.append("sweep-list")
    sweep = SweepDirectory(root / "sweep-escape")
    sweep.path.mkdir()
    sweep.description_path.write_text('{"model": "mlp", "dataset": "breast-cancer"}')
    sweep.selected_path.write_text('{"path": "../good"}')
    made.append("sweep-escape")
    return made


def test_report_skips_each_hostile_run_in_one_line_and_reports_the_others(tmp_path, capsys):
    from test_report import make_run

    from regimes.cli import main

    make_run(tmp_path / "good")
    hostile = _hostile_runs(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == len(hostile) and all(line.startswith("regimes: skipped ") for line in lines), lines
    assert sorted(Path(line.split()[2].rstrip(",")).name for line in lines) == sorted(hostile)
    assert "Traceback" not in captured.err
    assert f"over 1 run; left out {len(hostile)} of {len(hostile) + 1}" in captured.out
    assert main(["report", "--strict", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("regimes: error: ") and "\n" not in err


def test_a_summary_claiming_a_sweeps_members_does_not_reach_the_aggregate(tmp_path):
    import json

    from test_report import make_run

    from regimes.report import aggregate_line, study_table
    from regimes.runs import load_runs

    run = make_run(tmp_path / "claims")
    summary = json.loads(run.summary_path.read_text())
    fake = [{"seed": s, "status": "finished", "rho": 100.0} for s in range(5)]
    run.summary_path.write_text(json.dumps({**summary, "members": fake, "seeds": 5}))
    rows = study_table(load_runs([tmp_path]))
    assert "over 1 run" in aggregate_line(rows) and "100" not in aggregate_line(rows)


# ------------------------------------------------------ validity: a run says how far it can be read


@pytest.mark.parametrize(
    "summary, every, measured",
    [
        ({"steps": 100, "window": 10}, None, True),
        ({"steps": 19, "window": 10}, None, False),
        ({"steps": 100, "window": 10}, 5, True),
        ({"steps": 99, "window": 10}, 5, False),
        ({"steps": 99, "window": 10, "track_every": 5}, None, False),
        ({"window": 10}, None, None),
    ],
)
def test_validity_measured_is_two_measurements_per_window(summary, every, measured):
    from regimes.records import validity

    assert validity(summary, every=every)["measured"] is measured
    assert ("not measured" in validity(summary, every=every)["flags"]) == (measured is False)


@pytest.mark.parametrize(
    "summary, majority, learned",
    [
        ({"higher_is_better": True, "best_score": 0.61}, 0.56, True),
        ({"higher_is_better": True, "best_score": 0.60}, 0.56, False),
        ({"higher_is_better": True, "best_score": 0.9, "majority_score": 0.88}, None, False),
        ({"higher_is_better": True, "best_score": None}, 0.5, False),
        ({"higher_is_better": True, "best_score": 0.9}, None, None),
        ({"higher_is_better": False, "best_score": 90.0, "first_score": 100.0}, None, True),
        ({"higher_is_better": False, "best_score": 91.0, "first_score": 100.0}, None, False),
        ({"higher_is_better": False, "best_score": 91.0}, None, None),
    ],
)
def test_validity_learned_beats_the_majority_or_the_first_score(summary, majority, learned):
    from regimes.records import validity

    assert validity(summary, majority_score=majority)["learned"] is learned


def test_validity_frozen_and_the_summary_fields_round_trip(tmp_path):
    from regimes.records import RunSummary, validity

    assert validity({"freeze_iteration": 30})["frozen"] is True and validity({})["frozen"] is False
    assert validity({}) == {"measured": None, "learned": None, "frozen": False, "flags": []}
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    run.write_summary(RunSummary(majority_score=0.63, first_score=0.7, measured=True, learned=False, frozen=False))
    back = run.read_summary()
    assert (back.majority_score, back.first_score, back.measured, back.learned, back.frozen) == (
        0.63,
        0.7,
        True,
        False,
        False,
    )
    assert validity(back)["flags"] == ["not learned"]  # no numbers to decide: the run's own word


def _with(run: RunDirectory, **changes) -> RunDirectory:
    import json

    summary = json.loads(run.summary_path.read_text())
    run.summary_path.write_text(json.dumps({**summary, **changes}))
    return run


def test_the_report_flags_invalid_runs_and_leaves_them_out_of_the_mean(tmp_path):
    from test_report import make_run

    from regimes.report import render
    from regimes.runs import load_runs

    good = load_runs([make_run(tmp_path / "good").path])[0]
    _with(make_run(tmp_path / "frozen", lr=1e-3), freeze_iteration=40)
    _with(make_run(tmp_path / "chance", lr=1e-4), majority_score=0.95)
    text = render(load_runs([tmp_path]))
    header = [c.strip() for c in text.splitlines()[0].strip("|").split("|")]
    assert header[header.index("status") + 1] == "flags"
    assert "| frozen " in text and "| not learned " in text
    assert f"mean rho = {good['rho']:.2f} (+0.00 / -0.00) over 1 run; left out 2 of 3: 1 not learned, 1 frozen" in text
    assert "not flagged" in text
    assert "over 3 runs" in render(load_runs([tmp_path]), include_flagged=True)


def test_unrelated_runs_get_one_aggregate_line_each(tmp_path):
    from test_report import make_run

    from regimes.report import render
    from regimes.runs import load_runs

    make_run(tmp_path / "a", "mlp", "breast-cancer")
    make_run(tmp_path / "b", "mlp", "breast-cancer", lr=1e-3)
    make_run(tmp_path / "c", "lenet5", "mnist")
    lines = render(load_runs([tmp_path])).strip().splitlines()
    assert lines[-2].startswith("MLP / Breast Cancer: mean rho = ") and "over 2 runs" in lines[-2]
    assert lines[-1].startswith("LeNet5 / MNIST: mean rho = ") and "over 1 run" in lines[-1]


def test_rows_that_look_alike_name_their_directories(tmp_path):
    from test_report import make_run

    from regimes.report import render
    from regimes.runs import load_runs

    make_run(tmp_path / "first-try")
    make_run(tmp_path / "second-try", tau_w=300.0)
    text = render(load_runs([tmp_path]))
    assert text.splitlines()[0].rstrip(" |").endswith("run")
    assert "first-try" in text and "second-try" in text


def test_a_sweeps_row_uses_one_aggregate_for_every_rho(tmp_path):
    from test_honest_output import make_sweep

    from regimes.runs import load_runs

    sweep = make_sweep(tmp_path / "sweep", {0: (200.0, "finished"), 1: (120.0, "finished"), 2: (300.0, "finished")})
    for seed, value in enumerate((1.0, 2.0, 6.0)):
        _with(sweep.run(f"seeds/seed{seed}"), rho_global=value, rho_layerwise=10 * value)
    _with(sweep.run("trials/sgd"), rho_global=50.0, rho_layerwise=70.0)
    (row,) = load_runs([sweep.path])
    assert row["rho_global"] == pytest.approx(3.0) and row["rho_layerwise"] == pytest.approx(30.0)


def test_validity_keeps_the_runs_own_word_unless_told_the_numbers():
    from regimes.records import validity

    written = {
        "steps": 100,
        "window": 10,
        "measured": False,
        "higher_is_better": True,
        "best_score": 0.9,
        "majority_score": 0.5,
        "learned": False,
    }
    assert validity(written)["measured"] is False and validity(written)["learned"] is False
    assert validity(written, every=1)["measured"] is True and validity(written, majority_score=0.5)["learned"] is True
