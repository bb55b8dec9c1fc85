"""The `regimes` command: run the study's presets, list and show them, report over runs.

    regimes run mlp-breast-cancer                 train one run (a preset name or a TOML file)
    regimes run --resume runs/mlp-breast-cancer-seed0
    regimes presets                               the presets, one line each
    regimes show mlp-mnist > my.toml              a preset as TOML, to copy and edit
    regimes report runs/ --figure grid.png        the study's table over any number of runs

Errors print one line; REGIMES_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path


def _config_for(args):
    from regimes.experiment import apply_overrides, get_preset, load_toml

    target = args.preset
    config = load_toml(target) if target.endswith(".toml") or Path(target).is_file() else get_preset(target)
    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return apply_overrides(config, overrides)


def _progress_bar(config, quiet: bool):
    if quiet:
        return None, None
    from tqdm.auto import tqdm

    bar = tqdm(total=config.max_epochs, desc=config.preset or config.model, unit="epoch", dynamic_ncols=True)

    def update(epoch, row, tracker):
        bar.n = epoch
        dw, da = tracker.delta_w, tracker.delta_a
        bar.set_postfix(
            loss=f"{row['train_loss']:.4f}", train=f"{row['train_score']:.4f}", val=f"{row['val_score']:.4f}",
            dw=f"{dw[-1]:.2e}" if len(dw) else "-", da=f"{da[-1]:.4f}" if len(da) else "-",
        )  # fmt: skip
        bar.refresh()

    return bar, update


def _print_result(summary: dict, out: Path) -> None:
    def fmt(value, spec):
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)

    rows = [
        ("run", str(out)),
        ("status", summary["status"]),
        (f"best {summary['score_name']}", f"{fmt(summary['best_score'], '.4f')} (epoch {summary['best_epoch']})"),
        ("stop epoch", str(summary["stop_epoch"])),
        ("AUC_W / AUC_P", f"{fmt(summary['auc_w'], '.3f')} / {fmt(summary['auc_p'], '.3f')}"),
        ("rho", fmt(summary["rho"], ".2f")),
        ("settled (w / a)", f"{fmt(summary['stabilization_w'], '.2f')} / {fmt(summary['stabilization_p'], '.2f')} of training"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def cmd_run(args) -> int:
    from regimes.experiment import load_toml, train_run

    if args.resume:
        out = Path(args.resume)
        if not (out / "config.toml").is_file():
            raise FileNotFoundError(f"{out} holds no run to resume (no config.toml); start it with `regimes run PRESET --out {out}`")
        config = load_toml(out / "config.toml")
    else:
        if not args.preset:
            raise ValueError("name a preset or a TOML config (`regimes presets` lists the presets), or pass --resume DIR")
        config = _config_for(args)
        out = Path(args.out or Path("runs") / f"{config.preset or Path(args.preset).stem}-seed{config.seed}")
    bar, update = _progress_bar(config, args.quiet)
    try:
        summary = train_run(config, out, device=args.device, data_dir=args.data_dir, resume=bool(args.resume),
                            force=args.force, progress=update)  # fmt: skip
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        print(f"\ninterrupted: the records up to the last finished epoch are in {out}; "
              f"continue with `regimes run --resume {out}`", file=sys.stderr)  # fmt: skip
        return 130
    if bar is not None:
        bar.close()
    if not args.quiet:
        _print_result(summary, out)
    return 0 if summary["status"] != "diverged" else 3


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
    from regimes.report import load_runs, render

    runs = load_runs(args.dirs)
    print(render(runs, args.format))
    if args.figure:
        from regimes.plots import plot_grid

        plot_grid(runs, path=args.figure)
        print(f"figure: {args.figure}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regimes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train one run of a preset or a TOML config")
    run.add_argument("preset", nargs="?", help="a preset name (`regimes presets`) or a TOML config file")
    run.add_argument("--seed", type=int, help="the run's seed (default: the config's, 0)")
    run.add_argument("--out", help="run directory (default: runs/<preset>-seed<seed>)")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps, ...")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (TOML syntax), repeatable")
    run.add_argument("--data-dir", help="where the data sets are (default: $REGIMES_DATA, then ~/.cache/regimes)")
    run.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its last finished epoch")
    run.add_argument("--force", action="store_true", help="replace a different run already in --out")
    run.add_argument("--quiet", action="store_true", help="no progress bar, no result table")
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
    report.set_defaults(func=cmd_report)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from regimes.data import DataNotFoundError
    from regimes.experiment import ConfigError
    from regimes.tracker import ProbeError

    try:
        return args.func(args)
    except (ConfigError, DataNotFoundError, FileExistsError, FileNotFoundError, ProbeError, TypeError, ValueError) as error:
        if os.environ.get("REGIMES_DEBUG"):
            raise
        print(f"regimes: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
