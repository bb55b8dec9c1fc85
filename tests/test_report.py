"""The report over many runs (Table II, the aggregate line) and the figures, on synthetic runs."""

import csv
import io
import json
import math
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # before matplotlib is first imported

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")

from regimes.analysis import smoothing_window, summarize
from regimes.plots import plot_grid, plot_run, save_run_figure
from regimes.records import RunDirectory
from regimes.report import aggregate_line, format_table, load_runs, render, short_scientific, study_table

PNG = b"\x89PNG\r\n\x1a\n"


def make_run(
    path,
    model="mlp",
    dataset="breast-cancer",
    *,
    optimizer="sgd",
    lr=1e-2,
    wd=1e-4,
    epochs=6,
    batches_per_epoch=40,
    tau_w=200.0,
    tau_a=50.0,
    higher_is_better=True,
    status="finished",
    config_extra=None,
):
    """A small but consistent run directory written through the records API.

    dw = exp(-t / tau_w) and da = exp(-t / tau_a): the pattern settles first, so rho > 1.
    """
    run = RunDirectory(path)
    config = {
        "model": model,
        "dataset": dataset,
        "optimizer": optimizer,
        "lr": lr,
        "weight_decay": wd,
        "epochs": epochs,
        **(config_extra or {}),
    }
    run.create(config)
    t = np.arange(1, epochs * batches_per_epoch + 1)
    dw, da = np.exp(-t / tau_w), np.exp(-t / tau_a)
    rows = []
    for e in range(1, epochs + 1):
        part = slice((e - 1) * batches_per_epoch, e * batches_per_epoch)
        run.append_steps(
            {
                "iteration": t[part],
                "epoch": np.full(batches_per_epoch, e),
                "dw": dw[part],
                "da": da[part],
                "da:relu1": da[part],
                "da:relu2": da[part],
            }
        )
        score = 1 - 0.5 * math.exp(-e / 2) if higher_is_better else 20 + 100 * math.exp(-e / 2)
        rows.append(
            {
                "epoch": e,
                "train_loss": 1 / e,
                "train_score": score,
                "val_loss": 1.2 / e,
                "val_score": score - 0.02,
                "seconds": 0.1,
            }
        )
    run.write_epochs(rows)
    best = max(rows, key=lambda r: r["val_score"] if higher_is_better else -r["val_score"])
    numbers = summarize(dw, da, batches_per_epoch)
    run.write_summary(
        {
            "model": model,
            "dataset": dataset,
            "optimizer": optimizer,
            "weight_decay": wd,
            "lr": lr,
            "best_score": best["val_score"],
            "best_epoch": best["epoch"],
            "stop_epoch": epochs,
            "score_name": "accuracy" if higher_is_better else "perplexity",
            "higher_is_better": higher_is_better,
            "batches_per_epoch": batches_per_epoch,
            "status": status,
            **numbers,
        }
    )
    return run


@pytest.fixture(autouse=True)
def close_figures():
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


# -- load_runs ---------------------------------------------------------------------------------


def test_load_runs_nested_folders_in_study_order(tmp_path):
    make_run(tmp_path / "a" / "z-first-on-disk", "lenet5", "mnist")
    make_run(tmp_path / "b" / "deeper" / "run", "mlp", "adult")
    make_run(tmp_path / "mlp-digits", "mlp", "digits")  # not a study row: after the study's MLP rows
    make_run(tmp_path / "mlp-har", "mlp", "har")
    (tmp_path / "empty").mkdir()

    runs = load_runs([tmp_path])
    assert [(r["model"], r["dataset"]) for r in runs] == [
        ("mlp", "adult"),
        ("mlp", "har"),
        ("mlp", "digits"),
        ("lenet5", "mnist"),
    ]
    assert runs[0]["path"] == str(tmp_path / "b" / "deeper" / "run")
    assert runs[0]["config"]["optimizer"] == "sgd"

    # A run directory itself, and the same run reached twice, give one run.
    one = load_runs([tmp_path / "mlp-har", str(tmp_path / "mlp-har")])
    assert len(one) == 1 and one[0]["dataset"] == "har"
    assert len(load_runs([tmp_path / "a", tmp_path / "mlp-har"])) == 2


