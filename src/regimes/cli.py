"""The `regimes` command: run the study's presets, list and show them, report over runs.

    regimes run mlp-breast-cancer                 train one run (a preset name or a TOML file)
    regimes run --resume runs/mlp-breast-cancer-seed0
    regimes run mlp-mnist --log tensorboard       the curves live in TensorBoard (mlflow, wandb too)
    regimes presets                               the presets, one line each
    regimes show mlp-mnist > my.toml              a preset as TOML, to copy and edit
    regimes report runs/ --figure grid.png        the study's table over any number of runs
    regimes sweep mlp-breast-cancer --seeds 5     the study's grid, the best config, 5 seeds
    regimes geometry runs/mlp-breast-cancer-seed0 the theory's instruments on a saved run's probe
    regimes explain runs/mlp-breast-cancer-seed0  what explains its rho: sites, readings, neurons

Errors print one line; REGIMES_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import sys
from pathlib import Path

from regimes.errors import NoRunError, RegimesError, UsageError


def _config_for(args):
    from regimes.experiment import apply_overrides, get_preset, list_presets, load_toml

    target = args.preset
    is_file = (
        target.endswith(".toml") or Path(target).is_file() or (Path(target).is_dir() and target not in list_presets())
    )
    config = load_toml(target) if is_file else get_preset(target)
    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return apply_overrides(config, overrides)


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _settled(fraction) -> str:
    """A stabilisation time in words: 1.0 means the curve never stayed below tau."""
    if fraction is None or (isinstance(fraction, float) and math.isnan(fraction)):
        return "-"
    return "never" if fraction >= 1 else f"after {fraction:.2f} of training"


def _print_result(summary: dict, out: Path) -> None:
    from regimes.records import RunDirectory, Status
    from regimes.runs import best_validation

    best = best_validation(RunDirectory(out).read_epochs(), summary.get("higher_is_better") is not False)
    score, epoch = best if best is not None else (None, None)
    stop, most, status = summary["stop_epoch"], summary.get("max_epochs"), summary["status"]
    if status == Status.DIVERGED:
        stopped = f"{stop} (diverged: the training loss became NaN or infinite)"
    elif status == Status.FINISHED and most is not None and stop is not None:
        stopped = f"{stop} of {most} ({'max_epochs' if stop >= most else 'early stopping'})"
    else:
        stopped = f"{stop} of {most} ({status})"
    rho = _fmt(summary["rho"], ".2f")
    if summary.get("rho_global") is not None and summary.get("rho_layerwise") is not None:
        rho += f" (weight change: global {_fmt(summary['rho_global'], '.2f')}, layerwise {_fmt(summary['rho_layerwise'], '.2f')})"
    from regimes.records import validity

    flags = validity(summary)["flags"]
    said = str(status)
    if summary.get("freeze_iteration") is not None:
        said += f", frozen from iteration {summary['freeze_iteration']}: da is 0 from there on by construction"
    if "not measured" in flags:
        said += ", NOT MEASURED: fewer than two measurements per smoothing window, rho means nothing"
    if "not learned" in flags:
        said += f", DID NOT LEARN: best score within 0.05 of the majority class ({_fmt(summary.get('majority_score'), '.4f')})"
    rows = [
        ("run", str(out)),
        ("status", said),
        (f"best {summary['score_name']}", f"{_fmt(score, '.4f')} (epoch {_fmt(epoch, 'd')})"),
        ("stop epoch", stopped),
        ("AUC_W / AUC_P", f"{_fmt(summary['auc_w'], '.3f')} / {_fmt(summary['auc_p'], '.3f')}"),
        ("rho", rho),
        (
            "rho, units pooled",
            f"{_fmt(summary.get('rho_units'), '.2f')} (weight change: global "
            f"{_fmt(summary.get('rho_global_units'), '.2f')}, layerwise "
            f"{_fmt(summary.get('rho_layerwise_units'), '.2f')}; `regimes explain` says why)",
        ),
        ("settled (w / a)", f"{_settled(summary['stabilization_w'])} / {_settled(summary['stabilization_p'])}"),
    ]
    if summary.get("dead") is not None:  # the neurons that cannot flip, as the last epoch left them
        rows.append(
            (
                "neurons, last epoch",
                f"dead {_fmt(summary['dead'], '.3f')}, always on {_fmt(summary.get('always_on'), '.3f')} "
                f"(holding {_fmt(summary.get('dead_units'), '.3f')} / {_fmt(summary.get('always_on_units'), '.3f')} "
                "of the units)",
            )
        )
    geometry = RunDirectory(out).read_geometry()
    if geometry:
        from regimes.runs import geometry_numbers

        g = geometry_numbers(geometry)
        rows.append(
            (
                "geometry",
                f"region distance {_fmt(g['distance_median'], '.3g')}, certified radius "
                f"{_fmt(g['certified_median'], '.3g')}, largest step / radius "
                f"{_fmt(g['step_over_radius'], '.3g')} (medians over epochs)",
            )
        )
        rows.append(
            (
                "no flip (next epoch)",
                f"guaranteed {_fmt(g['no_flip_guaranteed'], '.2f')}, observed "
                f"{_fmt(g['no_flip_observed'], '.2f')} of the probe (means over epochs; "
                f"`regimes geometry {out}`)",
            )
        )
    _print_pairs(rows)


def cmd_run(args) -> int:
    from regimes.experiment import load_toml, train_run
    from regimes.experiment.config import check_path_name
    from regimes.records import RunDirectory, Status

    _set_threads(args.threads)
    if args.seeds is not None:
        return _run_seeds(args)

    if args.resume:
        out = Path(args.resume)
        changes = [
            flag
            for flag, given in (
                ("a preset or config", args.preset),
                ("--set", args.set),
                ("--seed", args.seed is not None),
                ("--force", args.force),
            )
            if given
        ]
        if changes:
            raise UsageError(
                f"--resume continues the run as its {RunDirectory.CONFIG} says, so {' and '.join(changes)} cannot go with "
                f"it; to train with other settings, start a new run: `regimes run {out / RunDirectory.CONFIG} --set ... "
                "--out OTHER_DIR`"
            )
        run = RunDirectory(out)
        run.check_resumable()
        config = load_toml(run.config_path)
    else:
        if not args.preset:
            raise UsageError(
                "name a preset or a TOML config (`regimes presets` lists the presets), or pass --resume DIR"
            )
        config = _config_for(args)
        name = config.preset or Path(args.preset).stem
        check_path_name("config file name", name)  # it names the default run folder
        out = Path(args.out or Path("runs") / f"{name}-seed{config.seed}")
    from regimes.experiment.callbacks import ProgressBar

    try:
        with _sigterm_as_interrupt():
            summary = train_run(
                config,
                out,
                device=args.device,
                data_dir=args.data_dir,
                resume=bool(args.resume),
                force=args.force,
                callbacks=[] if args.quiet else [ProgressBar()],
                log=args.log or (),
            )
    except KeyboardInterrupt:
        if RunDirectory(out).has_config():
            print(
                f"\ninterrupted: the records up to the last finished epoch are in {out}; "
                f"continue with `regimes run --resume {out}`",
                file=sys.stderr,
            )
        else:
            print("\ninterrupted before the run started: nothing was written", file=sys.stderr)
        return 130
    except OSError as error:  # a full disk or a file-size limit mid-run: the last finished epoch is kept
        if error.errno not in _NO_ROOM or not RunDirectory(out).has_checkpoint():
            raise
        return _one_line(
            f"no room to write {error.filename or 'the records'} ({error.strerror}); the records up to the last "
            f"finished epoch are in {out}: free space (or raise the file-size limit), then continue with "
            f"`regimes run --resume {out}`"
        )
    if summary is None:  # a DDP process other than the first (torchrun): the first one reports
        return 0
    if not args.quiet:
        _print_result(summary, out)
    return 0 if summary["status"] != Status.DIVERGED else 3


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def _run_seeds(args) -> int:
    """`regimes run PRESET --seeds N`: the config with seeds s..s+N-1 and nothing else varied,
    as a sweep of one trial whose seed phase gives rho's mean, interval and semi-deviations."""
    from regimes.experiment.engines import LocalEngine
    from regimes.experiment.grids import grid_from_dict
    from regimes.experiment.sweep import run_sweep

    if args.resume or args.seeds < 1:
        raise UsageError("--seeds takes a number >= 1 and a preset or config (rerun the same command to resume)")
    config = _config_for(args)
    out = Path(
        args.out
        or Path("runs") / f"{config.preset or Path(args.preset).stem}-seeds{config.seed}-{config.seed + args.seeds - 1}"
    )
    grid = grid_from_dict({"seed": [config.seed]}, name="seeds")
    engine = LocalEngine(workers=1, threads=args.threads, device=args.device, data_dir=args.data_dir)
    with _sigterm_as_interrupt():
        try:
            selected = run_sweep(
                config, grid, out, engine, seeds=args.seeds, force=args.force, events=_SweepProgress(args.quiet)
            )
        except KeyboardInterrupt:
            print(f"\ninterrupted: every finished epoch is kept in {out}; the same command continues", file=sys.stderr)
            return 130
    if not args.quiet:
        _print_sweep(selected, out)
    return 0 if selected.get("trial") is not None and not selected.get("failed") else 4


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """`kill` (SIGTERM) stops like Ctrl-C: the run ends as interrupted and can be resumed.
    A second SIGTERM while it is stopping is ignored (kill -9 still ends it at once)."""
    import signal

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_presets(args) -> int:
    from regimes.experiment import list_presets

    presets = list_presets()
    width = max(map(len, presets))
    for name, description in presets.items():
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_show(args) -> int:
    from regimes.experiment import dump_toml, get_preset

    print(dump_toml(get_preset(args.preset)), end="")
    return 0


