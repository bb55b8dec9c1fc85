"""The study's sweeps: every configuration of a grid, the best one by validation score,
then that one again with several seeds (SPEC section 4, and beyond it: an interval on rho).

```
sweeps/mlp-breast-cancer/
  sweep.json              the base config and the grid (a rerun checks it is the same sweep)
  trials/sgd-lr1e-2-wd1e-4/   one run directory per trial, as `regimes run` writes it
  trials.parquet, .csv    one row per trial: the swept values, status, scores, AUCs, rho
  selected.json           the winning trial's row; with seeds, rho's mean, interval, semi-deviations
  seeds/seed0, seed1 ...  the winning configuration with each seed (--seeds N)
  seeds.parquet, .csv     one row per seed
```

The work is a list of `Job`s (a name, a config, a run directory) handed to an engine
(`regimes.experiment.engines`), which calls back with each job's row as it finishes. Every
trial is an ordinary resumable run, so a rerun of the sweep skips the finished trials and
resumes the others from their last finished epoch.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from regimes.experiment.config import RunConfig
from regimes.experiment.grids import Grid
from regimes.records import RunDirectory, atomic_write, describe_difference, json_ready, software_versions
from regimes.report import as_float, seed_statistics


__all__ = ["Job", "run_job", "plan_trials", "run_sweep", "select", "trial_row", "SweepDirectory", "DONE"]

DONE = ("finished", "diverged")  # a rerun leaves these alone; anything else runs (again)

# The trials table: these columns, then one per swept config key.
ROW_COLUMNS = (
    "trial", "status", "seed", "optimizer", "momentum", "nesterov", "lr", "weight_decay",
    "score_name", "higher_is_better", "best_score", "best_epoch", "stop_epoch", "max_epochs",
    "auc_w", "auc_p", "rho", "stabilization_w", "stabilization_p", "seconds", "error", "path",
)  # fmt: skip


@dataclass
class Job:
    """One training run of a sweep: `name` ("trials/sgd-lr1e-2-wd1e-4"), its config, its folder."""

    name: str
    config: RunConfig
    out: str

    @property
    def short_name(self) -> str:
        return self.name.split("/", 1)[-1]


def run_job(job: Job, device: str = "cpu", data_dir=None) -> dict:
    """Train (or resume) one job; returns its summary. Never raises for a failing run: the
    summary then has status "failed" and the error, also kept in the run's error.txt."""
    from regimes.experiment.training import train_run

    out = Path(job.out)
    started = time.time()
    try:
        summary = train_run(job.config, out, device=device, data_dir=data_dir, resume=(out / "config.toml").is_file())
        (out / "error.txt").unlink(missing_ok=True)
        return summary
    except KeyboardInterrupt:
        raise
    except Exception as error:  # the sweep goes on without this trial
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "error.txt", traceback.format_exc().encode("utf-8"))
        previous = RunDirectory(out).read_summary() if (out / "summary.json").is_file() else None
        return {**(previous or {}), "status": "failed", "error": f"{type(error).__name__}: {error}",
                "seconds": (previous or {}).get("seconds", time.time() - started)}  # fmt: skip


