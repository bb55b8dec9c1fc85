"""Figures: one panel per run, as in the study's figure (SPEC section 4).

Each panel shows the train and validation score per epoch on the left axis and the
normalised weight-change and pattern-change curves (the curves the AUCs are taken of) on a
right axis in [0, 1]. Matplotlib is imported only when a figure is drawn.

```python
fig, ax = plot_run("runs/mlp-breast-cancer")          # a run directory or a load_runs() dict
fig, axes = plot_grid(load_runs(["runs/"]), "grid.pdf")
```
"""

from __future__ import annotations

import io
import math
import os
import sys
from pathlib import Path

import numpy as np

from regimes.analysis import normalized_curve, smoothing_window
from regimes.records import RunDirectory, atomic_write
from regimes.runs import read_run
from regimes.study import dataset_label, model_label

__all__ = ["plot_run", "plot_grid", "save_run_figure", "FIGURE_SUFFIXES"]

FIGURE_SUFFIXES = (".png", ".svg", ".pdf")

_COLORS = {"train": "tab:blue", "val": "tab:orange", "dw": "tab:green", "da": "tab:red"}
_PANEL_SIZE = (4.6, 3.2)  # inches per panel of a grid
_FIGURE_SIZE = (5.0, 4.2)  # a single panel with its legend below


def _pyplot():
    """pyplot, on the Agg backend when there is no display to show a window on."""
    import matplotlib

    headless = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if headless and "MPLBACKEND" not in os.environ and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _resolve(run) -> tuple[dict, list[dict], dict]:
    """A run's summary, epoch rows and step records (dw and da only).

    `run` is a run directory, or a dict from `regimes.runs.load_runs` (or any mapping with
    the summary's keys and the `path` of the run directory to read the records from).
    """
    if isinstance(run, (str, Path)):
        run = {"path": str(run)}
    info = dict(run)
    directory = RunDirectory(info["path"]) if info.get("path") else None
    if directory is None:
        return info, [], {}
    if "status" not in info:  # a bare path: read the summary
        info = {**read_run(directory.path), **info}
    epochs = directory.read_epochs()
    steps = directory.read_steps(columns=["iteration", "epoch", "dw", "da"])
    return info, epochs, steps


def _batches_per_epoch(info: dict, steps: dict) -> int:
    bpe = info.get("batches_per_epoch")
    if bpe:
        return int(bpe)
    epochs = np.asarray(steps.get("epoch", []))
    if epochs.size:  # no summary yet: the length of the first epoch
        return max(1, int(np.sum(epochs == epochs.min())))
    return 1


