"""Runs as rows: reading many run and sweep directories, and statistics over a configuration's seeds.

```python
runs = load_runs(["runs/", "sweeps/"])   # one dict per run or sweep, in the study's row order
stats = seed_statistics(rows)             # means over seeds, rho's interval and semi-deviations
best_validation(epochs)                   # (best validation score, its epoch) from the epoch rows
```

A row's `best_score` and `best_epoch` are the best validation score and its epoch, read from
the run's epoch rows. Early stopping's reference (which moves only by more than
`min_delta`) can be lower; `describe_stop` names it when it says why a run stopped.

It needs neither the experiment package (the training loop) nor matplotlib: the report, the
figures and the sweep runner all read from here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from regimes.analysis import aggregate, bootstrap_interval
from regimes.errors import DamagedInputError
from regimes.records import (
    NEURON_FIELDS,
    RunDirectory,
    RunSummary,
    Status,
    SweepDirectory,
    find_runs,
    is_sweep_directory,
    validity,
)
from regimes.study import optimizer_label, row_rank

__all__ = [
    "load_runs",
    "read_run",
    "read_sweep",
    "seed_statistics",
    "as_float",
    "best_validation",
    "describe_stop",
    "config_value",
    "optimizer_text",
    "seed_text",
    "UnreadableRunError",
    "UnreadableRunWarning",
]

# A sweep row whose runs did not all finish takes the first of these that one of them has.
_UNFINISHED = (Status.RUNNING, Status.INTERRUPTED, Status.FAILED, Status.DIVERGED)


class UnreadableRunError(DamagedInputError):
    """A run or sweep directory whose files cannot be read (a corrupt summary, config or table)."""


class UnreadableRunWarning(UserWarning):
    """A run or sweep directory left out of `load_runs` because its files cannot be read."""


def load_runs(paths, *, strict: bool = False, skipped: list | None = None) -> list[dict]:
    """Read the runs at `paths`: run or sweep directories, or folders searched recursively for them.

    Each run is its summary (a flat dict) plus `path` and `config`; a sweep is its selected
    run, with the seeds' statistics when it has seeds (see `seed_statistics`). Runs come in
    the study's row order (model, then data set; rows the study does not have go after its
    rows of the same model), ties in the order found; a run reached twice is read once.

    A directory whose files cannot be read (a corrupt summary, config or table) is
    left out and named: appended to `skipped` as `(path, reason)` when a list is given, else
    in an `UnreadableRunWarning`. With `strict`, it is an `UnreadableRunError` instead.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found = [run for path in paths for run in find_runs(path)]
    runs, seen = [], set()
    for path in found:
        if (resolved := path.resolve()) in seen:
            continue
        seen.add(resolved)
        try:
            runs.append(read_sweep(path) if is_sweep_directory(path) else read_run(path))
        except (ValueError, OSError) as error:  # pyarrow's ArrowInvalid is a ValueError, its IO errors OSErrors
            reason = str(error) or type(error).__name__
            if strict:
                raise UnreadableRunError(f"cannot read {path}: {reason}") from error
            if skipped is None:
                warnings.warn(f"skipped {path}: {reason}", UnreadableRunWarning, stacklevel=2)
            else:
                skipped.append((str(path), reason))
    return sorted(runs, key=_study_order)


