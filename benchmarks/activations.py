"""Regimes of smooth activations (issue 12, part 3): rho for ReLU, GELU and SiLU.

Each preset is trained with `model_args.activation` = relu, gelu and silu, over seeds;
the tracker follows the activation (a unit is on when its pre-activation is > 0). Per
preset and activation, over the seeds: the best validation score, and rho under both
weight-change readings (layerwise, the study's headline, and global, eq. 2) as the mean
with its 95% bootstrap interval (`regimes.analysis.bootstrap_interval`) and the study's
semi-deviations (`regimes.analysis.aggregate`).

    OMP_NUM_THREADS=1 python benchmarks/activations.py --out bench/activations --seeds 5 --jobs 2 \\
        --figure docs/activations.png

Runs go to OUT/<preset>/<activation>/seed<k>; finished ones are read back, not retrained.
`--table-only` prints the table (and draws the figure) from what is there.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

PRESETS = ["mlp-breast-cancer", "mlp-digits", "mlp-mnist1d", "mlp-fashion-mnist"]
ACTIVATIONS = ["relu", "gelu", "silu"]


def run_one(preset: str, activation: str, seed: int, max_epochs: int | None, threads: int, out: str) -> str:
    import torch

    from regimes.experiment import get_preset, train_run
    from regimes.records import RunDirectory

    torch.set_num_threads(threads)
    path = Path(out)
    summary = RunDirectory(path).read_summary() if path.is_dir() else None
    if summary is not None and summary.status.done:
        return out
    config = get_preset(preset)
    config = config.replace(seed=seed, model_args={**config.model_args, "activation": activation})
    if max_epochs:
        config = config.replace(max_epochs=max_epochs)
    train_run(config, path, force=True)
    return out


def collect(out: Path, presets, activations, seeds: int) -> dict:
    """{(preset, activation): [summary, ...]} of the finished runs."""
    from regimes.records import RunDirectory

    found = {}
    for preset in presets:
        for activation in activations:
            runs = [RunDirectory(out / preset / activation / f"seed{s}").read_summary() for s in range(seeds)]
            runs = [r for r in runs if r is not None and r.status.done]
            if runs:
                found[preset, activation] = runs
    return found


def _mean_interval(values) -> str:
    from regimes.analysis import bootstrap_interval

    low, high = bootstrap_interval(values)
    return f"{np.mean(values):.2f} [{low:.2f}, {high:.2f}]"


def _semi(values) -> str:
    from regimes.analysis import aggregate

    mean, upper, lower = aggregate(values)
    return f"{mean:.2f} +{upper:.2f} -{lower:.2f}"


def table(found: dict) -> str:
    lines = [
        "| preset | activation | seeds | epochs (stop) | best val score | rho layerwise, mean [95% CI] | "
        "rho layerwise, mean +up -low | rho global, mean [95% CI] | AUC_P | t_tau P |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (preset, activation), runs in found.items():
        col = lambda k, runs=runs: [r[k] for r in runs]  # noqa: E731
        lines.append(
            f"| {preset} | {activation} | {len(runs)} | {np.mean(col('stop_epoch')):.1f} | "
            f"{np.mean(col('best_score')):.4f} | {_mean_interval(col('rho_layerwise'))} | "
            f"{_semi(col('rho_layerwise'))} | {_mean_interval(col('rho_global'))} | "
            f"{np.mean(col('auc_p')):.3f} | {np.mean(col('stabilization_p')):.2f} |"
        )
    return "\n".join(lines)


def figure(found: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from regimes.analysis import bootstrap_interval

    presets = list(dict.fromkeys(p for p, _ in found))
    fig, axes = plt.subplots(1, len(presets), figsize=(3.2 * len(presets), 3.4), squeeze=False)
    colors = {"relu": "tab:blue", "gelu": "tab:orange", "silu": "tab:green"}
    for ax, preset in zip(axes[0], presets):
        for i, activation in enumerate(ACTIVATIONS):
            runs = found.get((preset, activation))
            if not runs:
                continue
            for j, (reading, marker) in enumerate((("rho_layerwise", "o"), ("rho_global", "s"))):
                values = np.array([r[reading] for r in runs], dtype=float)
                x = i + (j - 0.5) * 0.3
                low, high = bootstrap_interval(values)
                ax.errorbar(
                    [x],
                    [values.mean()],
                    yerr=[[values.mean() - low], [high - values.mean()]],
                    fmt=marker,
                    color=colors[activation],
                    capsize=3,
                    mfc="white" if j else colors[activation],
                )
                ax.scatter(np.full(len(values), x + 0.08), values, s=6, color=colors[activation], alpha=0.5)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xticks(range(len(ACTIVATIONS)), ACTIVATIONS)
        ax.set_title(preset, fontsize=9)
    axes[0][0].set_ylabel("rho = AUC_W / AUC_P\n(filled: layerwise, open: global)")
    fig.suptitle("rho by activation: mean and 95% bootstrap interval over seeds (dots: single runs)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=PRESETS)
    parser.add_argument("--activations", nargs="*", default=ACTIVATIONS)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--max-epochs", action="append", default=[], metavar="PRESET=N", help="cap a preset's epochs (repeatable)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--out", type=Path, default=Path("bench/activations"))
    parser.add_argument("--figure", type=Path, default=None, help="write the figure (PNG) here")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    caps = {k: int(v) for k, v in (item.split("=") for item in args.max_epochs)}
    if not args.table_only:
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        jobs = [
            (p, a, s, caps.get(p), args.threads, str(args.out / p / a / f"seed{s}"))
            for p in args.presets
            for s in range(args.seeds)
            for a in args.activations
        ]
        with ProcessPoolExecutor(args.jobs) as pool:
            for done in pool.map(run_one, *zip(*jobs)):
                print("done", done, flush=True)
    found = collect(args.out, args.presets, args.activations, args.seeds)
    print(table(found))
    if args.figure is not None:
        figure(found, args.figure)


if __name__ == "__main__":
    main()