def plot_run(run, ax=None, legend: bool = True):
    """One panel: scores per epoch (left axis), normalised dw and da (right axis, [0, 1]).

    The smoothed curves have T - k + 1 points for T steps and window k; point j averages
    iterations j+1 .. j+k and is drawn at the end of its window, (j + k) / batches_per_epoch
    epochs. Returns `(fig, ax)` with `ax` the left (score) axis; the right one is `ax.right_ax`.
    """
    run, epochs, steps = _resolve(run)
    if ax is None:
        fig, ax = _pyplot().subplots(figsize=_FIGURE_SIZE if legend else _PANEL_SIZE, layout="constrained")
    else:
        fig = ax.figure
    right = ax.twinx()
    ax.right_ax = right  # so callers (and tests) can reach the curves' axis

    x = [row["epoch"] for row in epochs]
    for key, label in (("train", "train score"), ("val", "validation score")):
        y = [np.nan if row.get(f"{key}_score") is None else row[f"{key}_score"] for row in epochs]
        ax.plot(x, y, color=_COLORS[key], marker="o", markersize=2.5, linewidth=1.4, label=label)

    bpe = _batches_per_epoch(run, steps)
    last_epoch = max(x, default=0)
    for key, label in (("dw", "weight change (norm.)"), ("da", "pattern change (norm.)")):
        curve = np.asarray(steps.get(key, []), dtype=np.float64)
        if curve.size == 0:
            continue
        k = min(smoothing_window(bpe), curve.size)
        y = normalized_curve(curve, bpe)
        t = (np.arange(y.size) + k) / bpe
        right.plot(t, y, color=_COLORS[key], linewidth=1.1, alpha=0.9, label=label)
        last_epoch = max(last_epoch, float(t[-1]))

    best = run.get("best_epoch")
    if best:
        ax.axvline(best, color="0.5", linestyle=":", linewidth=1.0, label=f"best epoch ({best})")

    higher = run.get("higher_is_better") is not False  # unknown: treat as accuracy-like
    name = run.get("score_name") or ("score" if higher else "perplexity")
    ax.set_ylabel(f"{name} ({'higher' if higher else 'lower'} is better)")
    ax.set_xlabel("epoch")
    ax.set_xlim(0, max(last_epoch, 1))
    right.set_ylim(-0.02, 1.02)
    right.set_ylabel("normalised change")
    title = f"{model_label(run.get('model') or '?')} / {dataset_label(run.get('dataset') or '?')}"
    rho = run.get("rho")
    if isinstance(rho, (int, float)) and math.isfinite(rho):
        title += f"   (rho = {rho:.2f})"
    ax.set_title(title, fontsize="medium")
    if legend:
        handles, labels = _legend_entries(ax)
        # Below the panel: inside it would cover curves on one axis or the other.
        ax.legend(handles, labels, fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.17),
                  ncols=2, frameon=False)  # fmt: skip
    if not epochs and len(steps.get("dw", [])) == 0:
        ax.text(0.5, 0.5, "no records yet", transform=ax.transAxes, ha="center", va="center")
    return fig, ax


def _legend_entries(*axes):
    """Handles and labels of the panels' curves, each label once."""
    entries = {}
    for ax in axes:
        for a in (ax, ax.right_ax):
            for handle, label in zip(*a.get_legend_handles_labels()):
                entries.setdefault(label, handle)
    return list(entries.values()), list(entries)


def plot_grid(runs, path=None, ncols: int = 3):
    """One panel per run (`plot_run`), with one legend for all; saved to `path` if given.

    The format follows the suffix of `path` (.png, .svg or .pdf). Returns `(fig, axes)`, the
    panels' left axes in the order of `runs`.
    """
    runs = list(runs)
    if not runs:
        raise ValueError("plot_grid needs at least one run")
    if path is not None and Path(path).suffix.lower() not in FIGURE_SUFFIXES:
        raise ValueError(f"cannot tell the figure format of {path}; end it in {', '.join(FIGURE_SUFFIXES)}")
    ncols = max(1, min(ncols, len(runs)))
    nrows = math.ceil(len(runs) / ncols)
    fig, grid = _pyplot().subplots(
        nrows,
        ncols,
        figsize=(_PANEL_SIZE[0] * ncols, _PANEL_SIZE[1] * nrows + 0.4),
        layout="constrained",
        squeeze=False,
    )
    grid = grid.ravel()
    for ax in grid[len(runs) :]:
        fig.delaxes(ax)
    axes = grid[: len(runs)]
    for run, ax in zip(runs, axes):
        plot_run(run, ax=ax, legend=False)
    handles, labels = _legend_entries(*axes)
    keep = [i for i, label in enumerate(labels) if not label.startswith("best epoch")]
    fig.legend([handles[i] for i in keep], [labels[i] for i in keep], loc="outside lower center",
               ncols=len(keep), fontsize="small", frameon=False)  # fmt: skip
    if path is not None:
        _save(fig, path)
    return fig, axes


def save_run_figure(run_dir) -> Path:
    """Draw the run's panel into its figure file (`RunDirectory.figure_path`), atomically
    and without touching pyplot's state."""
    from matplotlib.figure import Figure

    directory = RunDirectory(run_dir)
    fig = Figure(figsize=_FIGURE_SIZE, layout="constrained")
    plot_run(directory.path, ax=fig.add_subplot())
    _save(fig, directory.figure_path)
    return directory.figure_path


def _save(fig, path) -> None:
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=150)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())