def cmd_report(args) -> int:
    from regimes.report import render
    from regimes.runs import load_runs

    skipped = []
    runs = load_runs(args.dirs, strict=args.strict, skipped=skipped)
    for path, reason in skipped:
        print(f"regimes: skipped {path}, which cannot be read: {reason} (--strict stops instead)", file=sys.stderr)
    if not runs:
        raise UsageError(f"no readable run in {', '.join(args.dirs)}")
    print(render(runs, args.format, unreadable=len(skipped), include_flagged=args.all, intervals=args.intervals))
    if args.figure:
        from regimes.plots import plot_grid

        plot_grid(runs, path=args.figure)
        print(f"figure: {args.figure}", file=sys.stderr)
    return 0


def cmd_geometry(args) -> int:
    """A saved run's probe at its checkpoint (region distance, nearest boundary, radii per
    sample), and the per-epoch table the run recorded with `geometry = true`."""
    from regimes.records import RunDirectory

    _set_threads(args.threads)
    run_dir = RunDirectory(args.run)
    if not run_dir.has_config():
        raise NoRunError(f"{run_dir.path} is not a run directory (it has no {run_dir.CONFIG})")
    recorded = run_dir.read_geometry()
    checkpoint = run_dir.read_checkpoint()  # a damaged one: one line
    last = checkpoint["epoch"] if checkpoint is not None else None
    if args.epoch is not None and args.epoch != last:
        row = next((r for r in recorded if r["epoch"] == args.epoch), None)
        if row is None and recorded:
            raise UsageError(
                f"epoch {args.epoch}: the run recorded geometry for epochs "
                f"{recorded[0]['epoch']}-{recorded[-1]['epoch']}"
            )
        if row is None:
            weights = f"the checkpoint holds epoch {last}'s weights only" if checkpoint else "the run has no checkpoint"
            raise UsageError(
                f"epoch {args.epoch}: {weights}, and the run recorded no geometry: train it with "
                "`--set geometry=true` to record every epoch"
            )
        _print_pairs([(k, _geometry_value(v)) for k, v in row.items()])
        return 0
    if checkpoint is None:
        raise NoRunError(f"{run_dir.path} has no {run_dir.CHECKPOINT}: the run finished no epoch yet")
    from regimes.experiment.geometry import checkpoint_geometry

    found = checkpoint_geometry(run_dir, checkpoint, device=args.device, data_dir=args.data_dir)
    _print_probe_geometry(found)
    if recorded and args.epoch is None:
        print(f"\nrecorded during the run ({run_dir.geometry_path}):")
        _print_geometry_table(recorded)
    return 0