def test_load_runs_says_when_a_path_holds_no_run(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no run"):
        load_runs([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_runs([tmp_path / "missing"])


# -- the table ---------------------------------------------------------------------------------


@pytest.fixture
def three_runs(tmp_path):
    make_run(tmp_path / "r1", "mlp", "breast-cancer", lr=1e-2, wd=1e-4)
    make_run(
        tmp_path / "r2",
        "resnet34",
        "tinyimagenet",
        lr=1e-3,
        wd=5e-3,
        epochs=4,
        config_extra={"momentum": 0.9, "nesterov": True},
    )
    make_run(
        tmp_path / "r3",
        "gpt2",
        "wikitext",
        optimizer="adamw",
        lr=3e-4,
        wd=1e-2,
        epochs=3,
        tau_w=60.0,
        higher_is_better=False,
    )
    return load_runs([tmp_path])


def test_study_table_rows(three_runs):
    rows = study_table(three_runs)
    assert [r["model"] for r in rows] == ["MLP", "ResNet34", "GPT-2"]
    assert rows[0]["dataset"] == "Breast Cancer" and rows[1]["dataset"] == "TinyImageNet"
    assert [r["optimizer"] for r in rows] == ["SGD", "SGD, Nesterov 0.9", "AdamW"]
    # Issue 18 added two keys after these: the run's directory name and its validity flags.
    assert list(rows[0])[:14] == [
        "model",
        "dataset",
        "optimizer",
        "wd",
        "lr",
        "seed",
        "status",
        "best_score",
        "stop_epoch",
        "auc_w",
        "auc_p",
        "rho",
        "rho_global",
        "rho_layerwise",
    ]
    assert list(rows[0])[14:] == ["run", "flags"] and [r["run"] for r in rows] == ["r1", "r2", "r3"]
    for row, run in zip(rows, three_runs):
        assert row["lr"] == run["lr"] and row["wd"] == run["weight_decay"]
        assert row["best_score"] == run["best_score"] and row["stop_epoch"] == run["stop_epoch"]
        assert row["rho"] == pytest.approx(run["auc_w"] / run["auc_p"])
        assert row["rho"] > 1  # dw decays slower than da in every synthetic run


def test_format_markdown(three_runs):
    rows = study_table(three_runs)
    text = format_table(rows)
    lines = text.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "model",
        "dataset",
        "optimizer",
        "WD",
        "LR",
        "seed",
        "status",
        "best val score",
        "stop epoch",
        "AUC_W",
        "AUC_P",
        "rho",
        "rho global",
        "rho layerwise",
    ]
    assert set(lines[1]) <= set("|-:") and lines[1].endswith(":|")  # numbers right-aligned
    assert len(lines) == 2 + len(rows)
    first = [c.strip() for c in lines[2].strip("|").split("|")]
    assert first[3:5] == ["1e-4", "1e-2"]
    assert first[7] == f"{rows[0]['best_score']:.4f}" and first[8] == "6"
    assert first[9] == f"{rows[0]['auc_w']:.3f}" and first[11] == f"{rows[0]['rho']:.2f}"
    gpt2 = [c.strip() for c in lines[4].strip("|").split("|")]
    assert gpt2[3:5] == ["1e-2", "3e-4"]
    assert len(gpt2[7].replace(".", "")) == 4  # a perplexity to four significant digits


def test_format_csv_parses_back(three_runs):
    rows = study_table(three_runs)
    rows[2]["rho"] = math.nan  # a missing number is an empty cell
    parsed = list(csv.DictReader(io.StringIO(format_table(rows, "csv"))))
    assert len(parsed) == 3
    assert list(parsed[0]) == [
        "model",
        "dataset",
        "optimizer",
        "wd",
        "lr",
        "seed",
        "status",
        "best_score",
        "stop_epoch",
        "auc_w",
        "auc_p",
        "rho",
        "rho_global",
        "rho_layerwise",
    ]
    assert parsed[1]["optimizer"] == "SGD, Nesterov 0.9"  # quoted, the comma survives
    assert float(parsed[1]["wd"]) == 5e-3 and float(parsed[1]["lr"]) == 1e-3
    assert float(parsed[0]["rho"]) == pytest.approx(rows[0]["rho"], abs=0.005)
    assert parsed[2]["rho"] == ""


def test_format_latex(three_runs):
    rows = study_table(three_runs)
    rows[0]["dataset"] = "Breast & Cancer_1"
    text = format_table(rows, "latex")
    assert text.startswith("\\begin{tabular}{lllrrrlrrrrrrr}")
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\end{tabular}"):
        assert rule in text
    body = text.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
    assert len(body) == 3 and all(line.endswith("\\\\") and line.count(" & ") == 13 for line in body)
    assert "Breast \\& Cancer\\_1" in text and "$\\rho$" in text


def test_format_rejects_unknown_format():
    with pytest.raises(ValueError, match="markdown"):
        format_table([], "html")


@pytest.mark.parametrize(
    "value, text",
    [(1e-4, "1e-4"), (2.5e-4, "2.5e-4"), (0.05, "5e-2"), (3e-2, "3e-2"), (0.0, "0"), (1.0, "1")],
)
def test_short_scientific(value, text):
    assert short_scientific(value) == text


def test_aggregate_line_by_hand():
    rows = [{"rho": r} for r in (1.0, 2.0, 3.0, 6.0)] + [{"rho": math.nan}, {"rho": None}]
    # mean 3; above: (6 - 3)^2 -> 3.00; below: sqrt(((1 - 3)^2 + (2 - 3)^2) / 2) = sqrt(2.5) = 1.58
    line = aggregate_line(rows, "markdown")
    assert line.startswith("mean rho = 3.00 (+3.00 / -1.58) over 4 runs")
    assert "2 without a finite rho" in line
    assert "$\\rho$ = 3.00" in aggregate_line(rows, "latex")
    assert "no run" in aggregate_line([{"rho": None}], "markdown")


def test_render(three_runs):
    text = render(three_runs)
    assert text.splitlines()[0].startswith("| model") and "mean rho = " in text
    assert "mean rho" not in render(three_runs, "csv")


# -- figures -----------------------------------------------------------------------------------


def test_plot_run_curves_and_axes(tmp_path):
    bpe, epochs = 40, 6
    run = make_run(tmp_path / "run", batches_per_epoch=bpe, epochs=epochs)
    fig, ax = plot_run(run.path)
    assert len(fig.axes) == 2  # the score axis and its twin
    assert ax.get_title().startswith("MLP / Breast Cancer")
    assert "accuracy" in ax.get_ylabel() and ax.get_xlabel() == "epoch"

    train, val = ax.get_lines()[:2]
    assert list(train.get_xdata()) == list(range(1, epochs + 1))
    dw, da = ax.right_ax.get_lines()
    k, steps = smoothing_window(bpe), epochs * bpe
    x = dw.get_xdata()
    assert len(x) == steps - k + 1
    assert x[0] == pytest.approx(k / bpe) and x[-1] == pytest.approx(steps / bpe)  # end of each window
    for line in (dw, da):
        y = np.asarray(line.get_ydata())
        assert y.min() >= 0 and y.max() <= 1 and y[0] == 1 and y[-1] == 0  # decaying, normalised
    assert ax.right_ax.get_ylim()[0] < 0 < 1 < ax.right_ax.get_ylim()[1]
    assert ax.get_legend() is not None


def test_plot_run_perplexity_and_given_axis(tmp_path):
    import matplotlib.pyplot as plt

    run = make_run(tmp_path / "gpt", "gpt2", "wikitext", higher_is_better=False, epochs=3)
    fig, (left, other) = plt.subplots(1, 2)
    got_fig, got_ax = plot_run(load_runs([run.path])[0], ax=left)
    assert got_fig is fig and got_ax is left
    assert "perplexity" in left.get_ylabel() and "lower is better" in left.get_ylabel()
    assert len(fig.axes) == 3


@pytest.mark.parametrize("suffix, magic", [(".png", PNG), (".svg", b"<svg"), (".pdf", b"%PDF")])
def test_plot_grid_files(tmp_path, suffix, magic):
    for i, dataset in enumerate(["adult", "har", "mnist"]):
        make_run(tmp_path / "runs" / dataset, "mlp", dataset, tau_w=100.0 + 50 * i)
    runs = load_runs([tmp_path / "runs"])
    path = tmp_path / "out" / f"grid{suffix}"
    fig, axes = plot_grid(runs, path, ncols=2)
    assert len(axes) == 3 and len(fig.axes) == 6  # 3 panels x (score axis + twin), no empty panel
    assert [a.get_title().split("   ")[0] for a in axes] == ["MLP / Adult", "MLP / HAR", "MLP / MNIST"]
    head = path.read_bytes()[:400]
    assert head.startswith(magic) if suffix != ".svg" else magic in head
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    assert len(fig.legends) == 1


def test_plot_grid_rejects_unknown_suffix_and_no_runs(tmp_path):
    run = make_run(tmp_path / "run")
    with pytest.raises(ValueError, match=".png"):
        plot_grid([run.path], tmp_path / "grid.jpeg")
    with pytest.raises(ValueError, match="at least one"):
        plot_grid([])


def test_save_run_figure(tmp_path):
    run = make_run(tmp_path / "run")
    path = save_run_figure(run.path)
    assert path == run.figure_path and path.read_bytes()[:8] == PNG
    # A run that has only just started (config only) still gets a figure.
    fresh = RunDirectory(tmp_path / "fresh")
    fresh.create({"model": "mlp", "dataset": "digits"})
    assert save_run_figure(fresh.path).read_bytes()[:8] == PNG


def test_report_intervals_give_every_mean_of_seeds_its_bootstrap_interval(tmp_path, capsys, monkeypatch):
    """`regimes report --intervals` on a `regimes run --seeds` folder: each mean over the seeds
    carries the bootstrap interval of the seeds' values (the analysis function, by hand here);
    CSV gets `<column>_low` / `<column>_high` columns."""
    import csv
    import io

    from regimes.analysis import bootstrap_interval
    from regimes.cli import main

    monkeypatch.chdir(tmp_path)
    base = ["run", "mlp-breast-cancer", "--seeds", "3", "--set", "max_epochs=2", "--quiet", "--out", "three"]
    assert main(base) == 0
    seeds = [json.loads(p.read_text()) for p in sorted((tmp_path / "three" / "seeds").glob("*/summary.json"))]
    assert len(seeds) == 3
    capsys.readouterr()
    assert main(["report", "--intervals", "three"]) == 0
    table = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in table[0].split("|")]
    row = [c.strip() for c in table[2].split("|")]
    for key, column, digits in [("auc_w", "AUC_W", 3), ("rho_global", "rho global", 2), ("dead", "dead", 3)]:
        values = [s[key] for s in seeds]
        low, high = bootstrap_interval(values, 0.95, 10_000)
        expected = f"{sum(values) / 3:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
        assert row[header.index(column)] == expected, column
    assert main(["report", "--intervals", "--format", "csv", "three"]) == 0
    (line,) = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    low, high = bootstrap_interval([s["auc_p"] for s in seeds], 0.95, 10_000)
    assert (line["auc_p_low"], line["auc_p_high"]) == (f"{low:.3f}", f"{high:.3f}")
    assert main(["report", "three"]) == 0  # without the option: means only
    assert "[" not in capsys.readouterr().out.splitlines()[2].split("|")[10]
