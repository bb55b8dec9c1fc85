"""The study's sweeps: grids, selection, seeds and their interval, engines, failures and restarts.

Every sweep here is tiny: the Breast Cancer MLP for 1-2 epochs on a grid of two trials.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")
pd = pytest.importorskip("pandas", reason="these tests read runs with pandas: pip install -e '.[study]'")

from regimes.analysis import aggregate
from regimes.cli import main
from regimes.experiment import ConfigError, engines, get_preset, train_run
from regimes.experiment.callbacks import Callback
from regimes.experiment.engines import LocalEngine, make_engine
from regimes.experiment.grids import GRID_FAMILIES, family_of, grid_from_dict, load_grid, resolve_grid, study_grid
from regimes.experiment.sweep import plan_trials, run_sweep, select
from regimes.records import RunDirectory
from regimes.report import bootstrap_interval, load_runs, render, seed_statistics, study_table
from regimes.zoo import list_models

GRID = """\
optimizer = ["sgd", "adam"]
lr = [1e-2]
weight_decay = [1e-4]
"""
NUMBERS = ("best_score", "best_epoch", "stop_epoch", "auc_w", "auc_p", "rho")


@pytest.fixture
def grid_file(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    return path


def base(**changes):
    return get_preset("mlp-breast-cancer").replace(**{"max_epochs": 2, **changes})


def alone(config, out, **kwargs) -> dict:
    """`train_run` with one torch thread, as the sweeps here run their trials: the float sums
    then happen in the same order, so the numbers must be equal, not just close."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_run(config, out, **kwargs)
    finally:
        torch.set_num_threads(threads)


class Spy:
    """An engine that runs jobs in this process and remembers which."""

    def __init__(self):
        self.inner, self.ran = LocalEngine(workers=1, threads=1, device="cpu"), []

    def run(self, jobs, on_result):
        self.ran += [job.name for job in jobs]
        self.inner.run(jobs, on_result)

    def close(self):
        pass


# -- grids -------------------------------------------------------------------------------------


def test_study_grids_follow_the_spec():
    small, cnn, transformer = study_grid("small"), study_grid("cnn"), study_grid("transformer")
    assert (len(small), len(cnn), len(transformer)) == (2 * 3 * 2, 4 * 5 * 3, 3 * 4 * 2)
    assert (small.fixed["max_epochs"], cnn.fixed["max_epochs"], transformer.fixed["max_epochs"]) == (30, 200, 50)
    configs = [config for _, config in cnn.trials(base())]
    nesterov = [c for c in configs if c.nesterov]
    assert len(nesterov) == 15 and all(c.optimizer == "sgd" and c.momentum == 0.9 for c in nesterov)
    assert sorted({c.lr for c in configs}) == [1e-4, 1e-3, 1e-2, 3e-2, 6e-2]
    assert {c.weight_decay for _, c in transformer.trials(base())} == {5e-2, 1e-2}
    assert {c.optimizer for _, c in transformer.trials(base())} == {"sgd", "adam", "adamw"}


def test_family_from_the_model_name():
    assert {m: family_of(m) for m in GRID_FAMILIES if GRID_FAMILIES[m] != "transformer"} == {
        "mlp": "small",
        "lenet5": "small",
        "alexnet": "cnn",
        "resnet34": "cnn",
        "efficientnet_b0": "cnn",
        "resnet_small": "cnn",
        "efficientnet_small": "cnn",
    }
    assert family_of("gpt2") == family_of("vit") == "transformer"
    assert set(GRID_FAMILIES) == set(list_models())  # every registered model has its grid
    with pytest.raises(ValueError, match="no sweep grid for model 'vit_b16'"):
        family_of("vit_b16")
    assert resolve_grid(None, base()).name == "small"
    assert resolve_grid("cnn", base()).name == "cnn"


def test_trial_names_and_configs():
    trials = study_grid("small").trials(base(momentum=0.9, nesterov=True))
    names = [name for name, _ in trials]
    assert names[:3] == ["sgd-lr1e-2-wd1e-3", "sgd-lr1e-2-wd1e-4", "sgd-lr1e-3-wd1e-3"]
    assert names[-1] == "adam-lr1e-4-wd1e-4" and len(set(names)) == 12
    _, first = trials[0]
    assert (first.optimizer, first.lr, first.weight_decay, first.max_epochs) == ("sgd", 1e-2, 1e-3, 30)
    assert (first.momentum, first.nesterov) == (0.0, False)  # "sgd" alone is plain SGD
    assert first.model_args == base().model_args and first.seed == 0


