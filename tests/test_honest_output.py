"""Issue 9: the report never passes an unfinished run off as a result, and what the tool
prints means what it says. Each test is one case of the issue, on small synthetic run
directories (written through the records API) or a Breast Cancer run of a few epochs.
"""

import math
import os
import re
import sys
import warnings

os.environ.setdefault("MPLBACKEND", "Agg")  # before matplotlib is first imported

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")

from regimes.analysis import aggregate, bootstrap_interval, summarize
from regimes.cli import _print_result, _trial_line, main
from regimes.experiment import dump_toml, get_preset, list_presets, load_toml, train_run
from regimes.experiment.callbacks import Callback
from regimes.records import RunDirectory, RunSummary, SweepDirectory
from regimes.report import aggregate_line, render
from regimes.runs import UnreadableRunError, UnreadableRunWarning, load_runs, read_run

# The Breast Cancer run of issue 9: 0.9561 at epoch 3 is early stopping's reference, 0.9649 at epoch 4 the best.
VAL_SCORES = (0.8421, 0.9123, 0.9561, 0.9649, 0.9649, 0.9649, 0.9561, 0.9649, 0.9561, 0.9561, 0.9561, 0.9561, 0.9561)


def make_run(
    path,
    *,
    seed=0,
    status="finished",
    optimizer="sgd",
    lr=1e-2,
    val=VAL_SCORES[:6],
    tau_w=200.0,
    reference=None,
    max_epochs=30,
    batches_per_epoch=20,
):
    """A run directory: dw = exp(-t / tau_w), da = exp(-t / 50), one epoch row per `val` score.

    The summary's best_score and best_epoch are `reference` (early stopping's reference,
    as the runner writes them), by default the best of `val`.
    """
    run = RunDirectory(path)
    run.create(
        {
            "model": "mlp",
            "dataset": "breast-cancer",
            "optimizer": optimizer,
            "lr": lr,
            "weight_decay": 1e-4,
            "seed": seed,
            "max_epochs": max_epochs,
            "patience": 0,
            "min_delta": 0.01,
        }
    )
    epochs = len(val)
    t = np.arange(1, epochs * batches_per_epoch + 1)
    dw, da = np.exp(-t / tau_w), np.exp(-t / 50.0)
    run.append_steps(
        {"iteration": t, "epoch": np.repeat(np.arange(1, epochs + 1), batches_per_epoch), "dw": dw, "da": da}
    )
    run.write_epochs(
        [
            {
                "epoch": e,
                "train_loss": 1 / e,
                "train_score": v - 0.01,
                "val_loss": 1.1 / e,
                "val_score": v,
                "seconds": 0.1,
            }
            for e, v in enumerate(val, start=1)
        ]
    )
    if reference is None:
        reference = (max(val), 1 + val.index(max(val)))
    run.write_summary(
        {
            "model": "mlp",
            "dataset": "breast-cancer",
            "optimizer": optimizer,
            "weight_decay": 1e-4,
            "lr": lr,
            "seed": seed,
            "score_name": "accuracy",
            "higher_is_better": True,
            "best_score": reference[0],
            "best_epoch": reference[1],
            "stop_epoch": epochs,
            "max_epochs": max_epochs,
            "batches_per_epoch": batches_per_epoch,
            "status": status,
            **summarize(dw, da, batches_per_epoch),
        }
    )
    return run