def trial_row(job: Job, summary: dict, swept=()) -> dict:
    """The job's row of the trials table: its config, status and numbers (NaN where missing)."""
    config = job.config
    row = {key: summary.get(key) for key in ROW_COLUMNS}
    row.update(
        trial=job.short_name, seed=config.seed, optimizer=config.optimizer, momentum=config.momentum,
        nesterov=config.nesterov, lr=config.lr, weight_decay=config.weight_decay,
        max_epochs=config.max_epochs, path=job.name, status=summary.get("status", "running"),
    )  # fmt: skip
    for key in swept:
        value = getattr(config, key)
        row[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    for key in ("best_score", "auc_w", "auc_p", "rho", "stabilization_w", "stabilization_p", "seconds"):
        row[key] = as_float(row[key])
    return row


def select(rows: list[dict]) -> dict | None:
    """The finished row with the best validation score (the direction its task says); ties
    go to the first in grid order. None when no trial has finished."""
    finished = [r for r in rows if r["status"] == "finished" and math.isfinite(r["best_score"])]
    if not finished:
        return None
    sign = 1.0 if finished[0].get("higher_is_better", True) is not False else -1.0
    best = finished[0]
    for row in finished[1:]:
        if sign * row["best_score"] > sign * best["best_score"]:
            best = row
    return best


def plan_trials(base: RunConfig, grid: Grid, out) -> list[Job]:
    out = Path(out).absolute()
    return [Job(f"trials/{name}", config, str(out / "trials" / name)) for name, config in grid.trials(base)]


def plan_seeds(selected: RunConfig, seeds: int, out) -> list[Job]:
    out = Path(out).absolute()
    first = selected.seed
    return [Job(f"seeds/seed{s}", selected.replace(seed=s), str(out / "seeds" / f"seed{s}")) for s in range(first, first + seeds)]


class SweepDirectory:
    """A sweep's folder: its description, tables and selection (the runs are RunDirectory's)."""

    FILES = ("sweep.json", "trials.parquet", "trials.csv", "selected.json", "seeds.parquet", "seeds.csv")

    def __init__(self, path):
        self.path = Path(path)

    def start(self, description: dict, force: bool = False) -> None:
        """Write sweep.json; refuse a folder that holds another sweep (unless `force`, which
        removes that sweep's runs and tables first)."""
        path = self.path / "sweep.json"
        if path.is_file():
            if force:
                self.clear()
            else:
                old = json.loads(path.read_text())
                new = json.loads(json.dumps(description))
                differs = [k for k in ("base", "grid") if old.get(k) != new.get(k)]
                if differs:
                    raise FileExistsError(
                        f"{self.path} holds another sweep (its {' and '.join(differs)} differ: {describe_difference(old, new)}); "
                        "choose another --out, or --force to start again there"
                    )
        elif self.path.is_dir() and any(self.path.iterdir()) and not force:
            raise FileExistsError(f"{self.path} exists and holds no sweep; choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(path, (json.dumps(description, indent=2) + "\n").encode("utf-8"))

    def clear(self) -> None:
        for name in self.FILES:
            (self.path / name).unlink(missing_ok=True)
        for folder in ("trials", "seeds"):
            shutil.rmtree(self.path / folder, ignore_errors=True)

    def write_table(self, stem: str, rows: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([json_ready(r) for r in rows])
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        atomic_write(self.path / f"{stem}.parquet", buffer.getvalue().to_pybytes())
        buffer = pa.BufferOutputStream()
        pcsv.write_csv(table, buffer)
        atomic_write(self.path / f"{stem}.csv", buffer.getvalue().to_pybytes())

    def write_selected(self, selected: dict) -> None:
        text = json.dumps(json_ready(selected), indent=2, allow_nan=False) + "\n"
        atomic_write(self.path / "selected.json", text.encode("utf-8"))


def run_sweep(base: RunConfig, grid: Grid, out, engine, *, seeds: int = 0, force: bool = False, events=None) -> dict:
    """Run the grid into `out`, select, rerun the selection with `seeds` seeds; returns selected.json's content.

    `engine.run(jobs, on_result)` trains the jobs (see engines.py; closed at the end);
    `events(kind, **info)`, if given, hears "phase" (name, total, done) and "result"
    (phase, job, row): the CLI's progress lines.
    """
    try:
        return _sweep(base, grid, out, engine, seeds, force, events or (lambda kind, **info: None))
    finally:
        engine.close()


def _sweep(base, grid, out, engine, seeds, force, events) -> dict:
    directory = SweepDirectory(out)
    jobs = plan_trials(base, grid, out)
    _check_runs_match(jobs, force)
    directory.start({
        "preset": base.preset, "model": base.model, "dataset": base.dataset, "base": base.to_dict(),
        "grid": {"name": grid.name, "axes": grid.axes, "fixed": grid.fixed}, "versions": software_versions(),
    }, force=force)  # fmt: skip
    swept = _swept_keys(grid)

    started = time.perf_counter()
    rows = _run_phase("grid", jobs, engine, events, lambda job, summary: trial_row(job, summary, swept))
    wall = {"grid": time.perf_counter() - started}  # this invocation's, finished trials skipped
    directory.write_table("trials", rows)
    best = select(rows)
    failed = [r["trial"] for r in rows if r["status"] not in DONE]
    selected = {"preset": base.preset, "model": base.model, "dataset": base.dataset, "grid": grid.name,
                "trials": len(rows), "failed": failed, "wall_seconds": wall}  # fmt: skip
    if best is None:
        selected.update(trial=None, status="no trial finished")
        directory.write_selected(selected)
        return selected
    winner = next(job for job in jobs if job.short_name == best["trial"])
    selected.update(trial=best["trial"], path=best["path"], row=best, config=winner.config.to_dict())
    directory.write_selected(selected)

    if seeds > 0:
        seed_jobs = plan_seeds(winner.config, seeds, out)
        _remove_stale_seeds(seed_jobs)
        _reuse_trial_as_seed(winner, seed_jobs)
        started = time.perf_counter()
        seed_rows = _run_phase("seeds", seed_jobs, engine, events, lambda job, summary: trial_row(job, summary))
        wall["seeds"] = time.perf_counter() - started
        directory.write_table("seeds", seed_rows)
        selected["seeds"] = {**seed_statistics(seed_rows), "runs": [job.name for job in seed_jobs]}
        directory.write_selected(selected)
    return selected


# ------------------------------------------------------------------------------------- helpers


def _run_phase(phase: str, jobs: list[Job], engine, events, to_row) -> list[dict]:
    """Rows for `jobs` in their order: finished ones read from disk, the rest from the engine."""
    rows: dict[str, dict] = {}
    pending = []
    for job in jobs:
        summary = RunDirectory(job.out).read_summary() if Path(job.out, "summary.json").is_file() else None
        if summary is not None and summary.get("status") in DONE:
            rows[job.name] = to_row(job, summary)
        else:
            pending.append(job)
    events("phase", name=phase, total=len(jobs), done=len(rows))

    def on_result(job: Job, summary: dict) -> None:
        rows[job.name] = row = to_row(job, summary)
        events("result", phase=phase, job=job, row=row)

    if pending:
        engine.run(pending, on_result)
    for job in jobs:  # a job the engine lost (a worker that died) counts as failed
        if job.name not in rows:
            rows[job.name] = to_row(job, {"status": "failed", "error": "the engine returned no result"})
    return [rows[job.name] for job in jobs]


def _swept_keys(grid: Grid) -> list[str]:
    """Config keys the grid varies that the trials table does not already have a column for."""
    keys = []
    for key, values in grid.axes.items():
        keys.append(key)
        keys.extend(k for v in values if isinstance(v, dict) for k in v if k != "name")
    return [k for k in dict.fromkeys(keys) if k not in ROW_COLUMNS]


def _check_runs_match(jobs: list[Job], force: bool) -> None:
    """Refuse to resume a run directory that holds another config (before anything starts)."""
    for job in jobs:
        run = RunDirectory(job.out)
        if force or not run.config_path.is_file():
            continue
        if (why := run.config_difference(job.config.to_dict())) is not None:
            raise FileExistsError(
                f"{job.out} holds a run of another config ({why}); "
                "choose another --out, or --force to start the sweep again"
            )


def _remove_stale_seeds(seed_jobs: list[Job]) -> None:
    """Seed runs of a configuration that is no longer the selected one (a rerun finished a
    trial that failed before, and it won) are removed: they belong to the old selection."""
    for job in seed_jobs:
        try:
            _check_runs_match([job], force=False)
        except FileExistsError:
            shutil.rmtree(job.out)


def _reuse_trial_as_seed(winner: Job, seed_jobs: list[Job]) -> None:
    """The winning trial already is the run with its own seed: copy it rather than train it again."""
    for job in seed_jobs:
        target = Path(job.out)
        if job.config == winner.config and not target.exists():
            staging = target.with_name(f".{target.name}.copy")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(winner.out, staging)
            staging.rename(target)  # whole or not at all