def _geometry_value(value) -> str:
    return _fmt(value, ".4g") if isinstance(value, float) else str(value)


def _print_pairs(rows) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def _print_probe_geometry(found: dict) -> None:
    from regimes.geometry.watch import percentiles

    n = len(found["distance"])
    print(f"epoch {found['epoch']} (iteration {found['iteration']}): the checkpoint's weights, probe of {n} samples")
    print(f"{'sample':>6}  {'distance':>10}  {'nearest boundary':<28}  {'certified':>10}  {'empirical':>10}")
    for i in range(n):
        site = found["nearest_site"][i]
        where = f"{site} unit {found['nearest_unit'][i]}" if site is not None else "none"
        print(
            f"{i:>6}  {found['distance'][i]:>10.4g}  {where:<28}  {found['certified'][i]:>10.4g}  "
            f"{found['empirical'][i]:>10.4g}"
        )
    spread = {k: percentiles(found[k], k) for k in ("distance", "certified", "empirical")}
    for name in ("p10", "median", "p90"):
        distance, certified, empirical = (spread[k][f"{k}_{name}"] for k in ("distance", "certified", "empirical"))
        print(f"{name:>6}  {distance:>10.4g}  {'':<28}  {certified:>10.4g}  {empirical:>10.4g}")


GEOMETRY_TABLE = (
    ("epoch", "d"),
    ("distance_median", ".3g"),
    ("certified_median", ".3g"),
    ("step_max", ".3g"),
    ("displacement_max", ".3g"),
    ("no_flip_guaranteed", ".2f"),
    ("no_flip_observed", ".2f"),
    ("statistics_change", ".2g"),
)


