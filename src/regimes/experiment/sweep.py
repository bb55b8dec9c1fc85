"""The study's sweeps: every configuration of a grid, the best one by validation score,
then that one again with several seeds (SPEC section 4, and beyond it: an interval on rho).

The sweep's folder (`regimes.records.SweepDirectory`) holds its description, one run
directory per trial and per seed, a table of each (one row per run: the swept values,
status, scores, AUCs, rho) and the selection: the winning trial's row and, with seeds,
rho's mean, interval and semi-deviations.

The work is a list of `Job`s (a name, a config, a run directory) handed to an engine
(`regimes.experiment.engines`), which calls back with each job's row as it finishes. Every
trial is an ordinary resumable run, so a rerun of the sweep skips the finished trials and
resumes the others from their last finished epoch.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from regimes.errors import RunExistsError
from regimes.experiment.config import RunConfig
from regimes.experiment.grids import Grid
from regimes.experiment.setup import check_names
from regimes.records import DONE, RunDirectory, RunSummary, Status, SweepDirectory, software_versions
from regimes.runs import as_float, seed_statistics

__all__ = ["Job", "run_job", "plan_trials", "run_sweep", "select", "trial_row"]

# The trials table: these columns, then one per swept config key.
ROW_COLUMNS = (
    "trial",
    "status",
    "seed",
    "optimizer",
    "momentum",
    "nesterov",
    "lr",
    "weight_decay",
    "score_name",
    "higher_is_better",
    "best_score",
    "best_epoch",
    "stop_epoch",
    "max_epochs",
    "auc_w",
    "auc_p",
    "rho",
    "stabilization_w",
    "stabilization_p",
    "seconds",
    "error",
    "path",
)


@dataclass
class Job:
    """One training run of a sweep: `name` ("trials/sgd-lr1e-2-wd1e-4"), its config, its folder."""

    name: str
    config: RunConfig
    out: str

    @property
    def short_name(self) -> str:
        return self.name.split("/", 1)[-1]


def run_job(job: Job, device: str = "cpu", data_dir=None) -> RunSummary:
    """Train (or resume) one job; returns its summary. Never raises for a failing run: the
    summary then has status failed and the error, whose traceback the run directory keeps
    (`RunDirectory.read_error`)."""
    from regimes.experiment.training import train_run

    run = RunDirectory(job.out)
    started = time.time()
    resume = run.has_checkpoint()
    # A trial stopped before its first checkpoint (killed between writing its first epoch's
    # records and its checkpoint) has nothing to resume: the sweep starts it again, in the
    # folder it owns (the config was checked to match; --force removes only regimes' files).
    restart = not resume and run.has_config()
    try:
        summary = train_run(job.config, run.path, device=device, data_dir=data_dir, resume=resume, force=restart)
        run.clear_error()
        return summary
    except KeyboardInterrupt:
        raise
    except Exception as error:  # the sweep goes on without this trial
        run.write_error(traceback.format_exc())
        previous = run.read_summary() or RunSummary()
        seconds = previous.seconds if previous.seconds is not None else time.time() - started
        return previous.replace(status=Status.FAILED, error=f"{type(error).__name__}: {error}", seconds=seconds)


def trial_row(job: Job, summary: dict, swept=()) -> dict:
    """The job's row of the trials table: its config, status and numbers (NaN where missing)."""
    config = job.config
    row = {key: summary.get(key) for key in ROW_COLUMNS}
    row.update(
        trial=job.short_name,
        seed=config.seed,
        optimizer=config.optimizer,
        momentum=config.momentum,
        nesterov=config.nesterov,
        lr=config.lr,
        weight_decay=config.weight_decay,
        max_epochs=config.max_epochs,
        path=job.name,
        status=Status(summary.get("status") or Status.RUNNING),
    )
    for key in swept:
        value = getattr(config, key)
        if key == "freeze":  # "off" / "auto" beside epoch numbers: one column type
            value = str(value)
        row[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    for key in ("best_score", "auc_w", "auc_p", "rho", "stabilization_w", "stabilization_p", "seconds"):
        row[key] = as_float(row[key])
    return row


def select(rows: list[dict]) -> dict | None:
    """The finished row with the best validation score (the direction its task says); ties
    go to the first in grid order. None when no trial has finished."""
    finished = [r for r in rows if r["status"] == Status.FINISHED and math.isfinite(r["best_score"])]
    if not finished:
        return None
    sign = 1.0 if finished[0].get("higher_is_better", True) is not False else -1.0
    best = finished[0]
    for row in finished[1:]:
        if sign * row["best_score"] > sign * best["best_score"]:
            best = row
    return best


def plan_trials(base: RunConfig, grid: Grid, out) -> list[Job]:
    sweep = SweepDirectory(Path(out).absolute())
    return [_job(sweep, sweep.trial_name(name), config) for name, config in grid.trials(base)]


def plan_seeds(selected: RunConfig, seeds: int, out) -> list[Job]:
    sweep = SweepDirectory(Path(out).absolute())
    first = selected.seed
    return [_job(sweep, sweep.seed_name(s), selected.replace(seed=s)) for s in range(first, first + seeds)]


def _job(sweep: SweepDirectory, name: str, config: RunConfig) -> Job:
    return Job(name, config, str(sweep.run(name).path))


def run_sweep(base: RunConfig, grid: Grid, out, engine, *, seeds: int = 0, force: bool = False, events=None) -> dict:
    """Run the grid into `out`, select, rerun the selection with `seeds` seeds; returns the selection
    (what `SweepDirectory.read_selected` reads back).

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
    for job in jobs:  # a misspelt name fails here, before the sweep's folder exists
        check_names(job.config)
    _check_runs_match(jobs, force)
    with directory.writer():  # one `regimes sweep` writes the sweep (each trial has its own lock too)
        directory.start(
            {
                "preset": base.preset,
                "model": base.model,
                "dataset": base.dataset,
                "base": base.to_dict(),
                "grid": {"name": grid.name, "axes": grid.axes, "fixed": grid.fixed},
                "versions": software_versions(),
            },
            force=force,
        )
        swept = _swept_keys(grid)

        started = time.perf_counter()
        rows = _run_phase("grid", jobs, engine, events, lambda job, summary: trial_row(job, summary, swept))
        wall = {"grid": time.perf_counter() - started}  # this invocation's, finished trials skipped
        directory.write_table(SweepDirectory.TRIALS, rows)
        best = select(rows)
        failed = [r["trial"] for r in rows if r["status"] not in DONE]
        selected = {
            "preset": base.preset,
            "model": base.model,
            "dataset": base.dataset,
            "grid": grid.name,
            "trials": len(rows),
            "failed": failed,
            "wall_seconds": wall,
        }
        if best is None:
            selected.update(trial=None, status=Status.FAILED, error="no trial finished")
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
            directory.write_table(SweepDirectory.SEEDS, seed_rows)
            selected["seeds"] = {**seed_statistics(seed_rows), "runs": [job.name for job in seed_jobs]}
            directory.write_selected(selected)
        return selected


# ------------------------------------------------------------------------------------- helpers


def _run_phase(phase: str, jobs: list[Job], engine, events, to_row) -> list[dict]:
    """Rows for `jobs` in their order: finished ones read from disk, the rest from the engine."""
    rows: dict[str, dict] = {}
    pending = []
    for job in jobs:
        summary = RunDirectory(job.out).read_summary()
        if summary is not None and summary.status in DONE:
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
            rows[job.name] = to_row(job, RunSummary(status=Status.FAILED, error="the engine returned no result"))
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
        if force or not run.has_config():
            continue
        if (why := run.config_difference(job.config.to_dict())) is not None:
            raise RunExistsError(
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
            RunDirectory(job.out).remove(up_to=job.out)  # what regimes wrote; a user's file stays


def _reuse_trial_as_seed(winner: Job, seed_jobs: list[Job]) -> None:
    """The winning trial already is the run with its own seed: copy it rather than train it again."""
    for job in seed_jobs:
        if job.config == winner.config and not Path(job.out).exists():
            RunDirectory(winner.out).copy_to(job.out)  # whole or not at all
