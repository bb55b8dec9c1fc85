"""How well the online detector (`regimes.detect`) answers, against the offline `t_tau`.

Two modes:

    python benchmarks/detect.py synthetic [--curves 200] [--seed 0]
        Random curves of known shape (exponential decays of several time constants,
        step drops, ramps, rise-then-decay) and stationary noise of several
        distributions. Per family: how often the offline t_tau and the online
        detector say "settled", and, in epochs, the error of the detector's first
        claim against the offline settle step and against the known decay time,
        and the delay from the offline settle step to the claim (median and 90th
        percentile over the curves).

    python benchmarks/detect.py runs RUN [RUN ...]
        Finished run directories: the online answers beside the offline t_tau.

Steps are update counts (1-based), as the detector reports them; an epoch is
`batches_per_epoch` steps. `--confirm-epochs` / `--confirm-fraction` try other rules.
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
    **{f"noise: {kind}": stationary(kind) for kind in
       ("normal", "exponential", "lognormal", "pareto", "uniform", "binomial", "poisson", "ar1")},
}


def follow(x, bpe, **rule):
    """Feed a curve; return (first claim step, update it was claimed at, final answer, withdrawals)."""
    detector = SettleDetector(bpe, **rule)
    first = claimed_at = None
    withdrawals = 0
    previous = None
    for value in x:
        answer = detector.update(value)
        if answer is not None and first is None:
            first, claimed_at = answer, detector.steps
        if previous is not None and answer is None:
            withdrawals += 1
        previous = answer
    return first, claimed_at, previous, withdrawals


def quantiles(values):
    if not values:
        return "-", "-"
    a = np.abs(np.asarray(values, dtype=float))
    return f"{np.median(a):.2f}", f"{np.percentile(a, 90):.2f}"


def signed_median(values):
    return f"{np.median(values):+.2f}" if values else "-"


def synthetic(args, rule):
    rng = np.random.default_rng(args.seed)
    header = (
        "| family | curves | offline settled | online settled (end) | end = offline | claimed ever | withdrawn "
        "| claim - offline, ep (median signed; abs median, p90) | claim - known, ep (abs median, p90) "
        "| delay to claim, ep (median, p90) |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, draw in FAMILIES.items():
        n_off = n_end = agree = claimed = withdrawn = 0
        err_off, err_known, delay = [], [], []
        for _ in range(args.curves):
            x, bpe, known = draw(rng)
            offline = offline_settle_step(x, bpe)
            first, at, final, withdrawals = follow(x, bpe, **rule)
            n_off += offline is not None
            n_end += final is not None
            agree += final == offline
            claimed += first is not None
            withdrawn += withdrawals > 0
            if first is not None and offline is not None:
                err_off.append((first - offline) / bpe)
                delay.append((at - offline) / bpe)
            if first is not None and known is not None:
                err_known.append((first - known) / bpe)
        share = lambda count: f"{100 * count / args.curves:.0f}%"  # noqa: E731
        against_offline = f"{signed_median(err_off)}; {', '.join(quantiles(err_off))}" if err_off else "-"
        delays = f"{signed_median(delay)}, {np.percentile(delay, 90):.2f}" if delay else "-"
        print(
            f"| {name} | {args.curves} | {share(n_off)} | {share(n_end)} | {share(agree)} | {share(claimed)} "
            f"| {share(withdrawn)} | {against_offline} | {', '.join(quantiles(err_known))} | {delays} |"
        )


def runs(args, rule):
    import pandas as pd  # the run directory's reader; capture itself never needs pandas

    print(
        "| run | steps | batches/epoch | curve | offline t_tau | offline step | online first claim (at) "
        "| online at end | end = offline |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        run = Path(run)
        summary = json.loads((run / "summary.json").read_text())
        bpe = int(summary["batches_per_epoch"])
        table = pd.read_parquet(run / "steps", columns=["iteration", "dw", "da"]).sort_values("iteration")
        k = smoothing_window(bpe)
        for column, curve in (("dw", "w"), ("da", "p")):
            x = table[column].to_numpy(dtype=np.float64)
            offline = offline_settle_step(x, bpe)
            t_tau = 1.0 if offline is None else (offline - k) / (x.size - k + 1)
            first, at, final, _ = follow(x, bpe, **rule)
            claim = "-" if first is None else f"{first} ({at})"
            print(
                f"| {run.name} | {x.size} | {bpe} | {curve} | {t_tau:.3f} | {offline or '-'} | {claim} "
                f"| {final or '-'} | {'yes' if final == offline else 'no'} |"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--confirm-epochs", type=float, default=None)
    parser.add_argument("--confirm-fraction", type=float, default=None)
    parser.add_argument("--max-quiet-before", type=float, default=None)
    parser.add_argument("--max-drift", type=float, default=None)
    parser.add_argument("--max-level", type=float, default=None)
    parser.add_argument("--tau", type=float, default=0.1)
    sub = parser.add_subparsers(dest="mode", required=True)
    syn = sub.add_parser("synthetic")
    syn.add_argument("--curves", type=int, default=200)
    syn.add_argument("--seed", type=int, default=0)
    real = sub.add_parser("runs")
    real.add_argument("runs", nargs="+")
    args = parser.parse_args()
    rule = {"tau": args.tau}
    if args.confirm_epochs is not None:
        rule["confirm_epochs"] = args.confirm_epochs
    if args.confirm_fraction is not None:
        rule["confirm_fraction"] = args.confirm_fraction
    if args.max_quiet_before is not None:
        rule["max_quiet_before"] = args.max_quiet_before
    if args.max_drift is not None:
        rule["max_drift"] = args.max_drift
    if args.max_level is not None:
        rule["max_level"] = args.max_level
    print(f"rule: {rule}")
    (synthetic if args.mode == "synthetic" else runs)(args, rule)


if __name__ == "__main__":
    main()
