"""`regimes explain` against numbers computed by hand from the run's own tables."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")
import pyarrow.parquet as pq

from regimes.cli import main
from regimes.explain import _learned, _plateau, explain, render, site_order

SITES = ["blocks.0.relu", "blocks.1.relu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "run"
    assert main(["run", "mlp-breast-cancer", "--set", "max_epochs=3", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(autouse=True)
def close_figures():
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def table(run_dir) -> dict:
    parts = sorted((run_dir / "steps").glob("*.parquet"))
    frames = [pq.read_table(p).to_pydict() for p in parts]
    return {k: np.concatenate([np.asarray(f[k], dtype=float) for f in frames]) for k in frames[0]}


def normalised(x, k):
    """The study's curve, written out: moving average, 0.5/99.5 percentiles, clip."""
    k = min(k, len(x))
    smooth = np.array([np.mean(x[i : i + k]) for i in range(len(x) - k + 1)])
    lo, hi = np.percentile(smooth, [0.5, 99.5])
    return np.zeros_like(smooth) if hi == lo else np.clip((smooth - lo) / (hi - lo), 0, 1)


def t_tau(x_hat, tau=0.1):
    i = len(x_hat)
    while i > 0 and x_hat[i - 1] < tau:
        i -= 1
    return i / len(x_hat)


def test_the_numbers_are_the_tables_numbers(run_dir):
    steps, numbers = table(run_dir), explain(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    k = round(0.3 * 15)  # breast cancer: 455 training samples, batch 32 -> 15 steps an epoch
    assert numbers["measurements_per_epoch"] == 15 and numbers["window"] == k == summary["window"]
    areas = [steps[f"da:{s}"].sum() for s in SITES]
    for row, area, site in zip(numbers["sites"], areas, SITES):
        assert row["column"] == f"da:{site}"
        assert row["share"] == pytest.approx(area / sum(areas), rel=1e-12)
        assert row["t_tau"] == t_tau(normalised(steps[f"da:{site}"], k))
        last = steps["epoch"] == 3
        assert row["dead"] == pytest.approx(steps[f"dead:{site}"][last].mean(), rel=1e-12)
    assert numbers["order"] == site_order([r["t_tau"] for r in numbers["sites"]])
    curves = {"global": "dw", "layerwise": "dw_layerwise", "sites": "da", "units": "da_units"}
    for key, reading in numbers["readings"].items():
        w, p = key.split("/")
        rho = np.mean(normalised(steps[curves[w]], k)) / np.mean(normalised(steps[curves[p]], k))
        assert reading["rho"] == pytest.approx(rho, rel=1e-9)
        assert reading["columns"] == [curves[w], curves[p]]
    # the summary carries the same four readings
    assert numbers["readings"]["layerwise/sites"]["rho"] == pytest.approx(summary["rho"], rel=1e-12)
    assert numbers["readings"]["global/units"]["rho"] == pytest.approx(summary["rho_global_units"], rel=1e-12)
    assert numbers["readings"]["layerwise/units"]["rho"] == pytest.approx(summary["rho_layerwise_units"], rel=1e-12)
    rhos = [r["rho"] for r in numbers["readings"].values()]
    assert numbers["disagreement"] == pytest.approx(max(rhos) / min(rhos))
    n, first, last = numbers["neurons"], steps["epoch"] == 1, steps["epoch"] == 3
    assert n["dead_units"] == pytest.approx([steps["dead_units"][first].mean(), steps["dead_units"][last].mean()])
    live = steps["da_units"] / (1 - steps["dead_units"] - steps["always_on_units"])
    assert n["fall_live"] == pytest.approx(1 - live[last].mean() / live[first].mean())
    learned = numbers["learned"]
    epochs = pq.read_table(run_dir / "epochs.parquet").to_pydict()
    assert learned["best"] == max(epochs["val_score"]) and learned["first"] == epochs["val_score"][0]
    text = render(numbers)
    for column in ("da:blocks.0.relu", "dead_units", "always_on_units", "da_units", "dw_layerwise"):
        assert column in text


def test_the_command_prints_and_draws(run_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["explain", str(run_dir), "--figure", str(tmp_path / "explain.png")]) == 0
    printed = capsys.readouterr().out
    assert "The four readings" in printed and "Which sites carry the pattern curve" in printed
    assert (tmp_path / "explain.png").stat().st_size > 0
    assert main(["explain", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_an_older_run_without_the_new_columns_is_read(run_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    for part in (old / "steps").glob("*.parquet"):
        t = pq.read_table(part)
        keep = [
            c
            for c in t.column_names
            if c == "da" or c.startswith("da:") or not c.startswith(("da", "on", "dead", "always"))
        ]
        pq.write_table(t.select(keep), part)
    numbers = explain(old)
    assert set(numbers["readings"]) == {"layerwise/sites", "global/sites"}
    assert numbers["neurons"] is None and numbers["sites"][0]["dead"] is None
    assert "not recorded" in render(numbers)


def test_a_plateau_is_found_and_rho_taken_from_its_end():
    t = np.arange(200.0)
    rise = np.where(t < 60, 0.01, 1.0)  # flat and low for 60 measurements, then the usual decay
    steps = {
        "iteration": t + 1,
        "dw_layerwise": rise * np.exp(-(t - 60).clip(0) / 80),
        "da": rise * np.exp(-(t - 60).clip(0) / 20),
    }
    plateau = _plateau(steps, "layerwise", 10, 0.1)
    # window 3: the smoothed value at 59 (raw 59, 60, 61) is the first over half the range
    assert plateau["on_plateau"] and plateau["end"] == 59 and plateau["end_iteration"] == 60
    assert plateau["rho_after"] > 1
    assert not _plateau({**steps, "dw_layerwise": np.exp(-t / 80), "da": np.exp(-t / 20)}, "layerwise", 10, 0.1)[
        "on_plateau"
    ]


def test_learned_against_the_majority_or_the_first_epoch():
    epochs = [{"epoch": 1, "val_score": 0.60}, {"epoch": 2, "val_score": 0.64}]
    assert _learned({"majority_accuracy": 0.62}, epochs)["learned"] is False
    assert _learned({"majority_accuracy": 0.55}, epochs)["learned"] is True
    assert _learned({}, epochs)["learned"] is None
    perplexity = [{"epoch": 1, "val_score": 100.0}, {"epoch": 2, "val_score": 85.0}]
    assert _learned({"higher_is_better": False}, perplexity)["learned"] is True