def test_grid_file(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(
        'optimizer = ["sgd", {name = "nag", optimizer = "sgd", momentum = 0.9, nesterov = true}]\n'
        'lr = [1e-2, 3e-3]\nmax_epochs = 4\nsites = ["blocks.0.*"]\n'
    )
    grid = load_grid(path)
    assert grid.fixed == {"max_epochs": 4, "sites": ["blocks.0.*"]} and list(grid.axes) == ["optimizer", "lr"]
    trials = grid.trials(base())
    assert [n for n, _ in trials] == ["sgd-lr1e-2", "sgd-lr3e-3", "nag-lr1e-2", "nag-lr3e-3"]
    assert trials[2][1].nesterov and trials[2][1].momentum == 0.9 and trials[3][1].max_epochs == 4
    assert resolve_grid(str(path), base()).name == str(path)


@pytest.mark.parametrize(
    "data, match",
    [
        ({"lr": [1e-2], "learning_rate": [1e-3]}, "learning_rate"),
        ({"optimizer": ["sgd", {"optimizer": "adam"}]}, "name"),
        ({"optimizer": [{"name": "x", "optimizer": "sgd", "lr": 1.0}], "lr": [1e-2]}, "also sets"),
        ({"lr": []}, "empty"),
        ({"max_epochs": 3}, "no list"),
        ({"model": ["mlp"]}, "model"),
    ],
)
def test_grid_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        grid_from_dict(data)


def test_unknown_grid_family():
    with pytest.raises(ConfigError, match="cnn, small, transformer"):
        resolve_grid("big", base())


# -- selection and statistics -------------------------------------------------------------------


def _row(name, score, status="finished", higher=True):
    return {"trial": name, "status": status, "best_score": score, "higher_is_better": higher}


def test_select_follows_the_score_direction():
    rows = [
        _row("a", 0.90),
        _row("b", 0.95),
        _row("c", 0.95),
        _row("d", 0.99, "diverged"),
        _row("e", 1.0, "failed"),
        _row("f", math.nan),
    ]
    assert select(rows)["trial"] == "b"  # ties: first in grid order; only finished runs count
    perplexity = [_row("a", 40.0, higher=False), _row("b", 25.0, higher=False), _row("c", 30.0, higher=False)]
    assert select(perplexity)["trial"] == "b"
    assert select([_row("a", 0.9, "failed")]) is None


def test_bootstrap_interval_is_fixed_and_sensible():
    rhos = [0.74, 1.13, 0.92, 1.05, 0.88]
    low, high = bootstrap_interval(rhos)
    assert (low, high) == bootstrap_interval(rhos)  # a fixed generator
    assert low < np.mean(rhos) < high and min(rhos) <= low and high <= max(rhos)
    # Against a slow reference: the same resamples, drawn one at a time.
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 5, size=(10_000, 5))
    means = [np.mean([rhos[i] for i in row]) for row in idx]
    assert (low, high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert all(math.isnan(v) for v in bootstrap_interval([1.0]))
    assert bootstrap_interval([1.0, 1.0]) == (1.0, 1.0)


def test_seed_statistics():
    runs = [
        {"status": "finished", "rho": r, "best_score": 0.9, "stop_epoch": e, "auc_w": 0.3, "auc_p": 0.3 / r}
        for r, e in [(1.0, 10), (2.0, 11), (3.0, 13), (6.0, 14)]
    ] + [{"status": "failed", "rho": 100.0}]
    stats = seed_statistics(runs)
    assert stats["seeds"] == 4 and stats["rhos"] == [1.0, 2.0, 3.0, 6.0]
    assert (stats["rho"], stats["rho_upper"], stats["rho_lower"]) == pytest.approx(aggregate([1.0, 2.0, 3.0, 6.0]))
    assert (stats["rho_low"], stats["rho_high"]) == bootstrap_interval([1.0, 2.0, 3.0, 6.0])
    assert stats["stop_epoch"] == 12 and stats["best_score"] == pytest.approx(0.9)


# -- the local engine ---------------------------------------------------------------------------


def test_local_engine_shares_out_cores_and_devices(monkeypatch):
    monkeypatch.setattr(engines, "cpu_cores", lambda: 8)
    monkeypatch.setattr(engines, "_cuda_devices", lambda: 0)
    assert (LocalEngine().workers, LocalEngine().threads) == (8, 1)
    assert (LocalEngine(workers=2).workers, LocalEngine(workers=2).threads) == (2, 4)
    assert (LocalEngine(threads=4).workers, LocalEngine(threads=4).threads) == (2, 4)
    assert LocalEngine().devices == ["cpu"] * 8
    monkeypatch.setattr(engines, "_cuda_devices", lambda: 4)
    gpu = LocalEngine()
    assert gpu.device == "cuda" and gpu.workers == 4 and gpu.threads == 2
    assert gpu.devices == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert LocalEngine(workers=6).devices[4:] == ["cuda:0", "cuda:1"]
    assert LocalEngine(device="cuda:1").devices == ["cuda:1"] * 4
    with pytest.raises(ValueError, match="workers"):
        LocalEngine(workers=0)


def test_sweep_directory_end_to_end(tmp_path, grid_file):
    out = tmp_path / "sweep"
    selected = run_sweep(base(), load_grid(grid_file), out, LocalEngine(workers=1, threads=1, device="cpu"), seeds=2)

    trials = pd.read_parquet(out / "trials.parquet")
    assert list(trials.trial) == ["sgd-lr1e-2-wd1e-4", "adam-lr1e-2-wd1e-4"] and (trials.status == "finished").all()
    assert pd.read_csv(out / "trials.csv").trial.tolist() == trials.trial.tolist()
    # Each trial is an ordinary run directory, with the numbers `regimes run` gives.
    reference = alone(base(optimizer="adam"), tmp_path / "alone")
    adam = RunDirectory(out / "trials" / "adam-lr1e-2-wd1e-4").read_summary()
    assert {k: adam[k] for k in NUMBERS} == {k: reference[k] for k in NUMBERS}
    assert pd.read_parquet(out / "trials" / "adam-lr1e-2-wd1e-4" / "steps").shape[0] == adam["steps"]

    best = trials.iloc[trials.best_score.idxmax()]
    on_disk = json.loads((out / "selected.json").read_text())
    assert on_disk["trial"] == selected["trial"] == best.trial
    assert on_disk["config"]["optimizer"] == best.optimizer and on_disk["row"]["rho"] == pytest.approx(best.rho)

    seeds = pd.read_parquet(out / "seeds.parquet")
    assert list(seeds.seed) == [0, 1] and (out / "seeds" / "seed1" / "summary.json").is_file()
    assert seeds.rho[0] == pytest.approx(best.rho)  # seed 0 is the winning trial itself
    stats = on_disk["seeds"]
    assert stats["seeds"] == 2 and stats["rho"] == pytest.approx(seeds.rho.mean())
    assert stats["rho_low"] <= stats["rho"] <= stats["rho_high"]

    # `regimes report` shows the sweep as one row: the selected config, the seeds' interval.
    runs = load_runs([tmp_path])  # the sweep and the lone run beside it
    assert len(runs) == 2
    row = next(r for r in study_table(runs) if r.get("seeds"))
    assert row["seeds"] == 2 and row["rho"] == pytest.approx(stats["rho"])
    assert (row["rho_low"], row["rho_high"]) == pytest.approx((stats["rho_low"], stats["rho_high"]))
    text = render(load_runs([out]))
    assert "rho 95% CI" in text and f"[{stats['rho_low']:.2f}, {stats['rho_high']:.2f}]" in text
    assert "rho_low,rho_high,seeds" in render(load_runs([out]), "csv")

    # Fewer seeds on a rerun: nothing trains, and the report follows the current selection.
    spy = Spy()
    run_sweep(base(), load_grid(grid_file), out, spy, seeds=1)
    assert spy.ran == []
    (row,) = study_table(load_runs([out]))
    assert row["seeds"] == 1 and math.isnan(row["rho_low"]) and row["rho"] == pytest.approx(best.rho)


class Killed(Spy):
    """Trains the first job, and the second for one epoch only, then reports nothing: what a
    sweep killed in the middle of its second trial leaves on disk."""

    def run(self, jobs, on_result):
        class StopAfterOne(Callback):
            def on_epoch_end(self, run, **kwargs):
                raise KeyboardInterrupt

        self.inner.run(jobs[:1], on_result)
        with pytest.raises(KeyboardInterrupt):
            alone(jobs[1].config, jobs[1].out, callbacks=[StopAfterOne()])


def test_rerun_skips_finished_trials_and_resumes_unfinished(tmp_path, grid_file):
    out, grid = tmp_path / "sweep", load_grid(grid_file)
    config = base(max_epochs=3, patience=3)
    jobs = plan_trials(config, grid, out)
    run_sweep(config, grid, out, Killed())
    assert RunDirectory(jobs[0].out).read_summary()["status"] == "finished"
    assert RunDirectory(jobs[1].out).read_summary()["status"] == "interrupted"
    assert pd.read_csv(out / "trials.csv").status.tolist() == ["finished", "failed"]
    finished_before = Path(jobs[0].out, "summary.json").stat().st_mtime_ns

    spy = Spy()
    run_sweep(config, grid, out, spy)
    assert spy.ran == [jobs[1].name]  # the finished trial is left alone
    assert Path(jobs[0].out, "summary.json").stat().st_mtime_ns == finished_before
    resumed = RunDirectory(jobs[1].out).read_summary()
    reference = alone(jobs[1].config, tmp_path / "alone")
    assert resumed["status"] == "finished" and {k: resumed[k] for k in NUMBERS} == {k: reference[k] for k in NUMBERS}
    assert len(pd.read_parquet(Path(jobs[1].out) / "steps")) == reference["steps"]
    assert pd.read_csv(out / "trials.csv").status.tolist() == ["finished", "finished"]

    spy = Spy()
    run_sweep(config, grid, out, spy)  # everything done: nothing runs
    assert spy.ran == []


@pytest.mark.filterwarnings("ignore:non-finite parameters")
def test_failed_and_diverged_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    grid = grid_from_dict(
        {
            "optimizer": ["sgd", {"name": "broken", "optimizer": "sgd", "sites": ["no-such-site*"]}],
            "lr": [1e-2, 1e6],  # 1e6 diverges
        }
    )
    out = tmp_path / "sweep"
    spy = Spy()
    selected = run_sweep(base(max_epochs=1), grid, out, spy)
    trials = pd.read_csv(out / "trials.csv").set_index("trial")
    assert trials.status.to_dict() == {
        "sgd-lr1e-2": "finished",
        "sgd-lr1e6": "diverged",
        "broken-lr1e-2": "failed",
        "broken-lr1e6": "failed",
    }
    assert "no-such-site" in trials.error["broken-lr1e-2"]
    assert "no-such-site" in (out / "trials" / "broken-lr1e-2" / "error.txt").read_text()
    assert selected["trial"] == "sgd-lr1e-2" and selected["failed"] == ["broken-lr1e-2", "broken-lr1e6"]
    # A rerun tries the failed trials again; the diverged one counts as done.
    spy = Spy()
    run_sweep(base(max_epochs=1), grid, out, spy)
    assert spy.ran == ["trials/broken-lr1e-2", "trials/broken-lr1e6"]


def test_another_sweep_in_the_same_folder_is_refused(tmp_path, grid_file):
    out = tmp_path / "sweep"
    run_sweep(base(max_epochs=1), load_grid(grid_file), out, Spy())
    with pytest.raises(FileExistsError, match="max_epochs"):
        run_sweep(base(max_epochs=2), load_grid(grid_file), out, Spy())
    spy = Spy()
    run_sweep(base(max_epochs=2), load_grid(grid_file), out, spy, force=True)
    assert len(spy.ran) == 2 and pd.read_csv(out / "trials.csv").max_epochs.eq(2).all()


@pytest.mark.slow
def test_killing_the_sweep_loses_only_unfinished_epochs(tmp_path, grid_file):
    """A real `regimes sweep --workers 2`, killed (SIGKILL, whole process group) mid-trial, then rerun."""
    out = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "regimes",
        "sweep",
        "mlp-breast-cancer",
        "--grid",
        str(grid_file),
        "--set",
        "max_epochs=20",
        "--set",
        "patience=20",
        "--workers",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    try:
        while not list(out.glob("trials/*/checkpoint.pt")):
            assert process.poll() is None, process.stdout.read().decode()
            assert time.time() < deadline, "no trial finished an epoch within 60 s"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    statuses = [(RunDirectory(p).read_summary() or {}).get("status") for p in out.glob("trials/*")]
    assert "finished" not in statuses or len(statuses) == 2 and statuses.count("finished") < 2  # killed mid-sweep

    for run in map(RunDirectory, out.glob("trials/*")):
        if run.checkpoint_path.is_file():  # what is on disk is consistent up to the last finished epoch
            import torch

            epoch = torch.load(run.checkpoint_path, weights_only=False)["epoch"]
            assert len(run.read_epochs()) >= epoch
    rc = main(
        [
            "sweep",
            "mlp-breast-cancer",
            "--grid",
            str(grid_file),
            "--set",
            "max_epochs=20",
            "--set",
            "patience=20",
            "--workers",
            "1",
            "--threads",
            "1",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    trials = pd.read_parquet(out / "trials.parquet")
    assert (trials.status == "finished").all() and (trials.stop_epoch == 20).all()
    for name, optimizer in [("sgd-lr1e-2-wd1e-4", "sgd"), ("adam-lr1e-2-wd1e-4", "adam")]:
        reference = alone(base(max_epochs=20, patience=20, optimizer=optimizer), tmp_path / name)
        got = RunDirectory(out / "trials" / name).read_summary()
        assert {k: got[k] for k in NUMBERS} == {k: reference[k] for k in NUMBERS}
        steps = pd.read_parquet(out / "trials" / name / "steps")
        assert list(steps.iteration) == list(range(1, reference["steps"] + 1))


def test_a_trial_killed_before_its_first_checkpoint_starts_again(tmp_path, grid_file):
    """The race a killed `--workers 2` sweep can leave: a trial wrote its first epoch's records
    and summary (status running), but not yet its checkpoint. The rerun starts that trial
    again and gets the uninterrupted numbers (it used to fail: "already holds this run")."""
    out = tmp_path / "sweep"
    args = ["sweep", "mlp-breast-cancer", "--grid", str(grid_file), "--set", "max_epochs=2"]
    args += ["--workers", "1", "--threads", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    trial = RunDirectory(out / "trials" / "adam-lr1e-2-wd1e-4")
    expected = trial.read_summary()
    trial.checkpoint_path.unlink()  # as if killed between the epoch's records and its checkpoint
    trial.write_summary(expected.replace(status="running"))
    (out / "selected.json").unlink()
    assert main(args) == 0
    again = trial.read_summary()
    assert again["status"] == "finished" and trial.has_checkpoint()
    assert {k: again[k] for k in NUMBERS} == {k: expected[k] for k in NUMBERS}


# -- the command --------------------------------------------------------------------------------


def test_cli_sweep_and_report(tmp_path, grid_file, capsys):
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "mlp-breast-cancer",
        "--grid",
        str(grid_file),
        "--set",
        "max_epochs=1",
        "--seeds",
        "2",
        "--workers",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "sgd-lr1e-2-wd1e-4" in printed.out + printed.err and "selected" in printed.out
    assert "95% interval" in printed.out
    assert main(argv + ["--quiet"]) == 0  # a rerun: nothing left to do
    assert capsys.readouterr().out == ""
    assert main(["report", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert table.count("| MLP") == 1 and "rho 95% CI" in table


def test_cli_sweep_errors(tmp_path, grid_file, capsys, monkeypatch):
    common = ["--grid", str(grid_file), "--out", str(tmp_path / "s"), "--quiet"]
    assert main(["sweep", "mlp-breast-cancer", *common, "--set", "lr=3e-3"]) == 2
    assert "sweeps" in capsys.readouterr().err
    assert main(["sweep", "mlp-breast-cancer", "--grid", "huge"]) == 2
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["sweep", "mlp-breast-cancer", *common, "--set", "max_epochs=1", "--engine", "ray"]) == 2
    assert "pip install -e '.[ray]' (in the regimes checkout)" in capsys.readouterr().err


# -- the Ray engine -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.tune")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_engine_gives_the_same_sweep_directory(tmp_path, grid_file, local_ray):
    out = tmp_path / "sweep"
    engine = make_engine("ray", threads=1)
    selected = run_sweep(base(max_epochs=1), load_grid(grid_file), out, engine)
    assert local_ray.is_initialized()  # a cluster the engine did not start stays up
    trials = pd.read_parquet(out / "trials.parquet")
    assert list(trials.trial) == ["sgd-lr1e-2-wd1e-4", "adam-lr1e-2-wd1e-4"] and (trials.status == "finished").all()
    for name in trials.trial:
        assert RunDirectory(out / "trials" / name).read_summary()["status"] == "finished"
    reference = alone(base(max_epochs=1, optimizer=selected["config"]["optimizer"]), tmp_path / "alone")
    assert selected["row"]["rho"] == reference["rho"]
    assert selected["trial"] == trials.trial[trials.best_score.idxmax()]


def test_a_second_sweep_into_a_folder_being_written_is_refused_and_writes_nothing(tmp_path, grid_file, capsys):
    import os

    from regimes.records import SweepDirectory

    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "mlp-breast-cancer",
        "--grid",
        str(grid_file),
        "--out",
        str(out),
        "--quiet",
        "--set",
        "max_epochs=1",
        "--workers",
        "1",
        "--threads",
        "1",
    ]
    with SweepDirectory(out).writer(wait=0):  # another `regimes sweep` holds it
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"process {os.getpid()}" in err and "regimes sweep" in err
    assert [p.name for p in out.iterdir()] == [SweepDirectory.LOCK]  # no description, no trial
    assert main(argv) == 0  # released: the same command goes through
    assert SweepDirectory(out).read_selected()["trial"] is not None