def make_sweep(path, seeds: dict[int, tuple[float, str]]):
    """A sweep directory as `regimes sweep --seeds N` leaves it: one trial (seed 0) selected,
    and a run per seed (`seeds`: seed -> (tau_w, status)); seeds/seed0 is the trial itself."""
    sweep = SweepDirectory(path)
    sweep.start({"preset": "mlp-breast-cancer", "model": "mlp", "dataset": "breast-cancer", "base": {}, "grid": {}})
    make_run(sweep.run("trials/sgd").path, tau_w=seeds[0][0])
    for seed, (tau_w, status) in seeds.items():
        make_run(sweep.run(f"seeds/seed{seed}").path, seed=seed, tau_w=tau_w, status=status)
    sweep.write_selected(
        {
            "trial": "sgd",
            "path": "trials/sgd",
            "trials": 1,
            "failed": [],
            "seeds": {"runs": [f"seeds/seed{s}" for s in seeds]},
        }
    )
    return sweep


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def table(text: str) -> list[dict]:
    """A Markdown table's rows as dicts by header."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = cells(lines[0])
    return [dict(zip(header, cells(line))) for line in lines[2:]]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


# == The report never passes an unfinished run off as a result ====================================


def test_rows_say_their_seed_and_status(tmp_path):
    """An interrupted 4-of-30-epoch run, a running one and three seeds of one config: every
    row says which seed it is and how it stands."""
    for seed in range(3):
        make_run(tmp_path / f"seed{seed}", seed=seed, tau_w=150.0 + 50 * seed)
    make_run(tmp_path / "cut", seed=7, status="interrupted", val=VAL_SCORES[:4])
    make_run(tmp_path / "going", seed=8, status="running", val=VAL_SCORES[:2])
    rows = sorted(table(render(load_runs([tmp_path]))), key=lambda r: r["seed"])
    assert [(r["seed"], r["status"]) for r in rows] == [
        ("0", "finished"),
        ("1", "finished"),
        ("2", "finished"),
        ("7", "interrupted"),
        ("8", "running"),
    ]
    assert rows[3]["stop epoch"] == "4"
    csv_text = render(load_runs([tmp_path]), "csv")
    assert csv_text.splitlines()[0].startswith("model,dataset,optimizer,wd,lr,seed,status,")
    assert "Seed" in render(load_runs([tmp_path]), "latex") and "Status" in render(load_runs([tmp_path]), "latex")


def test_only_finished_runs_enter_the_aggregate(tmp_path):
    rows = [{"status": "finished", "rho": r} for r in (1.0, 2.0, 3.0)] + [
        {"status": "interrupted", "rho": 100.0},
        {"status": "running", "rho": 50.0},
        {"status": "diverged", "rho": 20.0},
        {"status": "failed", "rho": None},
        {"status": "finished", "rho": None},
    ]
    line = aggregate_line(rows)
    m, upper, lower = aggregate([1.0, 2.0, 3.0])
    assert line.startswith(f"mean rho = {m:.2f} (+{upper:.2f} / -{lower:.2f}) over 3 runs;")
    assert "left out 5 of 8: 1 running, 1 interrupted, 1 diverged, 1 failed, 1 without a finite rho" in line
    assert "only finished runs" in line
    assert aggregate_line(rows[:3]) == f"mean rho = {m:.2f} (+{upper:.2f} / -{lower:.2f}) over 3 runs"
    assert aggregate_line(rows[3:5]).startswith("mean rho: no run finished")


def test_an_interrupted_run_is_shown_as_such_and_left_out(tmp_path):
    """A real run stopped by Ctrl-C after 2 of 30 epochs beside a finished one."""

    class CtrlC(Callback):
        def on_epoch_end(self, run, **kwargs):
            if run.epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(get_preset("mlp-breast-cancer"), tmp_path / "cut", callbacks=[CtrlC()])
    make_run(tmp_path / "done", seed=1)
    text = render(load_runs([tmp_path]))
    cut = next(r for r in table(text) if r["seed"] == "0")
    assert cut["status"] == "interrupted" and cut["stop epoch"] == "2"
    done = load_runs([tmp_path / "done"])[0]
    assert f"mean rho = {done['rho']:.2f} (+0.00 / -0.00) over 1 run; left out 1 of 2: 1 interrupted" in text


@pytest.mark.parametrize("broken", ["summary.json", "config.toml", "epochs.parquet", "selected.json"])
def test_a_corrupt_run_among_many_is_named_and_skipped(tmp_path, capsys, broken):
    make_run(tmp_path / "a", seed=0)
    make_run(tmp_path / "b", seed=1)
    if broken == "selected.json":
        sweep = make_sweep(tmp_path / "bad", {0: (200.0, "finished"), 1: (150.0, "finished")})
        sweep.selected_path.write_text('{"trial": "sgd", ')
    else:
        make_run(tmp_path / "bad", seed=2)
        (tmp_path / "bad" / broken).write_bytes(b'{"status": "fini\x00 [[[')

    assert main(["report", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert f"skipped {tmp_path / 'bad'}" in err and broken in err
    assert [r["seed"] for r in table(out)] == ["0", "1"]
    assert "over 2 runs; left out 1 of 3: 1 unreadable" in out

    assert main(["report", str(tmp_path), "--strict"]) == 2
    assert f"cannot read {tmp_path / 'bad'}" in capsys.readouterr().err
    with pytest.raises(UnreadableRunError, match="bad"):
        load_runs([tmp_path], strict=True)
    with pytest.warns(UnreadableRunWarning, match="bad"):
        assert len(load_runs([tmp_path])) == 2


def test_a_sweep_rows_interval_and_the_footer_agree(tmp_path):
    taus = {0: 200.0, 1: 120.0, 2: 300.0, 3: 90.0}
    make_sweep(tmp_path / "sweep", {s: (tau, "finished") for s, tau in taus.items()})
    rhos = [read_run(tmp_path / "sweep" / "seeds" / f"seed{s}")["rho"] for s in taus]
    text = render(load_runs([tmp_path / "sweep"]))
    (row,) = table(text)
    low, high = bootstrap_interval(rhos)
    m, upper, lower = aggregate(rhos)
    assert row["seed"] == "0-3" and row["seeds"] == "4" and row["status"] == "finished"
    assert row["rho"] == f"{m:.2f}" and row["rho 95% CI"] == f"[{low:.2f}, {high:.2f}]"
    assert f"mean rho = {m:.2f} (+{upper:.2f} / -{lower:.2f}) over 4 runs (4 of them seeds of a sweep" in text
    assert upper > 0 and lower > 0  # not "+0.00 / -0.00 over 1 run" beside an interval over 4 seeds


def test_a_sweep_with_an_unfinished_seed_says_so(tmp_path):
    make_sweep(tmp_path / "sweep", {0: (200.0, "finished"), 1: (120.0, "finished"), 2: (300.0, "interrupted")})
    rhos = [read_run(tmp_path / "sweep" / "seeds" / f"seed{s}")["rho"] for s in (0, 1)]
    text = render(load_runs([tmp_path / "sweep"]))
    (row,) = table(text)
    assert row["status"] == "interrupted" and row["seeds"] == "2" and row["seed"] == "0,1"
    assert row["rho"] == f"{np.mean(rhos):.2f}"
    assert "over 2 runs (2 of them seeds of a sweep, each counted); left out 1 of 3: 1 interrupted" in text


# == What it prints means what it says ===========================================================


def test_best_is_the_best_validation_score_not_early_stoppings_reference(tmp_path, capsys):
    """0.9561 at epoch 3 is early stopping's reference (it moves only by more than 0.01);
    the best validation score is 0.9649, at epoch 4."""
    run = make_run(tmp_path / "run", val=VAL_SCORES, reference=(0.9561, 3))
    row = read_run(run.path)
    assert (row["best_score"], row["best_epoch"]) == (0.9649, 4)
    assert table(render(load_runs([run.path])))[0]["best val score"] == "0.9649"
    _print_result(run.read_summary(), run.path)
    printed = capsys.readouterr().out
    assert re.search(r"best accuracy +0\.9649 \(epoch 4\)", printed)
    assert "0.9561" not in printed
    assert re.search(r"stop epoch +13 of 30 \(early stopping\)", printed)


def test_a_curve_that_never_settled_says_never(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    summary = run.read_summary().replace(stabilization_w=1.0, stabilization_p=0.25)
    _print_result(summary, run.path)
    printed = capsys.readouterr().out
    assert re.search(r"settled \(w / a\) +never / after 0\.25 of training", printed)
    assert "1.00" not in printed.split("settled")[1]


def test_early_stopping_is_announced_with_its_reason(tmp_path, capsys):
    """`regimes run` that early stopping ends: at which epoch, and why, with the reference named."""
    out = tmp_path / "run"
    argv = [
        "run",
        "mlp-breast-cancer",
        "--out",
        str(out),
        "--set",
        "max_epochs=8",
        "--set",
        "patience=2",
        "--set",
        "min_delta=0.5",
    ]
    assert main(argv) == 0  # no epoch can gain 0.5 in accuracy on the first: it stops at epoch 3
    printed = capsys.readouterr()
    epochs = RunDirectory(out).read_epochs()
    assert len(epochs) == 3
    first = epochs[0]["val_score"]
    scores = [e["val_score"] for e in epochs]
    best, best_epoch = max(scores), 1 + scores.index(max(scores))
    expected = (
        f"stopped early at epoch 3 of 8: for 2 epochs val accuracy did not beat {first:.4f} "
        f"(early stopping's reference, epoch 1) by more than 0.5"
    )
    assert expected in printed.err
    if best_epoch != 1:
        assert f"; best {best:.4f} at epoch {best_epoch}" in printed.err
    assert re.search(r"stop epoch +3 of 8 \(early stopping\)", printed.out)
    assert re.search(rf"best accuracy +{best:.4f} \(epoch {best_epoch}\)", printed.out)


def test_show_explains_patience_and_reads_back(tmp_path, capsys):
    assert main(["show", "mlp-breast-cancer"]) == 0
    text = capsys.readouterr().out
    (patience,) = [line for line in text.splitlines() if line.startswith("patience")]
    assert re.fullmatch(
        r"patience = 0 +# 0: a third of max_epochs, here 10: stop after 10 epochs .*min_delta.*", patience
    )
    for key in ("min_delta", "probe_fraction", "track_every", "sites", "nesterov"):
        assert "#" in next(line for line in text.splitlines() if line.startswith(key + " ")), key
    edited = get_preset("mlp-breast-cancer").replace(patience=4, sites=["blocks.*"])  # a multi-line array too
    (patience,) = [line for line in dump_toml(edited).splitlines() if line.startswith("patience")]
    assert patience.startswith("patience = 4") and "a third" not in patience and "stop after 4 epochs" in patience
    for name, config in [*((n, get_preset(n)) for n in list_presets()), ("edited", edited)]:
        path = tmp_path / f"{name}.toml"
        path.write_text(dump_toml(config))
        assert load_toml(path) == config, name


def test_sweep_lines_tell_the_best_epoch_from_the_stop_epoch(tmp_path, capsys):
    row = {
        "trial": "sgd-lr1e-2-wd1e-4",
        "status": "finished",
        "score_name": "accuracy",
        "best_score": 0.9561,
        "best_epoch": 3,
        "stop_epoch": 13,
        "rho": 1.13,
        "seconds": 4.3,
    }
    line = _trial_line(row, best=(0.9649, 4))
    assert "best accuracy 0.9649 at epoch 4 (early stopping's reference 0.9561), stopped at epoch 13" in line
    assert "4.3 s training (start-up not counted)" in line
    assert "  epoch 13" not in _trial_line(row)  # the old line: "epoch 13", which one?

    grid = tmp_path / "grid.toml"
    grid.write_text('optimizer = ["sgd", "adam"]\nlr = [1e-2]\nweight_decay = [1e-4]\n')
    argv = [
        "sweep",
        "mlp-breast-cancer",
        "--grid",
        str(grid),
        "--set",
        "max_epochs=2",
        "--seeds",
        "2",
        "--workers",
        "1",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "sweep"),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("sgd-lr1e-2-wd1e-4", "adam-lr1e-2-wd1e-4"):
        epochs = RunDirectory(tmp_path / "sweep" / "trials" / name).read_epochs()
        scores = [e["val_score"] for e in epochs]
        (trial,) = [line for line in printed.splitlines() if line.strip().startswith(name)]
        assert f"best accuracy {max(scores):.4f} at epoch {1 + scores.index(max(scores))}" in trial
        assert f"stopped at epoch {len(epochs)}" in trial and "start-up not counted" in trial
    assert re.search(r"^selected  .*best accuracy .* at epoch \d, stopped at epoch \d", printed, re.M)
    assert re.search(r"^time      grid \d+\.\d s, seeds \d+\.\d s \(wall-clock, start-up included", printed, re.M)
    assert re.search(r"^seeds     2 finished \(seeds 0,1\)", printed, re.M)


# -- figures --------------------------------------------------------------------------------------


def test_grid_panels_say_which_run_they_are(tmp_path):
    from regimes.plots import plot_grid

    for seed in range(3):
        make_run(tmp_path / f"sgd{seed}", seed=seed, tau_w=150.0 + 50 * seed)
    make_run(tmp_path / "adam", seed=0, optimizer="adam")
    fig, axes = plot_grid(load_runs([tmp_path]), ncols=2)
    titles = [ax.get_title() for ax in axes]
    assert len(set(titles)) == 4
    assert [t.splitlines()[1] for t in titles] == ["seed 0, Adam", "seed 0, SGD", "seed 1, SGD", "seed 2, SGD"]
    same = plot_grid(load_runs([tmp_path / "sgd0", tmp_path / "sgd1"]))[1]
    assert [ax.get_title().splitlines()[1] for ax in same] == ["seed 0", "seed 1"]  # only the seed differs


@pytest.mark.parametrize("panels", [1, 2, 3])
def test_the_legend_is_not_clipped(tmp_path, panels):
    from matplotlib.figure import Figure

    from regimes.plots import plot_grid, plot_run

    def inside(legend, figure):
        figure.draw_without_rendering()  # lays the figure out as saving it does
        box, frame = legend.get_window_extent(), figure.bbox
        return frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1 and frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1

    for seed in range(panels):
        make_run(tmp_path / f"seed{seed}", seed=seed)
    fig, _ = plot_grid(load_runs([tmp_path]), tmp_path / "grid.png")
    (legend,) = fig.legends
    assert inside(legend, fig) and len(legend.get_texts()) == 5
    single = Figure(figsize=(5.0, 4.4), layout="constrained")  # as save_run_figure draws a run's own figure
    _, ax = plot_run(tmp_path / "seed0", ax=single.add_subplot())
    assert inside(ax.get_legend(), single)


def test_the_best_epoch_line_is_in_the_legend_at_the_best_epoch(tmp_path):
    from regimes.plots import plot_grid

    make_run(tmp_path / "a", val=VAL_SCORES, reference=(0.9561, 3))
    make_run(tmp_path / "b", seed=1, val=VAL_SCORES[:5], reference=(0.9561, 3))
    fig, axes = plot_grid(load_runs([tmp_path]))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "epoch of the best val. score" in labels
    for ax in axes:
        (line,) = [line for line in ax.get_lines() if line.get_label() == "epoch of the best val. score"]
        assert list(line.get_xdata()) == [4, 4]  # the best score's epoch, not early stopping's reference


def test_a_sweeps_panel_gives_the_rho_of_the_curves_it_draws(tmp_path):
    from regimes.plots import plot_grid

    make_sweep(tmp_path / "sweep", {0: (200.0, "finished"), 1: (120.0, "finished"), 2: (300.0, "finished")})
    (sweep_row,) = load_runs([tmp_path / "sweep"])
    own = read_run(tmp_path / "sweep" / "trials" / "sgd")["rho"]
    assert not math.isclose(own, sweep_row["rho"], abs_tol=0.005)  # the seeds' mean is another number
    _, (ax,) = plot_grid([sweep_row])
    head, which, seeds = ax.get_title().splitlines()
    assert head.endswith(f"rho = {own:.2f}") and which.startswith("selected trial, seed 0")
    assert seeds.startswith(f"seeds 0-2: mean rho = {sweep_row['rho']:.2f}, 95% CI [")


def test_summary_of_a_run_keeps_its_fields(tmp_path):
    """Reading the best score from the epoch rows leaves the summary on disk as it was."""
    run = make_run(tmp_path / "run", val=VAL_SCORES, reference=(0.9561, 3))
    load_runs([run.path])
    assert run.read_summary()["best_score"] == 0.9561 and isinstance(run.read_summary(), RunSummary)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_runs([run.path])  # a readable run: no warning
