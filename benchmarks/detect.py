"""How well the online detector (`regimes.detect`) answers, against the offline `t_tau`.

Two modes:

    python benchmarks/detect.py synthetic [--curves 200] [--seed 0]
        Random curves of known shape (exponential decays of several time constants
        and noise levels, step drops, ramps, rise-then-decay, power laws) and
        stationary noise of eight distributions. Per family: how often the offline
        t_tau and the online detector say "settled" (at the end; ever; withdrawn),
        and, over the curves where both exist, in epochs, median and 90th
        percentile of
          error: the detector's first claimed settle step minus the reference
                 (absolute), the reference being the offline settle step of the
                 whole curve or the known decay time;
          delay: the update at which that claim was made minus the reference.

    python benchmarks/detect.py runs RUN [RUN ...]
        Finished run directories (`steps/` and `summary.json`): per curve, the
        offline t_tau of the whole run beside the online answers.

Steps are update counts (1-based), as the detector reports them; offline t_tau =
i / len(x_hat) is step i + k. `--tau` and the detector's options (`--confirm-epochs`,
`--max-level`, ...) try other rules.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from regimes.analysis import smoothing_window
from regimes.detect import SettleDetector, offline_settle_step

EPOCHS = 30
BATCHES = (5, 15, 23, 63)  # 63: MNIST-1D's batches per epoch; 15: Breast Cancer's; 23: digits'


def _noise(rng, size, scale):
    return rng.normal(0.0, scale, size)


# Each family draws one curve: (values, batches_per_epoch, known settle step or None).
def exp_decay(rng, noise=(0.005, 0.05)):
    bpe = int(rng.choice(BATCHES))
    t = np.arange(EPOCHS * bpe, dtype=float)
    decay = rng.uniform(0.3, 5.0) * bpe  # time constant in steps
    amplitude, floor = 1.0, rng.uniform(0.05, 0.5)
    x = floor + amplitude * np.exp(-t / decay) + _noise(rng, t.size, rng.uniform(*noise) * amplitude)
    return x, bpe, decay * math.log(10)  # noiseless curve at 10% of its height


def step_drop(rng):
    bpe = int(rng.choice(BATCHES))
    t = np.arange(EPOCHS * bpe)
    drop = int(rng.uniform(1, 15) * bpe)
    high, low = 1.0, rng.uniform(0.0, 0.08)
    x = np.where(t < drop, high, low) + _noise(rng, t.size, rng.uniform(0.002, 0.03))
    return x, bpe, drop


def ramp(rng):
    bpe = int(rng.choice(BATCHES))
    t = np.arange(EPOCHS * bpe, dtype=float)
    end = rng.uniform(2, 15) * bpe
    x = np.clip(1 - t / end, 0, None) + 0.1 + _noise(rng, t.size, rng.uniform(0.002, 0.03))
    return x, bpe, 0.9 * end


def power_decay(rng):
    # SGD's weight change: keeps decaying with no floor; no single known settle time.
    bpe = int(rng.choice(BATCHES))
    t = np.arange(EPOCHS * bpe, dtype=float)
    x = (1 + t / (rng.uniform(0.2, 2) * bpe)) ** -rng.uniform(0.5, 1.5)
    x = x + _noise(rng, t.size, rng.uniform(0.002, 0.02))
    return x, bpe, None


def rise_then_decay(rng):
    # LeNet5's curves: quiet at first, then a burst, then a decay.
    bpe = int(rng.choice(BATCHES))
    t = np.arange(EPOCHS * bpe, dtype=float)
    rise, decay = rng.uniform(1, 8) * bpe, rng.uniform(0.5, 3) * bpe
    shape = np.where(t < rise, (t / rise) ** 2, np.exp(-(t - rise) / decay))
    x = 0.1 + shape + _noise(rng, t.size, rng.uniform(0.005, 0.03))
    return x, bpe, rise + decay * math.log(10)


def stationary(kind):
    def draw(rng):
        bpe = int(rng.choice(BATCHES))
        size = EPOCHS * bpe
        if kind == "normal":
            x = 1.0 + rng.normal(0, 0.1, size)
        elif kind == "exponential":
            x = rng.exponential(1.0, size)
        elif kind == "lognormal":
            x = rng.lognormal(0.0, 1.0, size)
        elif kind == "pareto":  # heavy tail: infinite variance
            x = rng.pareto(1.5, size) + 1
        elif kind == "uniform":
            x = rng.uniform(0, 1, size)
        elif kind == "binomial":  # da: the fraction of 13 x 192 probe bits that flip
            x = rng.binomial(13 * 192, 0.002, size) / (13 * 192)
        elif kind == "poisson":  # rarer flips: ~2 a step
            x = rng.poisson(2.0, size) / 1000
        elif kind == "ar1":  # slowly wandering level, correlation time ~ half an epoch
            phi = math.exp(-1 / (0.5 * bpe))
            e = rng.normal(0, math.sqrt(1 - phi**2), size)
            x = np.empty(size)
            x[0] = e[0]
            for i in range(1, size):
                x[i] = phi * x[i - 1] + e[i]
            x = 2.0 + 0.3 * x
        else:
            raise ValueError(kind)
        return x, bpe, None

    return draw


FAMILIES = {
    "exp, noise 0.5-5%": exp_decay,
    "exp, noise 5-20%": lambda rng: exp_decay(rng, noise=(0.05, 0.2)),
    "step drop": step_drop,
    "ramp": ramp,
    "rise then decay": rise_then_decay,
    "power-law decay": power_decay,
    **{
        f"noise: {kind}": stationary(kind)
        for kind in ("normal", "exponential", "lognormal", "pareto", "uniform", "binomial", "poisson", "ar1")
    },
}


def follow(x, bpe, rule):
    """Feed a curve; return (first claim, the update it was made at, final answer, withdrawals)."""
    detector = SettleDetector(bpe, **rule)
    first = claimed_at = previous = None
    withdrawals = 0
    for value in x:
        answer = detector.update(value)
        if answer is not None and first is None:
            first, claimed_at = answer, detector.steps
        withdrawals += previous is not None and answer is None
        previous = answer
    return first, claimed_at, previous, withdrawals


def median_p90(values, absolute=False):
    if not values:
        return "-"
    a = np.abs(values) if absolute else np.asarray(values, dtype=float)
    sign = "" if absolute else "+"
    return f"{np.median(a):{sign}.2f}, {np.percentile(a, 90):{sign}.2f}"


def synthetic(args, rule):
    rng = np.random.default_rng(args.seed)
    columns = [
        "family",
        "offline settles",
        "online settled at end",
        "end = offline",
        "ever claimed",
        "claim withdrawn",
        "error vs offline: median, p90 of abs",
        "delay vs offline: median, p90",
        "error vs known: median, p90 of abs",
        "delay vs known: median, p90",
    ]
    print(f"{args.curves} curves per family, {EPOCHS} epochs each; errors and delays in epochs\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for name, draw in FAMILIES.items():
        n_offline = n_end = agree = claimed = withdrawn = 0
        error_offline, delay_offline, error_known, delay_known = [], [], [], []
        for _ in range(args.curves):
            x, bpe, known = draw(rng)
            offline = offline_settle_step(x, bpe, rule["tau"])
            first, at, final, withdrawals = follow(x, bpe, rule)
            n_offline += offline is not None
            n_end += final is not None
            agree += final == offline
            claimed += first is not None
            withdrawn += withdrawals > 0
            if first is not None and offline is not None:
                error_offline.append((first - offline) / bpe)
                delay_offline.append((at - offline) / bpe)
            if first is not None and known is not None:
                error_known.append((first - known) / bpe)
                delay_known.append((at - known) / bpe)

        def share(count):
            return f"{100 * count / args.curves:.1f}%"

        cells = [
            name,
            share(n_offline),
            share(n_end),
            share(agree),
            share(claimed),
            share(withdrawn),
            median_p90(error_offline, absolute=True),
            median_p90(delay_offline),
            median_p90(error_known, absolute=True),
            median_p90(delay_known),
        ]
        print("| " + " | ".join(cells) + " |")


def runs(args, rule):
    import pandas as pd  # the run directory's reader; the detector itself needs no pandas

    columns = [
        "run",
        "steps",
        "batches/epoch",
        "curve",
        "offline t_tau",
        "offline step",
        "online at end",
        "first claim (made at)",
        "withdrawn",
        "end = offline",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for run in args.runs:
        run = Path(run)
        summary = json.loads((run / "summary.json").read_text())
        bpe = int(summary["batches_per_epoch"])
        # The weight change the run's headline uses (layerwise by default), as the runner's detector reads it.
        weights = "dw_layerwise" if args.weights == "layerwise" else "dw"
        table = pd.read_parquet(run / "steps", columns=["iteration", weights, "da"]).sort_values("iteration")
        k = smoothing_window(bpe)
        for column, curve in ((weights, "w"), ("da", "p")):
            x = table[column].to_numpy(dtype=np.float64)
            offline = offline_settle_step(x, bpe, rule["tau"])
            t_tau = 1.0 if offline is None else (offline - k) / (x.size - k + 1)
            first, at, final, withdrawals = follow(x, bpe, rule)
            cells = [
                run.name,
                x.size,
                bpe,
                curve,
                f"{t_tau:.3f}",
                offline or "-",
                final or "-",
                "-" if first is None else f"{first} ({at})",
                withdrawals,
                "yes" if final == offline else "no",
            ]
            print("| " + " | ".join(map(str, cells)) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tau", type=float, default=0.1)
    for option in ("confirm_epochs", "confirm_fraction", "max_quiet_before", "max_level", "max_drift"):
        parser.add_argument("--" + option.replace("_", "-"), type=float, default=None, help="the detector's option")
    modes = parser.add_subparsers(dest="mode", required=True)
    synthetic_mode = modes.add_parser("synthetic")
    synthetic_mode.add_argument("--curves", type=int, default=200)
    synthetic_mode.add_argument("--seed", type=int, default=0)
    runs_mode = modes.add_parser("runs")
    runs_mode.add_argument("runs", nargs="+", help="finished run directories")
    runs_mode.add_argument(
        "--weights",
        choices=["layerwise", "global"],
        default="layerwise",
        help="which weight change (the runner's default: layerwise)",
    )
    args = parser.parse_args()
    rule = {"tau": args.tau}
    for option in ("confirm_epochs", "confirm_fraction", "max_quiet_before", "max_level", "max_drift"):
        if getattr(args, option) is not None:
            rule[option] = getattr(args, option)
    print(f"rule: {rule} (the rest: SettleDetector's defaults)")
    (synthetic if args.mode == "synthetic" else runs)(args, rule)


if __name__ == "__main__":
    main()
