"""What freezing the regime costs in accuracy and saves or costs in time (issue 12, part 2).

Every preset and seed is trained with the same thread count as is (`freeze = "off"`)
and with the regime frozen (`--freeze`: "auto", the default, at the end of the epoch in
which the online detector first says the pattern settled; and/or epoch numbers, after
that epoch). Per preset and mode, over the seeds:

    best validation score: mean and 95% bootstrap interval of the mean
    s/step: wall seconds per optimizer step (the epoch's seconds, validation included,
            over its steps), over the whole run and after the freeze only
    s to best: wall seconds up to the end of the best epoch
    freeze epoch: the epoch after which each seed froze (- : never)
    max da after: the largest pattern change after the freeze (0 by construction)

    OMP_NUM_THREADS=1 python benchmarks/freeze.py --out bench/freeze --seeds 3 --jobs 2 --freeze auto 2 \\
        --max-epochs mlp-fashion-mnist=8 --max-epochs lenet5-fashion-mnist=5

`--step-times` instead times training steps (with the tracker) of each preset unfrozen and
frozen in one process, alternating blocks of steps, for a per-step cost that a shared
machine's load does not skew.

Runs go to OUT/<preset>/<mode>/seed<k>; finished ones are read back, not retrained, so
an interrupted benchmark resumes. `--table-only` prints the table from what is there.
"""

from __future__ import annotations

import argparse
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

OFFLINE = [
    "mlp-breast-cancer",
    "mlp-digits",
    "lenet5-digits",
    "mlp-mnist1d",
    "mlp-fashion-mnist",
    "lenet5-fashion-mnist",
]


def _freeze_value(text: str):
    return text if text in ("off", "auto") else int(text)


def run_one(preset: str, seed: int, freeze, max_epochs: int | None, threads: int, out: str) -> str:
    """Train (or read back) one run; returns its directory."""
    import torch

    from regimes.experiment import get_preset, train_run
    from regimes.records import RunDirectory

    torch.set_num_threads(threads)
    path = Path(out)
    summary = RunDirectory(path).read_summary() if path.is_dir() else None
    if summary is not None and summary.status.done:
        return out
    config = get_preset(preset).replace(seed=seed, freeze=freeze)
    if max_epochs:
        config = config.replace(max_epochs=max_epochs)
    train_run(config, path, force=True)
    return out


def read_run(path: Path) -> dict:
    from regimes.records import RunDirectory

    run = RunDirectory(path)
    summary, epochs = run.read_summary(), run.read_epochs()
    steps = run.read_steps(columns=["iteration", "da"])
    per_epoch = summary["batches_per_epoch"]
    seconds = np.array([row["seconds"] for row in epochs])
    frozen_at = summary["freeze_iteration"]
    freeze_epoch = None if frozen_at is None else frozen_at // per_epoch
    after = seconds[freeze_epoch:] if freeze_epoch is not None else np.zeros(0)
    da_after = steps["da"][steps["iteration"] > frozen_at] if frozen_at is not None else np.zeros(0)
    return {
        "best": summary["best_score"],
        "best_epoch": summary["best_epoch"],
        "stop_epoch": summary["stop_epoch"],
        "per_step": seconds.sum() / summary["steps"],
        "per_step_after": after.sum() / (len(after) * per_epoch) if len(after) else math.nan,
        "to_best": seconds[: summary["best_epoch"]].sum(),
        "freeze_epoch": freeze_epoch,
        "max_da_after": float(da_after.max()) if len(da_after) else math.nan,
        "threads": summary["threads"],
    }


def step_times(preset: str, blocks: int = 7, steps: int = 20, threads: int = 1) -> tuple[float, float, float]:
    """Median seconds per training step (forward, backward, optimizer, tracker) of the preset
    unfrozen and frozen, and of the frozen copy's forward alone (its gates), measured in one
    process on two copies of the run that alternate in blocks, so that a machine shared with
    other work slows both alike. The full-run table's s/step moves with that load."""
    import time

    import torch

    from regimes.experiment import get_preset
    from regimes.experiment.setup import resolve_device, setup_run
    from regimes.freeze import ValuePattern, freeze_regime

    torch.set_num_threads(threads)
    config = get_preset(preset).replace(freeze=1)
    runs = [setup_run(config, resolve_device("cpu")) for _ in range(2)]
    assert all(any(isinstance(q, ValuePattern) for q in run.tracker.quantities) for run in runs)
    gates = freeze_regime(runs[1].tracker)
    tensors = runs[0].splits.train.tensors
    order = torch.Generator().manual_seed(0)

    def block(run) -> float:
        run.model.train()
        start = time.process_time()
        for _ in range(steps):
            indices = torch.randint(len(tensors[0]), (config.batch_size,), generator=order)
            batch = run.task.batch(tensors, indices, run.device)
            loss, _, _ = run.task.loss(run.model, batch)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.tracker.step()
        return (time.process_time() - start) / steps

    def gate_block() -> float:
        batch = runs[1].task.batch(tensors, torch.arange(config.batch_size), runs[1].device)
        start = time.process_time()
        for _ in range(steps):
            gates.gates(batch[0])
        return (time.process_time() - start) / steps

    block(runs[0]), block(runs[1])  # warm up
    times = [(block(runs[0]), block(runs[1]), gate_block()) for _ in range(blocks)]
    return tuple(float(np.median(column)) for column in zip(*times))