def read_run(path) -> dict:
    """One run as a row: its summary's keys (all of them; a run without a summary yet is
    running), the model and data set from its config when the summary lacks them, `path`
    and `config`. `best_score` and `best_epoch` are the best validation score and its epoch
    in the run's epoch rows (see `best_validation`), where it has any."""
    directory = RunDirectory(path)
    config = _read(directory.config_path, directory.read_config) if directory.has_config() else {}
    summary = _read(directory.summary_path, directory.read_summary) or RunSummary()
    # Keys a row gets from reading the run, never from what its summary claims.
    run = {k: v for k, v in summary.items() if k not in _DERIVED}
    for key in ("model", "dataset", "seed"):
        if run.get(key) is None and key in config:
            run[key] = config[key]
    epochs = _read(directory.epochs_path, directory.read_epochs)
    for row in epochs:
        for key in ("epoch", "val_score", "train_score", "val_loss", "train_loss"):
            if row.get(key) is not None and not _is_number(row[key]):
                raise DamagedInputError(f"{directory.epochs_path}: column {key!r} holds {row[key]!r}, not a number")
    best = best_validation(epochs, run.get("higher_is_better") is not False)
    if best is not None:
        run["best_score"], run["best_epoch"] = best
    if directory.geometry_path.is_file():
        rows = _read(directory.geometry_path, directory.read_geometry)
        for row in rows:
            for key in _GEOMETRY_READ:
                if row.get(key) is not None and not _is_number(row[key]):
                    raise DamagedInputError(
                        f"{directory.geometry_path}: column {key!r} holds {row[key]!r}, not a number"
                    )
        run.update(geometry_numbers(rows))
    run["path"] = str(path)
    run["config"] = config
    first = (
        summary.first_score
        if summary.first_score is not None
        else next(
            (
                row.get("val_score")
                for row in sorted(epochs, key=lambda r: r.get("epoch") or 0)
                if _is_number(row.get("val_score"))
            ),
            None,
        )
    )  # the first evaluation, for `validity`
    every = config.get("track_every") if _is_number(config.get("track_every")) else None
    run["validity"] = validity(summary, first_score=first, every=every)
    return run


_GEOMETRY_READ = ("distance_median", "certified_median", "step_over_radius", "no_flip_guaranteed", "no_flip_observed")
# A row's keys that reading the run (or its sweep) sets; a summary holding them is not believed.
_DERIVED = frozenset(
    {
        "path",
        "config",
        "sweep",
        "trials",
        "members",
        "seeds",
        "rho_low",
        "rho_high",
        "rho_upper",
        "rho_lower",
        "rhos",
        "intervals",
        "directory",
        "validity",
        *_GEOMETRY_READ,
    }
)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def geometry_numbers(rows: list[dict]) -> dict:
    """A run's geometry table (config `geometry`) in a few numbers: the median over epochs of
    the probe's median region distance, certified radius and step/radius ratio, and the mean
    over epochs of the guaranteed and observed no-flip fractions."""

    def over_epochs(name: str, how) -> float:
        values = [r[name] for r in rows if r.get(name) is not None and math.isfinite(r[name])]
        return float(how(values)) if values else math.nan

    return {
        "distance_median": over_epochs("distance_median", np.median),
        "certified_median": over_epochs("certified_median", np.median),
        "step_over_radius": over_epochs("step_over_radius", np.median),
        "no_flip_guaranteed": over_epochs("no_flip_guaranteed", np.mean),
        "no_flip_observed": over_epochs("no_flip_observed", np.mean),
    }


def _read(path: Path, reader):
    """`reader()`, with an error that does not name the file it could not read naming `path`."""
    try:
        return reader()
    except ValueError as error:
        if str(path) in str(error):
            raise
        raise DamagedInputError(f"{path}: {error}") from error


