"""Figures: one panel per run, as in the study's figure (docs/runs.md).

Each panel shows the train and validation score per epoch on the left axis and the
normalised weight-change and pattern-change curves (the curves the AUCs are taken of) on a
right axis in [0, 1], with a dotted line at the epoch of the best validation score. Its
title says which run it is: model and data set, the seed, and in a grid what else differs
between the runs shown (optimizer, lr, ...); the rho it gives is the rho of the curves it
draws (for a sweep with seeds, the selected trial's, with the seeds' mean beside it).
Matplotlib is imported only when a figure is drawn.

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
from regimes.errors import UsageError
from regimes.records import RunDirectory, Status, atomic_write, validity
from regimes.runs import as_float, config_value, optimizer_text, read_run
from regimes.study import dataset_label, model_label

__all__ = ["plot_run", "plot_grid", "plot_geometry", "save_run_figure", "FIGURE_SUFFIXES"]

FIGURE_SUFFIXES = (".png", ".svg", ".pdf")

_COLORS = {"train": "tab:blue", "val": "tab:orange", "dw": "tab:green", "da": "tab:red"}
_PANEL_SIZE = (4.6, 3.4)  # inches per panel of a grid
_FIGURE_SIZE = (5.0, 4.4)  # a single panel with its legend below
_GEOMETRY_FIGURE_SIZE = (11.0, 8.0)  # the run's panel above its three geometry panels
_LEGEND_ENTRY_WIDTH = 2.0  # inches a legend entry needs at fontsize "small", handle included
_BEST_EPOCH = "epoch of the best val. score"


def _pyplot():
    """pyplot, on the Agg backend when there is no display to show a window on."""
    import matplotlib

    headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if headless and "MPLBACKEND" not in os.environ and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _own_row(run) -> dict:
    """The drawn run's own row (`read_run`), without its step records."""
    path = run if isinstance(run, (str, Path)) else run.get("path")
    return read_run(path) if path else dict(run)


def _resolve(run, batches_per_epoch: int | None = None) -> tuple[dict, dict, list[dict], dict]:
    """A row, the drawn run's own row, its epoch rows and step records (dw and da only).

    `run` is a run directory (a path, or a `regimes.Run`), a `regimes.Tracker` (its curves, no scores;
    `batches_per_epoch` sets the smoothing window), or a dict from `regimes.runs.load_runs`
    (or any mapping with the summary's keys and the `path` of the run directory to read the
    records from). The drawn run's own row (`read_run`) gives the numbers of the curves drawn:
    for a sweep with seeds, the row's rho is the seeds' mean while the curves are the selected
    trial's.
    """
    from regimes.tracker import Tracker

    if isinstance(run, Tracker):
        if batches_per_epoch is None:
            raise UsageError(
                "plot_run(tracker) needs batches_per_epoch= (optimizer steps per epoch): it sets the window"
            )
        steps = {"iteration": run.iterations, "dw": run.delta_w, "da": run.delta_a}
        info = {"batches_per_epoch": batches_per_epoch}
        return info, info, [], steps
    if isinstance(run, (str, os.PathLike)):  # a folder, or a regimes.Run (its folder)
        run = {"path": os.fspath(run)}
    info = dict(run)
    directory = RunDirectory(info["path"]) if info.get("path") else None
    if directory is None:
        return info, info, [], {}
    own = read_run(directory.path)
    if "status" not in info:  # a bare path: the run's own row
        info = {**own, **info}
    epochs = directory.read_epochs()
    steps = directory.read_steps(columns=["iteration", "epoch", "dw", "da"])
    return info, own, epochs, steps


