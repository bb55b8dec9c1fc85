"""Safe under mistakes and faults (issue 9): one writer per run directory, a failed start leaves
nothing behind, Ctrl-C and `kill` end a run as interrupted wherever they land, a user's mistake is
one line (exit 2) naming the cause and the way out, a bug of ours keeps its traceback, nothing
is accepted silently, and a missing data set fails fast offline."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")
pd = pytest.importorskip("pandas", reason="these tests read runs with pandas: pip install -e '.[study]'")
import torch

from regimes.cli import build_parser, main
from regimes.experiment import Callback, get_preset, train_run
from regimes.experiment.engines import LocalEngine
from regimes.experiment.grids import grid_from_dict
from regimes.experiment.setup import resolve_device
from regimes.experiment.sweep import run_sweep
from regimes.records import RunDirectory, RunLockedError, SweepDirectory

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
BATCHES = 15  # mlp-breast-cancer: 455 training samples in batches of 32 (the last one of 7 kept)


@pytest.fixture(autouse=True)
def _data_cache_and_cwd(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REGIMES_DATA", str(tmp_path_factory.getbasetemp() / "data"))
    # A command that is refused writes nothing; one that is not (a test that fails) must not write
    # into the checkout either: the default --out is under the working directory.
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def small(**changes):
    return get_preset("mlp-breast-cancer").replace(**{"max_epochs": 3, **changes})


def errors(capsys) -> str:
    """What the last command printed to stderr, checked to be the one line of a user's mistake."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("regimes: error: ") and "\n" not in err, err
    assert "Traceback" not in err and ".tmp" not in err, err
    return err


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` (but the lock, which only holds a PID), by relative name."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != RunDirectory.LOCK
    }


# -------------------------------------------------------------------- one writer per run directory


def test_a_second_writer_is_refused_with_the_pid_of_the_first(tmp_path):
    run = RunDirectory(tmp_path / "run")
    with run.writer():
        assert run.lock_path.read_text().strip() == str(os.getpid())
        with pytest.raises(RunLockedError, match=f"being written by process {os.getpid()}.*another --out"):
            with RunDirectory(tmp_path / "run").writer():
                pass
    with run.writer():  # released at the end of the block
        pass


# A `regimes run` that stops after its first epoch (checkpoint written) until a gate file
# appears: a real process holding the run, for other real processes to meet.
GATED = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from regimes.experiment.callbacks import Checkpoint

    gate = Path(sys.argv[1])
    original = Checkpoint.on_epoch_end

    def wait_at_the_gate(self, run, **kwargs):
        original(self, run, **kwargs)
        if run.epoch == 1:
            gate.with_suffix(".ready").touch()
            give_up = time.time() + 300  # never outlive a test run that was itself killed
            while not gate.exists() and time.time() < give_up:
                time.sleep(0.02)

    Checkpoint.on_epoch_end = wait_at_the_gate
    from regimes.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def _regimes(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "regimes", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture
def start_gated(tmp_path):
    """Start a gated `regimes run ARGS`; returns (process, gate) once it waits at the gate. The
    process is killed at the end of the test whatever happened (a failing test must not leave
    it waiting)."""
    started = []

    def start(*args) -> tuple[subprocess.Popen, Path]:
        script, gate = tmp_path / "gated.py", tmp_path / "gate"
        script.write_text(GATED)
        process = subprocess.Popen(
            [sys.executable, str(script), str(gate), *map(str, args)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        deadline = time.time() + 240
        while not gate.with_suffix(".ready").exists():
            if process.poll() is not None or time.time() > deadline:
                pytest.fail(f"the gated run did not reach its first epoch: {process.communicate(timeout=5)}")
            time.sleep(0.05)
        return process, gate

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.slow
def test_concurrent_run_and_resume_the_second_is_refused_and_the_first_is_intact(tmp_path, start_gated):
    out = tmp_path / "run"
    first, gate = start_gated("run", "mlp-breast-cancer", "--out", out, "--set", "max_epochs=3", "--quiet")
    before = snapshot(out)
    resume = _regimes("run", "--resume", out)
    assert resume.returncode == 2, resume.stderr
    assert f"is being written by process {first.pid}" in resume.stderr and "Traceback" not in resume.stderr
    other = _regimes("run", "mlp-breast-cancer", "--out", out, "--seed", "2", "--force", "--quiet")
    assert other.returncode == 2 and f"process {first.pid}" in other.stderr, other.stderr
    assert snapshot(out) == before  # neither touched a file

    gate.touch()
    assert first.wait(timeout=240) == 0, first.communicate()
    run = RunDirectory(out)
    summary, steps = run.read_summary(), run.read_steps()
    assert summary["status"] == "finished" and summary["seed"] == 0 and run.read_config()["seed"] == 0
    assert len(steps["iteration"]) == summary["steps"] == summary["stop_epoch"] * BATCHES
    np.testing.assert_array_equal(steps["iteration"], np.arange(1, summary["steps"] + 1))


@pytest.mark.slow
def test_kill_9_releases_the_lock_and_the_run_resumes(tmp_path, start_gated):
    out = tmp_path / "run"
    first, _gate = start_gated("run", "mlp-breast-cancer", "--out", out, "--set", "max_epochs=2", "--quiet")
    first.kill()  # SIGKILL: no handler runs, the kernel drops the lock
    first.wait(timeout=60)
    assert RunDirectory(out).lock_path.read_text().strip() == str(first.pid)  # a stale PID, no longer a lock
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    summary = RunDirectory(out).read_summary()
    assert summary["status"] == "finished" and summary["steps"] == 2 * BATCHES


@pytest.mark.slow
def test_sigterm_ends_a_run_like_ctrl_c(tmp_path, start_gated):
    out = tmp_path / "run"
    first, _gate = start_gated("run", "mlp-breast-cancer", "--out", out, "--set", "max_epochs=2", "--quiet")
    first.send_signal(signal.SIGTERM)
    _stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    assert f"regimes run --resume {out}" in stderr and "Traceback" not in stderr
    run = RunDirectory(out)
    assert run.read_summary()["status"] == "interrupted" and len(run.read_epochs()) == 1
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert run.read_summary()["status"] == "finished"


def test_a_sweeps_trial_is_locked_by_its_training(tmp_path):
    out = tmp_path / "sweep"
    grid = grid_from_dict({"lr": [1e-2, 1e-3]}, name="two")
    busy = SweepDirectory(out).run(SweepDirectory(out).trial_name("lr1e-2"))
    with contextlib.ExitStack() as held:

        def events(kind, **info):
            if kind == "phase":  # the sweep has started: another process begins training this trial
                held.enter_context(busy.writer())

        with LocalEngine(workers=1, threads=1, device="cpu") as engine:
            selected = run_sweep(small(max_epochs=1), grid, out, engine, events=events)
    rows = {row["trial"]: row for row in SweepDirectory(out).read_table(SweepDirectory.TRIALS)}
    assert set(rows) == {"lr1e-2", "lr1e-3"}, rows
    assert rows["lr1e-2"]["status"] == "failed" and f"process {os.getpid()}" in rows["lr1e-2"]["error"]
    assert rows["lr1e-3"]["status"] == "finished" and selected["trial"] == "lr1e-3"
    assert not busy.has_config()  # the refused trial wrote nothing into the busy run


# -------------------------------------------------------------- a failed start leaves nothing


def _no_cuda_device() -> str:
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


TYPOS = {
    "a model argument": ["--set", "model_args.hiddn=[8]"],
    "a model name": ["--set", "model=mlpp"],
    "a data set name": ["--set", "dataset=breast-cancr"],
    "a task name": ["--set", "task=clasification"],
    "an unavailable device": ["--device", _no_cuda_device()],
    "a device name": ["--device", "gpu"],
    "a non-finite number": ["--set", "lr=inf"],
    "a list that is not one": ["--set", "model_args.hidden=abc"],
}


@pytest.mark.parametrize("mistake", list(TYPOS))
def test_a_mistake_leaves_no_directory_and_the_corrected_command_runs(mistake, tmp_path, capsys):
    out = tmp_path / "runs" / "run"
    assert main(["run", "mlp-breast-cancer", "--out", str(out), "--quiet", *TYPOS[mistake]]) == 2
    errors(capsys)
    assert list(tmp_path.iterdir()) == []
    assert main(["run", "mlp-breast-cancer", "--out", str(out), "--quiet", "--set", "max_epochs=1"]) == 0  # no --force


def test_a_sweep_with_a_misspelt_name_leaves_no_directory(tmp_path, capsys):
    for typo in ("model_args.hiddn=[8]", "model=mlpp", "dataset=breast-cancr", "task=clasification"):
        assert (
            main(
                [
                    "sweep",
                    "mlp-breast-cancer",
                    "--out",
                    str(tmp_path / "sweep"),
                    "--grid",
                    "small",
                    "--set",
                    typo,
                    "--quiet",
                ]
            )
            == 2
        )
        assert "did you mean" in errors(capsys)
        assert list(tmp_path.iterdir()) == []


def test_missing_data_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # the default --out is runs/<preset>-seed<seed>, under the working directory
    assert main(["run", "mlp-adult", "--data-dir", str(tmp_path / "empty"), "--quiet"]) == 2
    assert "Data set 'adult' was not found" in capsys.readouterr().err
    assert main(["run", "mlp-breast-cancer", "--set", "model_args.hiddn=[8]", "--quiet"]) == 2
    assert list(cwd.iterdir()) == []


class _FailsAtStep(Callback):
    def __init__(self, step, error):
        self.step, self.error = step, error

    def on_step_end(self, run, **kwargs):
        if run.tracker.iteration == self.step:
            raise self.error


def test_a_run_that_fails_before_its_first_epoch_leaves_no_directory(tmp_path):
    out = tmp_path / "new" / "folders" / "run"
    with pytest.raises(RuntimeError, match="out of memory"):
        train_run(small(), out, callbacks=[_FailsAtStep(3, RuntimeError("CUDA out of memory"))])
    assert list(tmp_path.iterdir()) == []
    # Into a folder the user made, with a file of theirs: the run's files go, theirs and the folder stay.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(RuntimeError):
        train_run(small(), tmp_path / "mine", callbacks=[_FailsAtStep(3, RuntimeError("boom"))])
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_a_run_that_recorded_nothing_is_replaced_without_force(tmp_path, capsys):
    out = tmp_path / "run"
    RunDirectory(out).create(small(seed=3).to_dict())  # killed (-9) before its first epoch ended
    assert main(["run", "mlp-breast-cancer", "--out", str(out), "--quiet", "--set", "max_epochs=1"]) == 0
    other = tmp_path / "other"
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C in the first epoch: interrupted, nothing recorded
        train_run(small(seed=3), other, callbacks=[_FailsAtStep(3, KeyboardInterrupt())])
    assert RunDirectory(other).read_summary()["status"] == "interrupted"
    assert main(["run", "mlp-breast-cancer", "--out", str(other), "--quiet", "--set", "max_epochs=1"]) == 0
    assert RunDirectory(other).read_summary()["seed"] == 0


# ---------------------------------------------------------------- Ctrl-C wherever it lands


class _InterruptInsideTheProbe(Callback):
    """Ctrl-C inside the model's forward while the tracker probes it (eval mode, no grad)."""

    def __init__(self, at_iteration):
        self.at_iteration = at_iteration

    def on_train_begin(self, run, **kwargs):
        def hook(module, args):
            if not module.training and not torch.is_grad_enabled() and run.tracker.iteration == self.at_iteration:
                raise KeyboardInterrupt

        self.handle_ = run.model.register_forward_pre_hook(hook)


def test_ctrl_c_inside_the_probe_ends_like_any_ctrl_c(tmp_path):
    config = small()
    whole = train_run(config, tmp_path / "whole", device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train_run(config, tmp_path / "cut", device="cpu", callbacks=[_InterruptInsideTheProbe(BATCHES + 3)])
    cut = RunDirectory(tmp_path / "cut")
    assert cut.read_summary()["status"] == "interrupted" and len(cut.read_epochs()) == 1
    resumed = train_run(config, tmp_path / "cut", device="cpu", resume=True)
    for key in ("rho", "auc_w", "auc_p", "best_score", "stop_epoch", "steps"):
        assert resumed[key] == whole[key], key
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "whole" / "steps"), pd.read_parquet(tmp_path / "cut" / "steps")
    )


def test_ctrl_c_inside_the_probe_in_the_cli(tmp_path, monkeypatch, capsys):
    from regimes.experiment import training

    setup = training.setup_run

    def setup_with_a_ctrl_c(*args, **kwargs):
        run = setup(*args, **kwargs)
        _InterruptInsideTheProbe(BATCHES + 3).on_train_begin(run)
        return run

    monkeypatch.setattr(training, "setup_run", setup_with_a_ctrl_c)
    out = tmp_path / "run"
    assert main(["run", "mlp-breast-cancer", "--out", str(out), "--set", "max_epochs=2", "--quiet"]) == 130
    assert f"regimes run --resume {out}" in capsys.readouterr().err
    assert RunDirectory(out).read_summary()["status"] == "interrupted"
    monkeypatch.undo()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert RunDirectory(out).read_summary()["status"] == "finished"


# ------------------------------------------------ one line for a user's mistake, a traceback for a bug


def _unwritable_folder(tmp_path) -> Path:
    """A folder this process cannot write into: a read-only one, or for root (whom permissions
    do not stop) a place in /sys, where nobody can make files."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    folder = Path("/sys/regimes-test")
    try:
        folder.mkdir()
    except OSError:
        return folder
    folder.rmdir()
    pytest.skip("no folder here refuses writes")


@pytest.mark.parametrize(
    "device, says",
    [(_no_cuda_device(), "--device cpu|has .* CUDA device"), ("gpu", "use cpu, cuda"), ("mps", "MPS .* not available")],
)
def test_devices_that_are_not_here(device, says, tmp_path, capsys):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    assert main(["run", "mlp-breast-cancer", "--out", str(tmp_path / "run"), "--device", device]) == 2
    assert re.search(says, errors(capsys))
    assert not (tmp_path / "run").exists()


def test_output_and_config_paths_that_cannot_be_used(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    assert main(["run", "mlp-breast-cancer", "--out", str(tmp_path / "a-file"), "--quiet"]) == 2
    assert "is not a directory: choose another --out" in errors(capsys)
    assert main(["run", "mlp-breast-cancer", "--out", str(tmp_path / "a-file" / "run"), "--quiet"]) == 2
    assert "choose another --out" in errors(capsys)

    unwritable = _unwritable_folder(tmp_path)
    assert main(["run", "mlp-breast-cancer", "--out", str(unwritable / "run"), "--quiet"]) == 2
    assert "cannot write into" in errors(capsys)

    (tmp_path / "configs").mkdir()
    assert main(["run", str(tmp_path / "configs"), "--quiet"]) == 2
    assert "is a folder, not a TOML config" in errors(capsys)
    assert main(["run", str(tmp_path / "missing.toml"), "--quiet"]) == 2
    assert "no config file" in errors(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "configs"] + (["read-only"] if os.geteuid() else [])


@pytest.fixture
def interrupted_run(tmp_path) -> RunDirectory:
    """A run killed after its second of three epochs."""
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_run(small(), out, device="cpu", callbacks=[_FailsAtStep(2 * BATCHES + 2, KeyboardInterrupt())])
    return RunDirectory(out)


def test_a_corrupt_checkpoint_on_resume(interrupted_run, capsys):
    interrupted_run.checkpoint_path.write_bytes(interrupted_run.checkpoint_path.read_bytes()[:1000])
    before = snapshot(interrupted_run.path)
    assert main(["run", "--resume", str(interrupted_run.path), "--quiet"]) == 2
    err = errors(capsys)
    assert "checkpoint.pt cannot be read" in err and "records are kept" in err and "--force" in err
    assert snapshot(interrupted_run.path) == before


def test_a_truncated_step_file_on_resume(interrupted_run, capsys):
    chunk = interrupted_run.chunk_paths()[0]
    chunk.write_bytes(chunk.read_bytes()[:200])
    before = snapshot(interrupted_run.path)
    assert main(["run", "--resume", str(interrupted_run.path), "--quiet"]) == 2
    err = errors(capsys)
    assert f"{chunk} is damaged" in err and "--force" in err
    assert snapshot(interrupted_run.path) == before


def test_a_truncated_per_tensor_file_on_resume(interrupted_run, capsys):
    chunk = sorted((interrupted_run.path / interrupted_run.TENSORS).glob("part-*.parquet"))[0]
    chunk.write_bytes(chunk.read_bytes()[:200])
    before = snapshot(interrupted_run.path)
    assert main(["run", "--resume", str(interrupted_run.path), "--quiet"]) == 2
    err = errors(capsys)
    assert f"{chunk} is damaged" in err and "--force" in err
    assert snapshot(interrupted_run.path) == before  # nothing truncated before the check


def test_report_figure_into_a_folder_that_cannot_be_written(tmp_path, capsys):
    assert main(["run", "mlp-breast-cancer", "--out", str(tmp_path / "run"), "--set", "max_epochs=1", "--quiet"]) == 0
    capsys.readouterr()
    figure = _unwritable_folder(tmp_path) / "grid.png"
    assert main(["report", str(tmp_path / "run"), "--figure", str(figure)]) == 2
    assert "cannot write" in errors(capsys)


def test_a_bug_keeps_its_traceback_and_leaves_no_directory(tmp_path, monkeypatch):
    from regimes.experiment import training

    def bug(run):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(training, "train_epoch", bug)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["run", "mlp-breast-cancer", "--out", str(tmp_path / "run"), "--quiet"])
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- nothing accepted silently


def test_resume_refuses_changes_to_the_run(interrupted_run, capsys):
    before = snapshot(interrupted_run.path)
    for change in (["--set", "lr=0.5"], ["--seed", "4"], ["--force"]):
        assert main(["run", "--resume", str(interrupted_run.path), *change]) == 2
        assert "--resume continues the run as its config.toml says" in errors(capsys)
    assert snapshot(interrupted_run.path) == before


def test_config_numbers_must_be_finite(tmp_path, capsys):
    for text in ("lr=inf", "weight_decay=nan", "model_args.dropout=-inf"):
        assert main(["run", "mlp-breast-cancer", "--out", str(tmp_path / "run"), "--set", text]) == 2
        assert "must be a finite number" in errors(capsys)


def test_a_list_argument_that_is_not_a_list(tmp_path, capsys):
    assert main(["run", "mlp-breast-cancer", "--out", str(tmp_path / "run"), "--set", "model_args.hidden=abc"]) == 2
    assert "hidden must be a list of positive integers (e.g. [64, 32]), got 'abc'" in errors(capsys)


def test_a_minimal_config_is_told_the_data_sets_sizes(tmp_path, capsys):
    path = tmp_path / "minimal.toml"
    path.write_text('model = "mlp"\ndataset = "breast-cancer"\nmax_epochs = 1\n')
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = errors(capsys)
    assert "input_size = 30, num_classes = 2" in err
    assert not out.exists()
    fix = err.split("or pass ")[1].split()
    assert main(["run", str(path), "--out", str(out), "--quiet", *fix]) == 0


# ------------------------------------------------------------------------------ offline, install


# In a process of its own, as a user runs it: the Hugging Face libraries read their settings on import.
TIMED_LOOKUP = textwrap.dedent(
    """
    import sys, time
    import datasets  # installed: the hub is the last place a data set is looked for
    from regimes.data import DataNotFoundError, load_dataset

    started = time.perf_counter()
    try:
        load_dataset("adult", sys.argv[1])
    except DataNotFoundError as error:
        print(f"{time.perf_counter() - started:.3f}")
        print(error)
    """
)


@pytest.mark.parametrize(
    "setting",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
    ids=["HF_HUB_OFFLINE=1", "hub unreachable"],
)
def test_a_missing_data_set_fails_fast_offline(setting, tmp_path):
    pytest.importorskip("datasets")
    quiet = (
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_ENDPOINT",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    )
    env = {**{k: v for k, v in _env().items() if k not in quiet}, **setting}
    # 127.0.0.1:9 has nothing listening: the hub cannot be reached, as with no network at all.
    done = subprocess.run(
        [sys.executable, "-c", TIMED_LOOKUP, str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    seconds, message = done.stdout.split("\n", 1)
    assert "Data set 'adult' was not found" in message, done.stdout + done.stderr
    assert float(seconds) < 2.0, message
    if "HF_ENDPOINT" in setting:
        assert "the hub cannot be reached (127.0.0.1:9" in message


def test_the_hub_check_tells_an_answering_endpoint_from_a_silent_one(monkeypatch):
    import socket

    from regimes.data.sources import hub_unreachable

    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with socket.create_server(("127.0.0.1", 0)) as server:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_unreachable() is None  # a hub that answers is tried as before
    assert hub_unreachable().startswith("127.0.0.1:")  # the same port, closed


def test_pandas_comes_with_the_study_extra():
    import tomllib

    study = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["study"]
    assert any(requirement.startswith("pandas") for requirement in study)


def test_run_and_sweep_default_to_the_same_device():
    parser = build_parser()
    assert parser.parse_args(["run", "mlp-breast-cancer"]).device is None
    assert parser.parse_args(["sweep", "mlp-breast-cancer"]).device is None
    here = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == here
    assert LocalEngine(workers=1).device == here.type