def read_sweep(path) -> dict:
    """The sweep's row: its selected trial, or the seeds' means when it has seeds.

    With seeds, `seed` is the seeds the means are over (`seed_text`), `members` each seed
    run's status and rho (what the aggregate line counts), and `status` finished only when
    every seed run finished (else the first of running, interrupted, failed, diverged that
    one of them has). Scores are the best validation scores of the epoch rows (`read_run`).
    """
    sweep = SweepDirectory(path)
    description = sweep.read_description()
    selected = sweep.read_selected()
    for name, value in (("description", description), ("selection", selected)):
        if not isinstance(value, Mapping):
            raise DamagedInputError(f"{path}: the sweep's {name} is a {type(value).__name__}, not a table")
    if selected.get("path"):
        run = read_run(sweep.run(selected["path"]).path)
    else:  # no trial finished (or the grid is still running): the sweep's model and data set, no numbers
        base = description.get("base")
        run = {
            "model": _text(description.get("model")),
            "dataset": _text(description.get("dataset")),
            "status": Status.FAILED if selected else Status.RUNNING,
            "path": str(path),
            "config": base if isinstance(base, Mapping) else {},
        }
    run["sweep"] = str(path)
    run["trials"] = selected.get("trials") if _is_number(selected.get("trials")) else None
    seeds = selected.get("seeds") or {}
    seed_runs = (seeds.get("runs") if isinstance(seeds, Mapping) else None) or []  # the current selection's
    if not isinstance(seed_runs, list) or not all(isinstance(name, str) for name in seed_runs):
        raise DamagedInputError(f"{sweep.selected_path}: seeds.runs is not a list of run names")
    if seed_runs:
        rows = [read_run(sweep.run(name).path) for name in seed_runs]
        run.update(seed_statistics(rows))
        statuses = [Status(r.get("status") or Status.RUNNING) for r in rows]
        run["status"] = next((s for s in _UNFINISHED if s in statuses), Status.FINISHED)
        run["seed"] = seed_text([r.get("seed") for r in rows if r.get("status") == Status.FINISHED])
        run["members"] = [
            {"seed": r.get("seed"), "status": s, "rho": r.get("rho"), "validity": r["validity"]}
            for r, s in zip(rows, statuses)
        ]
        flags = [f for r in rows for f in r["validity"]["flags"]]
        run["validity"] = {**run["validity"], "flags": list(dict.fromkeys(flags))}  # any seed's flags
    return run


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def best_validation(epochs, higher_is_better: bool = True) -> tuple[float, int] | None:
    """The best validation score in `epochs` (rows with `epoch` and `val_score`) and the
    first epoch that reached it; None when no epoch has a finite score."""
    best = None
    for row in epochs:
        score = as_float(row.get("val_score"))
        if not math.isfinite(score):
            continue
        if best is None or (score > best[0] if higher_is_better else score < best[0]):
            best = (score, int(row["epoch"]))
    return best


def describe_stop(*, status, stop_epoch, max_epochs, epochs=(), stopper=None, score_name="score") -> str:
    """Why a run stopped, in words: "early at epoch 13 of 30: for 10 epochs val accuracy did
    not beat 0.9561 (early stopping's reference, epoch 3) by more than 0.01; best 0.9649 at
    epoch 4", "at max_epochs (30)", "at epoch 5: the training loss became NaN or infinite".

    `stopper` is the run's early stopping (`regimes.experiment.callbacks.EarlyStopping`,
    after its last update): its patience, min_delta, reference and count of epochs without
    improvement; `epochs` the epoch rows, for the best score.
    """
    status = Status(status or Status.RUNNING)
    if status == Status.DIVERGED:
        return f"at epoch {stop_epoch}: the training loss became NaN or infinite (diverged)"
    if status != Status.FINISHED:
        return f"{status} after epoch {stop_epoch} of {max_epochs}"
    stalled = stopper is not None and stopper.epochs_without_improvement >= stopper.patience
    if not stalled or stop_epoch is None or max_epochs is None or stop_epoch >= max_epochs:
        return f"at max_epochs ({stop_epoch})" if stop_epoch == max_epochs else f"at epoch {stop_epoch}"
    higher = stopper.higher_is_better
    beat = f"beat {stopper.best_score:.4f}" if higher else f"go below {stopper.best_score:.4f}"
    by = f" by more than {stopper.min_delta:g}" if stopper.min_delta else ""
    text = (
        f"early at epoch {stop_epoch} of {max_epochs}: for {stopper.patience} epochs val {score_name} did not "
        f"{beat} (early stopping's reference, epoch {stopper.best_epoch}){by}"
    )
    best = best_validation(epochs, higher)
    if best is not None and best[1] != stopper.best_epoch:
        text += f"; best {best[0]:.4f} at epoch {best[1]}"
    return text


