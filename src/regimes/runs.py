"""Runs as rows: reading many run and sweep directories, and statistics over a configuration's seeds.

```python
runs = load_runs(["runs/", "sweeps/"])   # one dict per run or sweep, in the study's row order
stats = seed_statistics(summaries)        # means over seeds, rho's interval and semi-deviations
```

It needs neither the experiment package (the training loop) nor matplotlib: the report, the
figures and the sweep runner all read from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from regimes.analysis import aggregate, bootstrap_interval
from regimes.records import RunDirectory, RunSummary, Status, SweepDirectory, find_runs, is_sweep_directory
from regimes.study import row_rank

__all__ = ["load_runs", "read_run", "read_sweep", "seed_statistics", "as_float"]


def load_runs(paths) -> list[dict]:
    """Read the runs at `paths`: run or sweep directories, or folders searched recursively for them.

    Each run is its summary (a flat dict) plus `path` and `config`; a sweep is its selected
    run, with the seeds' statistics when it has seeds (see `seed_statistics`). Runs come in
    the study's row order (model, then data set; rows the study does not have go after its
    rows of the same model), ties in the order found; a run reached twice is read once.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found = [run for path in paths for run in find_runs(path)]
    runs, seen = [], set()
    for path in found:
        if (resolved := path.resolve()) in seen:
            continue
        seen.add(resolved)
        runs.append(read_sweep(path) if is_sweep_directory(path) else read_run(path))
    return sorted(runs, key=_study_order)


def read_run(path) -> dict:
    """One run as a row: its summary's keys (all of them; a run without a summary yet is
    running), the model and data set from its config when the summary lacks them, `path`
    and `config`."""
    directory = RunDirectory(path)
    config = directory.read_config() if directory.has_config() else {}
    run = dict(directory.read_summary() or RunSummary())
    for key in ("model", "dataset"):
        if run.get(key) is None and key in config:
            run[key] = config[key]
    run["path"] = str(path)
    run["config"] = config
    return run


def read_sweep(path) -> dict:
    """The sweep's row: its selected trial, or the seeds' means when it has seeds."""
    sweep = SweepDirectory(path)
    description = sweep.read_description()
    selected = sweep.read_selected()
    if selected.get("path"):
        run = read_run(sweep.run(selected["path"]).path)
    else:  # no trial finished (or the grid is still running): the sweep's model and data set, no numbers
        run = {"model": description.get("model"), "dataset": description.get("dataset"),
               "status": Status.FAILED if selected else Status.RUNNING, "path": str(path),
               "config": description.get("base", {})}  # fmt: skip
    run["sweep"] = str(path)
    run["trials"] = selected.get("trials")
    seed_runs = (selected.get("seeds") or {}).get("runs") or []  # the seeds of the current selection
    if seed_runs:
        summaries = [sweep.run(name).read_summary() or RunSummary() for name in seed_runs]
        run.update(seed_statistics(summaries))
    return run


def seed_statistics(runs, confidence: float = 0.95, resamples: int = 10_000) -> dict:
    """Means over the finished runs of one configuration (several seeds), with rho's
    bootstrap interval (`bootstrap_interval`) and semi-deviations (SPEC section 2).

    `runs` are summaries or rows (mappings with status, rho, best_score, ...). Keys: seeds,
    best_score, stop_epoch (rounded mean), auc_w, auc_p, rho, rho_low, rho_high, rho_upper,
    rho_lower, rhos (each run's, in order).
    """
    finished = [r for r in runs if r.get("status") == Status.FINISHED]

    def mean(key):
        values = [v for v in (as_float(r.get(key)) for r in finished) if math.isfinite(v)]
        return float(np.mean(values)) if values else math.nan

    rhos = [v for v in (as_float(r.get("rho")) for r in finished) if math.isfinite(v)]
    m, upper, lower = aggregate(rhos) if rhos else (math.nan, math.nan, math.nan)
    low, high = bootstrap_interval(rhos, confidence, resamples)
    stop = mean("stop_epoch")
    return {
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