def _print_geometry_table(rows: list[dict]) -> None:
    widths = [max(len(name), 8) for name, _ in GEOMETRY_TABLE]
    print("  ".join(f"{name:>{w}}" for (name, _), w in zip(GEOMETRY_TABLE, widths)))
    for row in rows:
        print("  ".join(f"{_fmt(row.get(name), spec):>{w}}" for (name, spec), w in zip(GEOMETRY_TABLE, widths)))


def cmd_sweep(args) -> int:
    import signal

    from regimes.experiment.engines import make_engine
    from regimes.experiment.grids import resolve_grid
    from regimes.experiment.sweep import run_sweep

    if args.seeds < 0:
        raise UsageError(f"--seeds must be >= 0, got {args.seeds}")
    base = _config_for(args)
    grid = resolve_grid(args.grid, base)
    swept = set(grid.axes) | {k for v in grid.axes.get("optimizer", []) if isinstance(v, dict) for k in v}
    overridden = [text.split("=", 1)[0].strip().split(".")[0] for text in args.set or []]
    if clash := [k for k in overridden if k in swept]:
        raise UsageError(
            f"--set {clash[0]} changes a key the grid sweeps over; use a grid file (--grid FILE) to change its values"
        )
    if fixed := {k: v for k, v in grid.fixed.items() if k in overridden}:  # --set wins over the grid's fixed values
        grid.fixed = {k: v for k, v in grid.fixed.items() if k not in fixed}
    out = Path(args.out or Path("sweeps") / (base.preset or Path(args.preset).stem))
    engine = make_engine(
        args.engine,
        workers=args.workers,
        threads=args.threads,
        device=args.device,
        data_dir=args.data_dir,
        address=args.address,
        gpus_per_trial=args.gpus_per_trial,
    )
    progress = _SweepProgress(args.quiet)
    if not args.quiet:
        print(
            f"sweep {base.preset or args.preset}: {len(grid)} trials of the {grid.name} grid"
            f"{f', then {args.seeds} seeds' if args.seeds else ''}, into {out} ({engine!r})"
        )

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)  # `kill` stops as gently as Ctrl-C
    try:
        selected = run_sweep(base, grid, out, engine, seeds=args.seeds, force=args.force, events=progress)
    except KeyboardInterrupt:
        progress.close()
        print(
            f"\ninterrupted: every finished epoch is kept in {out}; the same command continues the sweep",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    progress.close()
    if not args.quiet:
        _print_sweep(selected, out)
    if selected.get("trial") is None:
        return 3
    return 0 if not selected.get("failed") else 4  # 4: selected, but some trials failed


class _SweepProgress:
    """One line per finished trial over an overall bar per phase (the grid, then the seeds)."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar = quiet, None

    def __call__(self, kind, **info):
        if self.quiet:
            return
        from tqdm.auto import tqdm

        if kind == "phase":
            self.close()
            skipped = f" ({info['done']} already done)" if info["done"] else ""
            self.bar = tqdm(
                total=info["total"], initial=info["done"], desc=info["name"] + skipped, unit="trial", dynamic_ncols=True
            )
        elif kind == "result":
            from regimes.records import RunDirectory
            from regimes.runs import best_validation

            row = info["row"]
            epochs = RunDirectory(info["job"].out).read_epochs() if info.get("job") is not None else []
            self.bar.write(_trial_line(row, best_validation(epochs, row.get("higher_is_better") is not False)))
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _trial_line(row: dict, best: tuple[float, int] | None = None) -> str:
    """A finished trial in one line: its best validation score and that epoch (`best`, from
    its epoch rows; else the row's), the epoch it stopped at, rho, and its training time."""
    from regimes.records import Status

    if row["status"] == Status.FAILED:
        return f"  {row['trial']:<28} failed    {row.get('error') or ''}"
    score, epoch = best if best is not None else (row["best_score"], row.get("best_epoch"))
    reference = ""
    stopping = row.get("best_score")
    if best is not None and stopping is not None and math.isfinite(stopping) and not math.isclose(stopping, score):
        reference = f" (early stopping's reference {stopping:.4f})"
    return (
        f"  {row['trial']:<28} {row['status']:<9} best {row.get('score_name') or 'score'} {_fmt(score, '.4f')}"
        f" at epoch {_fmt(epoch, 'd')}{reference}, stopped at epoch {_fmt(row.get('stop_epoch'), 'd')}"
        f"  rho {_fmt(row['rho'], '.2f')}  {_fmt(row['seconds'], '.1f')} s training (start-up not counted)"
    )


def _print_sweep(selected: dict, out: Path) -> None:
    from regimes.records import SweepDirectory
    from regimes.report import short_scientific
    from regimes.runs import read_run, read_sweep

    sweep = SweepDirectory(out)
    if selected.get("trial") is None:
        print(f"no trial finished; see {sweep.table_path(sweep.TRIALS, 'csv')}", file=sys.stderr)
        return
    row, winner = selected["row"], read_run(sweep.run(selected["path"]).path)
    print(
        f"selected  {selected['trial']}: best {row['score_name']} {winner['best_score']:.4f} at epoch {winner['best_epoch']}, "
        f"stopped at epoch {row['stop_epoch']}, rho {row['rho']:.2f}  ({sweep.selected_path})"
    )
    config = selected["config"]
    print(
        f"          optimizer {config['optimizer']}, lr {short_scientific(config['lr'])}, "
        f"weight decay {short_scientific(config['weight_decay'])}"
    )
    if selected.get("failed"):
        print(f"          {len(selected['failed'])} trial(s) did not finish: {', '.join(selected['failed'])}")
    if selected.get("seeds"):
        seeds = read_sweep(out)  # what `regimes report` shows for this sweep
        interval = (
            f", 95% interval [{seeds['rho_low']:.2f}, {seeds['rho_high']:.2f}]"
            if math.isfinite(seeds["rho_low"])
            else ""
        )
        print(
            f"seeds     {seeds['seeds']} finished (seeds {seeds['seed']}): rho {seeds['rho']:.2f}{interval} "
            f"(+{seeds['rho_upper']:.2f} / -{seeds['rho_lower']:.2f}), "
            f"mean best {row['score_name']} {seeds['best_score']:.4f}"
        )
    wall = selected.get("wall_seconds") or {}
    if wall:
        phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in wall.items())
        print(f"time      {phases} (wall-clock, start-up included; trials already done are not rerun)")


def cmd_explain(args) -> int:
    """What explains a run's rho, in words (regimes.explain), and optionally its figure."""
    from regimes.explain import explain, plot_explain, render

    numbers = explain(args.run, tau=args.tau)
    print(render(numbers))
    if args.figure:
        from regimes.plots import _save

        fig, _ = plot_explain(args.run, numbers)
        _save(fig, args.figure)
        print(f"figure: {args.figure}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regimes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train one run of a preset or a TOML config")
    run.add_argument("preset", nargs="?", help="a preset name (`regimes presets`) or a TOML config file")
    run.add_argument("--seed", type=int, help="the run's seed (default: the config's, 0)")
    run.add_argument("--out", help="run directory (default: runs/<preset>-seed<seed>)")
    run.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda if present, else cpu)")
    run.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value (TOML syntax), repeatable"
    )
    run.add_argument("--data-dir", help="where the data sets are (default: $REGIMES_DATA, then ~/.cache/regimes)")
    run.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its last finished epoch")
    run.add_argument("--force", action="store_true", help="replace a different run already in --out")
    run.add_argument("--quiet", action="store_true", help="no progress bar, no result table")
    run.add_argument(
        "--log",
        action="append",
        metavar="LOGGER",
        help="also send the curves, as they are measured, to tensorboard, mlflow or wandb (repeatable)",
    )
    run.add_argument(
        "--threads", type=int, metavar="N", help="torch threads (numbers depend on it; recorded in the summary)"
    )
    run.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="run seeds 0..N-1 (from --seed) of this config: rho's mean and 95%% interval, as a sweep's seeds",
    )
    run.set_defaults(func=cmd_run)

    presets = commands.add_parser("presets", help="list the presets")
    presets.set_defaults(func=cmd_presets)

    show = commands.add_parser("show", help="print a preset as TOML")
    show.add_argument("preset")
    show.set_defaults(func=cmd_show)

    report = commands.add_parser("report", help="the study's table (and figure) over run directories")
    report.add_argument("dirs", nargs="+", help="run directories, or folders holding them")
    report.add_argument("--format", choices=["markdown", "csv", "latex"], default="markdown")
    report.add_argument("--figure", help="also draw the grid figure to this file (.png, .svg, .pdf)")
    report.add_argument(
        "--intervals",
        action="store_true",
        help="show every mean over seeds with its 95%% bootstrap interval (a row of a --seeds run or sweep)",
    )
    report.add_argument(
        "--strict", action="store_true", help="stop at a run that cannot be read (default: name it and skip it)"
    )
    report.add_argument(
        "--all",
        action="store_true",
        help="count runs flagged not measured, not learned or frozen in the mean (default: leave them out)",
    )
    report.set_defaults(func=cmd_report)

    geometry = commands.add_parser("geometry", help="region distances and stability radii of a saved run's probe")
    geometry.add_argument("run", help="a run directory (`regimes run` writes one)")
    geometry.add_argument(
        "--epoch", type=int, help="an epoch the run recorded with geometry = true (default: the checkpoint's)"
    )
    geometry.add_argument("--device", help="cpu, cuda, ... (default: cuda if present, else cpu)")
    geometry.add_argument("--data-dir", help="where the data sets are (default: $REGIMES_DATA, then ~/.cache/regimes)")
    geometry.add_argument("--threads", type=int, metavar="N", help="torch threads")
    geometry.set_defaults(func=cmd_geometry)

    explain = commands.add_parser("explain", help="what explains a run's rho: sites, readings, neurons, plateau")
    explain.add_argument("run", help="a run directory (`regimes run` writes one)")
    explain.add_argument("--figure", help="also draw the figure to this file (.png, .svg, .pdf)")
    explain.add_argument("--tau", type=float, default=0.1, help="the threshold of t_tau (default 0.1)")
    explain.set_defaults(func=cmd_explain)

    sweep = commands.add_parser("sweep", help="the study's sweep: a grid, the best config, several seeds")
    sweep.add_argument("preset", help="a preset name (`regimes presets`) or a TOML config file: the base config")
    sweep.add_argument(
        "--grid", help="a family (small, cnn, transformer) or a TOML grid file (default: the model's family)"
    )
    sweep.add_argument(
        "--seeds", type=int, default=0, metavar="N", help="rerun the selected config with N seeds (rho's interval)"
    )
    sweep.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="local worker processes (default) or Ray Tune"
    )
    sweep.add_argument(
        "--workers", type=int, help="local: parallel trials (default: one per GPU, or cores / threads on CPU)"
    )
    sweep.add_argument(
        "--threads", type=int, help="torch threads (ray: CPUs) per trial (default: 1, or cores / --workers)"
    )
    sweep.add_argument("--address", help="ray: the cluster (auto, or an address; default: start Ray here)")
    sweep.add_argument(
        "--gpus-per-trial",
        type=float,
        help="ray: GPUs per trial, a fraction shares one (default: 1 with --device cuda)",
    )
    sweep.add_argument("--out", help="sweep directory (default: sweeps/<preset>)")
    sweep.add_argument("--seed", type=int, help="the base seed (the grid's trials; seeds count up from it)")
    sweep.add_argument(
        "--device", help="cpu, cuda, ... (default: cuda if present, else cpu; cuda spreads workers over every GPU)"
    )
    sweep.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="change the base config (TOML syntax), repeatable"
    )
    sweep.add_argument("--data-dir", help="where the data sets are (default: $REGIMES_DATA, then ~/.cache/regimes)")
    sweep.add_argument(
        "--force", action="store_true", help="start again in an --out that holds another sweep (removes its runs)"
    )
    sweep.add_argument("--quiet", action="store_true", help="no progress, no result lines")
    sweep.set_defaults(func=cmd_sweep)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    # A user's mistake or a damaged input (regimes.errors.RegimesError), or a file system that
    # refuses (permissions, a file where a folder should be, a full disk), is one line; anything
    # else is a bug of ours and keeps its traceback.
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader stopped reading (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except (RegimesError, NotADirectoryError) as error:  # regimes.errors: a mistake, or a damaged input
        return _one_line(str(error))
    except OSError as error:
        if not isinstance(error, PermissionError) and error.errno not in _REFUSED_BY_THE_FILE_SYSTEM:
            raise
        if error.errno in _NO_ROOM:
            return _one_line(
                f"no room to write {error.filename or 'a file'} ({error.strerror}): free space (or raise the "
                "file-size limit), or choose another place"
            )
        return _one_line(
            f"cannot write {error.filename or 'a file'}: {error.strerror}; choose a place you can write to"
        )


def _one_line(message: str) -> int:
    if os.environ.get("REGIMES_DEBUG"):
        raise
    print(f"regimes: error: {message}", file=sys.stderr)
    return 2


_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # a full disk, a quota, a file-size limit
_REFUSED_BY_THE_FILE_SYSTEM = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.ENAMETOOLONG,
}


if __name__ == "__main__":
    sys.exit(main())