def _measurements_per_epoch(info: dict, steps: dict) -> int:
    """The smoothing's epoch in measurements: optimizer steps per epoch over the steps between
    measurements (as the summary's window); with no summary yet, the first epoch's length."""
    if info.get("batches_per_epoch"):
        iterations = np.asarray(steps.get("iteration", []))
        every = int(np.diff(iterations).min()) if iterations.size > 1 else 1
        return max(1, int(info["batches_per_epoch"]) // max(every, 1))
    epochs = np.asarray(steps.get("epoch", []))
    if epochs.size:
        return max(1, int(np.sum(epochs == epochs.min())))
    return 1


def plot_run(run, ax=None, legend: bool = True, label: str | None = None, batches_per_epoch: int | None = None):
    """One panel: scores per epoch (left axis), normalised dw and da (right axis, [0, 1]).

    The smoothed curves have T - k + 1 points for T steps and window k; point j averages
    iterations j+1 .. j+k and is drawn at the end of its window, (j + k) / batches_per_epoch
    epochs.

    Args:
        run: a run directory (path), or one run as `regimes.runs.load_runs` returns it.
        ax: the axis to draw into (default: a new figure).
        legend: draw the legend below the panel.
        label: the title's second line, which says which run this is (default: its seed,
            optimizer, lr and weight decay).

    Returns:
        `(fig, ax)` with `ax` the left (score) axis; the right one is `ax.right_ax`.
    """
    info, own, epochs, steps = _resolve(run, batches_per_epoch)
    if ax is None:
        fig, ax = _pyplot().subplots(figsize=_FIGURE_SIZE if legend else _PANEL_SIZE, layout="constrained")
    else:
        fig = ax.figure
    right = ax.twinx()
    ax.right_ax = right  # so callers (and tests) can reach the curves' axis

    x = [row["epoch"] for row in epochs]
    for key, name in (("train", "train score"), ("val", "validation score")):
        y = [np.nan if row.get(f"{key}_score") is None else row[f"{key}_score"] for row in epochs]
        ax.plot(x, y, color=_COLORS[key], marker="o", markersize=2.5, linewidth=1.4, label=name)

    bpe = _measurements_per_epoch(own, steps)  # the curves' points per epoch
    last_epoch = max(x, default=0)
    for key, name in (("dw", "weight change (norm.)"), ("da", "pattern change (norm.)")):
        curve = np.asarray(steps.get(key, []), dtype=np.float64)
        if curve.size == 0:
            continue
        k = min(smoothing_window(bpe), curve.size)
        y = normalized_curve(curve, bpe)
        t = (np.arange(y.size) + k) / bpe
        right.plot(t, y, color=_COLORS[key], linewidth=1.1, alpha=0.9, label=name)
        last_epoch = max(last_epoch, float(t[-1]))

    ax.set_xlim(0, max(last_epoch, 1))
    best = own.get("best_epoch") if epochs else info.get("best_epoch")
    if best:
        ax.axvline(best, color="0.5", linestyle=":", linewidth=1.0, label=_BEST_EPOCH)
        left = best > 0.8 * ax.get_xlim()[1]  # the number on the side with room for it
        ax.annotate(
            str(best),
            xy=(best, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(-2 if left else 2, -2),
            textcoords="offset points",
            ha="right" if left else "left",
            va="top",
            fontsize="x-small",
            color="0.35",
        )

    higher = own.get("higher_is_better", info.get("higher_is_better")) is not False  # unknown: accuracy-like
    name = own.get("score_name") or info.get("score_name") or ("score" if higher else "perplexity")
    ax.set_ylabel(f"{name} ({'higher' if higher else 'lower'} is better)")
    ax.set_xlabel("epoch")
    right.set_ylim(-0.02, 1.02)
    right.set_ylabel("normalised change")
    ax.set_title(_title(info, own, label), fontsize="medium")
    if legend:
        handles, labels = _legend_entries(ax)
        # Below the panel: inside it would cover curves on one axis or the other.
        ax.legend(
            handles, labels, fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.17), ncols=2, frameon=False
        )
    if not epochs and len(steps.get("dw", [])) == 0:
        ax.text(0.5, 0.5, "no records yet", transform=ax.transAxes, ha="center", va="center")
    return fig, ax


def _title(info: dict, own: dict, label: str | None) -> str:
    """ "MLP / Breast Cancer   rho = 1.13" (the rho of the curves drawn), then which run it is;
    a run that did not finish says so, and a sweep with seeds gives the seeds' mean rho."""
    head = f"{model_label(info.get('model') or '?')} / {dataset_label(info.get('dataset') or '?')}"
    rho = as_float(own.get("rho"))
    if math.isfinite(rho):
        head += f"   rho = {rho:.2f}"
    which = label if label is not None else _describe(own, ("seed", "optimizer", "lr", "wd"))
    lines = [head, f"selected trial, {which}" if info.get("members") else which]
    status = Status(own.get("status") or Status.RUNNING)
    if status != Status.FINISHED:
        lines.append(f"{status} at epoch {own.get('stop_epoch') or 0} of {config_value(own, 'max_epochs') or '?'}")
    flags = validity(own)["flags"]
    if flags:  # a run that is not a result says so on its panel
        frozen = f" from iteration {own['freeze_iteration']}" if own.get("freeze_iteration") is not None else ""
        lines.append(", ".join(flags).upper().replace("FROZEN", f"FROZEN{frozen}"))
    mean = as_float(info.get("rho"))
    if info.get("members") and math.isfinite(mean):
        interval = ""
        if math.isfinite(as_float(info.get("rho_low"))):
            interval = f", 95% CI [{info['rho_low']:.2f}, {info['rho_high']:.2f}]"
        lines.append(f"seeds {info.get('seed')}: mean rho = {mean:.2f}{interval}")
    return "\n".join(lines)


def _facts(run: dict) -> dict[str, str]:
    """What tells runs apart, each as the title writes it."""
    from regimes.report import short_scientific

    def number(*names):
        value = as_float(config_value(run, *names))
        return short_scientific(value) if math.isfinite(value) else "?"

    seed = run.get("seed")
    return {
        "seed": f"seed {seed if seed is not None else '?'}",
        "optimizer": optimizer_text(run),
        "lr": f"lr {number('lr')}",
        "wd": f"wd {number('weight_decay', 'wd')}",
        "batch_size": f"batch {number('batch_size')}",
        "max_epochs": f"max {number('max_epochs')} epochs",
        "preset": str(config_value(run, "preset") or ""),
    }


def _describe(run: dict, keys) -> str:
    facts = _facts(run)
    return ", ".join(facts[k] for k in keys if facts[k])


def _labels(runs: list) -> list[str]:
    """Each run's title line: its seed, and what differs between the runs (as `_facts` says)."""
    rows = [_own_row(run) for run in runs]
    facts = [_facts(row) for row in rows]
    differ = [k for k in facts[0] if k != "seed" and len({f[k] for f in facts}) > 1]
    return [_describe(row, ["seed", *differ]) for row in rows]


def _legend_entries(*axes):
    """Handles and labels of the panels' curves, each label once."""
    entries = {}
    for ax in axes:
        for a in (ax, ax.right_ax):
            for handle, label in zip(*a.get_legend_handles_labels()):
                entries.setdefault(label, handle)
    if _BEST_EPOCH in entries:  # last: it explains a line, not a curve
        entries[_BEST_EPOCH] = entries.pop(_BEST_EPOCH)
    return list(entries.values()), list(entries)


def plot_grid(runs, path=None, ncols: int = 3):
    """One panel per run (`plot_run`), with one legend for all; saved to `path` if given.

    Each panel's title names its run: the seed, and whatever else differs between the runs
    shown (optimizer, lr, weight decay, batch size, max epochs, preset).

    Args:
        runs: runs as `regimes.runs.load_runs` returns them.
        path: where to save the figure; the format follows its suffix (.png, .svg or .pdf).
        ncols: panels per row.

    Returns:
        `(fig, axes)`, the panels' left axes in the order of `runs`.
    """
    runs = list(runs)
    if not runs:
        raise UsageError("plot_grid needs at least one run")
    if path is not None and Path(path).suffix.lower() not in FIGURE_SUFFIXES:
        raise UsageError(f"cannot tell the figure format of {path}; end it in {', '.join(FIGURE_SUFFIXES)}")
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
    for run, ax, label in zip(runs, axes, _labels(runs)):
        plot_run(run, ax=ax, legend=False, label=label)
    handles, labels = _legend_entries(*axes)
    columns = max(
        1, min(len(labels), int(_PANEL_SIZE[0] * ncols // _LEGEND_ENTRY_WIDTH))
    )  # rows of it rather than clipped
    fig.legend(handles, labels, loc="outside lower center", ncols=columns, fontsize="small", frameon=False)
    if path is not None:
        _save(fig, path)
    return fig, axes


def save_run_figure(run_dir) -> Path:
    """Draw the run's panel into its figure file (`RunDirectory.figure_path`), atomically
    and without touching pyplot's state."""
    from matplotlib.figure import Figure

    directory = RunDirectory(run_dir)
    geometry = directory.read_geometry()
    if not geometry:
        fig = Figure(figsize=_FIGURE_SIZE, layout="constrained")
        plot_run(directory.path, ax=fig.add_subplot())
    else:  # the run's panel above, its geometry's three below
        fig = Figure(figsize=_GEOMETRY_FIGURE_SIZE, layout="constrained")
        grid = fig.add_gridspec(2, 3, height_ratios=(1.25, 1))
        plot_run(directory.path, ax=fig.add_subplot(grid[0, :]))
        plot_geometry(geometry, [fig.add_subplot(grid[1, i]) for i in range(3)])
    _save(fig, directory.figure_path)
    return directory.figure_path


def plot_geometry(rows, axes=None):
    """The geometry table of a run (config `geometry`; a `RunDirectory.read_geometry()` list
    or a run directory) in three panels, per epoch: the probe's distance to its region's
    boundary (input space); the certified and empirical parameter radii beside the next
    epoch's largest step and farthest move (parameter space, L2); the fraction of probe
    samples the radius guarantees no flip in the next epoch, beside the fraction observed
    without one. Returns `(fig, axes)`."""
    if isinstance(rows, (str, Path)):
        rows = RunDirectory(rows).read_geometry()
    if axes is None:
        fig, axes = _pyplot().subplots(1, 3, figsize=(11, 3.4), layout="constrained")
    fig = axes[0].figure
    epoch = np.array([r["epoch"] for r in rows], dtype=np.float64)

    def column(name):
        return np.array([np.nan if r.get(name) is None else r[name] for r in rows], dtype=np.float64)

    distance, radius, flips = axes
    distance.fill_between(
        epoch,
        column("distance_p10"),
        column("distance_p90"),
        color="tab:purple",
        alpha=0.2,
        linewidth=0,
        label="10th-90th percentile",
    )
    distance.plot(epoch, column("distance_median"), color="tab:purple", marker="o", markersize=2.5, label="median")
    # Log scales where there is something positive to show (inputs on a max-pool tie sit at 0).
    positive = np.nanmax(np.append(column("distance_p90"), 0.0)) > 0
    distance.set(yscale="log" if positive else "linear", xlabel="epoch", ylabel="input-space distance")
    distance.set_title("probe's distance to its region's boundary", fontsize="small")

    radius.fill_between(
        epoch,
        column("certified_p10"),
        column("certified_p90"),
        color="tab:blue",
        alpha=0.2,
        linewidth=0,
        label="certified radius, 10th-90th pct.",
    )
    radius.plot(
        epoch,
        column("certified_median"),
        color="tab:blue",
        marker="o",
        markersize=2.5,
        label="certified radius, median",
    )
    radius.plot(epoch, column("empirical_median"), color="tab:blue", linestyle="--", label="empirical radius, median")
    radius.plot(epoch, column("step_max"), color="tab:red", marker="^", markersize=3, label="next epoch: largest step")
    radius.plot(epoch, column("displacement_max"), color="tab:red", linestyle=":", label="next epoch: farthest move")
    positive = np.nanmax(np.append(column("step_max"), column("certified_p90")), initial=0.0) > 0
    radius.set(yscale="log" if positive else "linear", xlabel="epoch", ylabel="parameter-space distance (L2)")
    radius.set_title("stability radius vs the next epoch's steps", fontsize="small")

    flips.plot(
        epoch,
        column("no_flip_guaranteed"),
        color="tab:blue",
        marker="o",
        markersize=2.5,
        label="guaranteed (radius > farthest move)",
    )
    flips.plot(epoch, column("no_flip_observed"), color="tab:red", marker="s", markersize=2.5, label="observed")
    flips.set(ylim=(-0.03, 1.03), xlabel="epoch", ylabel="fraction of probe samples")
    flips.set_title("no flip in the next epoch", fontsize="small")
    if np.nanmax(np.append(column("statistics_change"), 0.0)) > 0:
        flips.text(
            0.02,
            0.5,
            "BatchNorm statistics move too:\nthe guarantee covers the\nparameters' share only",
            transform=flips.transAxes,
            fontsize="x-small",
            color="0.35",
            va="center",
        )
    for ax in axes:
        ax.legend(fontsize="xx-small", frameon=False)
        ax.tick_params(labelsize="x-small")
    return fig, axes


def _save(fig, path) -> None:
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=150)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())