def config_value(run: Mapping, *names):
    """The first of `names` found in a row (a summary), then in its config (flat or by section)."""
    config = run.get("config") or {}
    for source in [run, config, *(v for v in config.values() if isinstance(v, dict))]:
        for name in names:
            if source.get(name) is not None:
                return source[name]
    return None


def optimizer_text(run: Mapping) -> str:
    """The study's spelling of a run's optimizer: "SGD", "SGD, Nesterov 0.9", "AdamW"."""
    name = config_value(run, "optimizer")
    if isinstance(name, dict):  # a config section such as [optimizer] name = "sgd"
        name = name.get("name")
    label = optimizer_label(name) if name is not None else "?"
    momentum = as_float(config_value(run, "momentum"))
    if config_value(run, "nesterov"):
        label += f", Nesterov {momentum:g}" if momentum > 0 else ", Nesterov"
    elif momentum > 0:
        label += f", momentum {momentum:g}"
    return label


def seed_text(seeds) -> str:
    """Seeds as a table cell: "3", "0-4" for a run of consecutive seeds, else "0,2,5"."""
    seeds = sorted({int(s) for s in seeds if s is not None})
    if not seeds:
        return "-"
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def seed_statistics(runs, confidence: float = 0.95, resamples: int = 10_000) -> dict:
    """Means over the finished runs of one configuration (several seeds), with rho's
    bootstrap interval (`bootstrap_interval`) and semi-deviations (SPEC section 2).

    `runs` are summaries or rows (mappings with status, rho, best_score, ...). Keys: seeds,
    best_score, stop_epoch (rounded mean), auc_w, auc_p, rho and, where the runs have them,
    rho_global, rho_layerwise, rho_units, rho_global_units, rho_layerwise_units and the
    neurons' dead, always_on, dead_units, always_on_units (the means, so that every rho of
    a sweep's row is over the same seeds), rho_low, rho_high,
    rho_upper, rho_lower, rhos (each run's, in order), and `intervals`: the bootstrap interval
    of every other mean (best_score, auc_w, auc_p and the readings and neurons above), by key.
    """
    finished = [r for r in runs if r.get("status") == Status.FINISHED]

    def mean(key):
        values = [v for v in (as_float(r.get(key)) for r in finished) if math.isfinite(v)]
        return float(np.mean(values)) if values else math.nan

    rhos = [v for v in (as_float(r.get("rho")) for r in finished) if math.isfinite(v)]
    m, upper, lower = aggregate(rhos) if rhos else (math.nan, math.nan, math.nan)
    # Every rho column of a row is the same aggregate: the mean over these seeds.
    low, high = bootstrap_interval(rhos, confidence, resamples)
    stop = mean("stop_epoch")
    readings = ("rho_global", "rho_layerwise", "rho_units", "rho_global_units", "rho_layerwise_units")
    readings += NEURON_FIELDS  # the neurons, last epoch
    pooled = {key: mean(key) for key in readings if any(r.get(key) is not None for r in finished)}

    def interval(key):
        values = [v for v in (as_float(r.get(key)) for r in finished) if math.isfinite(v)]
        return list(bootstrap_interval(values, confidence, resamples)) if values else [math.nan, math.nan]

    # Every mean's bootstrap interval, by key (`regimes report --intervals`).
    intervals = {key: interval(key) for key in ("best_score", "auc_w", "auc_p", *pooled)}
    return {
        **pooled,
        "intervals": intervals,
        "seeds": len(finished),
        "best_score": mean("best_score"),
        "stop_epoch": round(stop) if math.isfinite(stop) else None,
        "auc_w": mean("auc_w"),
        "auc_p": mean("auc_p"),
        "rho": m,
        "rho_low": low,
        "rho_high": high,
        "rho_upper": upper,
        "rho_lower": lower,
        "rhos": rhos,
    }


def as_float(value) -> float:
    """A number from a summary or table cell; None and non-numbers read as NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan  # summaries store NaN and infinities as null


def _study_order(run: Mapping) -> tuple:
    model, dataset = str(run.get("model") or ""), str(run.get("dataset") or "")
    return (*row_rank(model, dataset), model, dataset)