def _interval(values) -> str:
    from regimes.analysis import bootstrap_interval

    low, high = bootstrap_interval(values)
    return f"{np.mean(values):.4f} [{low:.4f}, {high:.4f}]"


def table(out: Path, presets, seeds: int, modes) -> str:
    lines = [
        "| preset | freeze | best val score, mean [95% CI] | best epochs | s/step | s/step after freeze | "
        "s to best epoch | freeze epoch | max da after freeze |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for preset in presets:
        for mode in modes:
            runs = [
                read_run(out / preset / str(mode) / f"seed{s}")
                for s in range(seeds)
                if (out / preset / str(mode) / f"seed{s}" / "summary.json").is_file()
            ]
            if not runs:
                continue
            col = lambda k, runs=runs: [r[k] for r in runs]  # noqa: E731
            after = [x for x in col("per_step_after") if not math.isnan(x)]
            da_after = [x for x in col("max_da_after") if not math.isnan(x)]
            lines.append(
                f"| {preset} | {mode} | {_interval(col('best'))} | {', '.join(map(str, col('best_epoch')))} | "
                f"{1e3 * np.mean(col('per_step')):.2f} ms | {f'{1e3 * np.mean(after):.2f} ms' if after else '-'} | "
                f"{np.mean(col('to_best')):.1f} s | "
                f"{', '.join('-' if e is None else str(e) for e in col('freeze_epoch'))} | "
                f"{max(da_after) if da_after else '-'} |"
            )
    return "\n".join(lines)


def drift_table(out: Path, presets, seeds: int, modes) -> str:
    """The value network under the frozen regime: its own sign pattern against the gates
    (drift_value) in the first and the last epoch after the freeze, its flips per step
    (da_value) after the freeze, beside the unfrozen run's da over the same steps."""
    from regimes.records import RunDirectory

    lines = [
        "| preset | freeze | drift_value, first epoch after | drift_value, last epoch | "
        "da_value after the freeze | da of the unfrozen run, same steps |",
        "|---|---|---|---|---|---|",
    ]
    for preset in presets:
        for mode in modes[1:]:
            rows = []
            for seed in range(seeds):
                frozen, unfrozen = (out / preset / str(m) / f"seed{seed}" for m in (mode, "off"))
                if not (frozen / "summary.json").is_file() or not (unfrozen / "summary.json").is_file():
                    continue
                summary = RunDirectory(frozen).read_summary()
                if summary["freeze_iteration"] is None:
                    continue
                steps, off = RunDirectory(frozen).read_steps(), RunDirectory(unfrozen).read_steps()
                per_epoch, at = summary["batches_per_epoch"], summary["freeze_iteration"]
                drift = steps["drift_value"][steps["iteration"] > at]
                rows.append(
                    (
                        drift[:per_epoch].mean(),
                        drift[-per_epoch:].mean(),
                        steps["da_value"][steps["iteration"] > at].mean(),
                        off["da"][off["iteration"] > at].mean(),
                    )
                )
            if rows:
                means = np.mean(rows, axis=0)
                lines.append(f"| {preset} | {mode} | " + " | ".join(f"{m:.4f}" for m in means) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=OFFLINE)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--freeze",
        type=_freeze_value,
        nargs="+",
        default=["auto"],
        help='the frozen modes beside "off": "auto" and/or epoch numbers',
    )
    parser.add_argument(
        "--max-epochs", action="append", default=[], metavar="PRESET=N", help="cap a preset's epochs (repeatable)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--out", type=Path, default=Path("bench/freeze"))
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument(
        "--step-times",
        action="store_true",
        help="only time training steps unfrozen and frozen, alternating in one process",
    )
    args = parser.parse_args()
    if args.step_times:
        print(
            "| preset | ms/step unfrozen | ms/step frozen | frozen / unfrozen | ms of it: the frozen copy's forward |"
        )
        print("|---|---|---|---|---|")
        for preset in args.presets:
            off, on, gate = step_times(preset, threads=args.threads)
            print(f"| {preset} | {1e3 * off:.2f} | {1e3 * on:.2f} | {on / off:.2f} | {1e3 * gate:.2f} |", flush=True)
        return
    caps = {k: int(v) for k, v in (item.split("=") for item in args.max_epochs)}
    modes = ["off", *args.freeze]
    if not args.table_only:
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        jobs = [
            (p, s, m, caps.get(p), args.threads, str(args.out / p / str(m) / f"seed{s}"))
            for p in args.presets
            for s in range(args.seeds)
            for m in modes
        ]
        # The slowest first, so the pool does not end on one long run.
        jobs.sort(key=lambda job: ("fashion" not in job[0], job[0]))
        with ProcessPoolExecutor(args.jobs) as pool:
            for done in pool.map(run_one, *zip(*jobs)):
                print("done", done, flush=True)
    print(table(args.out, args.presets, args.seeds, modes))
    print()
    print(drift_table(args.out, args.presets, args.seeds, modes))


if __name__ == "__main__":
    main()
