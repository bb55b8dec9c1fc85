"""The study's analysis of dw / da curves (docs/method.md, "The analysis"). NumPy only: no torch here.

A curve goes through `sma` (smoothing over ~0.3 epoch), `robust_minmax` (percentile
normalisation to [0, 1]) and `auc` (its mean). The ratio of the two AUCs, `rho`, says
how much earlier the activation pattern settled than the weights did.

>>> import numpy as np
>>> from regimes import analysis
>>> t = np.arange(200)
>>> dw, da = np.exp(-t / 100), np.exp(-t / 10)   # the pattern comes down ten times faster
>>> summary = analysis.summarize(dw, da, batches_per_epoch=10)
>>> summary["rho"] > 1                            # so it settled earlier than the weights
True
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "summarize_run",
    "four_readings",
    "sma",
    "robust_minmax",
    "auc",
    "stabilization",
    "aggregate",
    "bootstrap_interval",
    "smoothing_window",
    "measurements_per_epoch",
    "normalized_curve",
    "summarize",
]


def _as_curve(x, name: str = "x") -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D curve, got shape {arr.shape}; pass one curve at a time")
    return arr


def smoothing_window(batches_per_epoch: int) -> int:
    """The study's window: `max(1, round(0.3 * batches_per_epoch))` (round halves to even).

    >>> smoothing_window(15), smoothing_window(5), smoothing_window(1)
    (4, 2, 1)
    """
    if batches_per_epoch < 1:
        raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
    return max(1, round(0.3 * batches_per_epoch))


def sma(x, window: int) -> np.ndarray:
    """Simple moving average, uniform window, 'valid' mode: length `T - k + 1`.

    A curve shorter than the window is averaged with `k = T` (one value).

    >>> sma([1.0, 2.0, 3.0, 4.0], 2)
    array([1.5, 2.5, 3.5])
    >>> sma([1.0, 2.0], 5)
    array([1.5])
    """
    x = _as_curve(x)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if x.size == 0:
        return x.copy()
    k = min(int(window), x.size)
    # Cumulative sums give each window's mean in O(T); exact enough in float64.
    c = np.concatenate(([0.0], np.cumsum(x)))
    return (c[k:] - c[:-k]) / k


def robust_minmax(x, lo: float = 0.5, hi: float = 99.5) -> np.ndarray:
    """Clip `(x - p_lo) / (p_hi - p_lo)` to [0, 1]; a flat curve becomes all zeros.

    Args:
        x: a 1-D curve (already smoothed, in the study).
        lo: the lower percentile `p_lo` (NumPy's linear interpolation).
        hi: the upper percentile `p_hi`.

    >>> robust_minmax([0.0, 5.0, 10.0], lo=0, hi=100)
    array([0. , 0.5, 1. ])
    >>> robust_minmax([3.0, 3.0, 3.0])
    array([0., 0., 0.])
    """
    x = _as_curve(x)
    if x.size == 0:
        return x.copy()
    p_lo, p_hi = np.percentile(x, [lo, hi])
    if p_hi == p_lo:
        return np.zeros_like(x)
    return np.clip((x - p_lo) / (p_hi - p_lo), 0.0, 1.0)


def auc(x_hat) -> float:
    """Area under a normalised curve on a unit time axis: its mean (NaN for an empty curve).

    >>> auc([1.0, 0.5, 0.0, 0.0])
    0.375
    """
    x_hat = _as_curve(x_hat, "x_hat")
    if x_hat.size == 0:
        return math.nan
    return float(np.mean(x_hat))


def stabilization(x_hat, tau: float = 0.1) -> float:
    """Smallest `i / len(x_hat)` such that `x_hat[j] < tau` for every `j >= i`.

    1.0 means the curve never settled below `tau` (its last value is still >= tau).
    This is the paper's threshold analysis, `t_tau`: the curve must stay below `tau` for
    good, so a dip that comes back up does not count.

    >>> stabilization([1.0, 0.05, 0.5, 0.05, 0.0], tau=0.1)
    0.6
    >>> stabilization([1.0, 0.5, 0.2], tau=0.1)
    1.0
    """
    x_hat = _as_curve(x_hat, "x_hat")
    if x_hat.size == 0:
        return math.nan
    above = np.flatnonzero(~(x_hat < tau))  # NaN counts as not settled
    first_settled = 0 if above.size == 0 else int(above[-1]) + 1
    return first_settled / x_hat.size


def aggregate(rhos) -> tuple[float, float, float]:
    """Mean of rho over runs, with its upper and lower semi-deviations.

    upper = sqrt(mean((rho_k - m)^2)) over the runs above the mean m; lower likewise
    below it. A side with no runs has semi-deviation 0.

    Returns:
        `(mean, upper semi-deviation, lower semi-deviation)`.

    >>> mean, upper, lower = aggregate([1.0, 2.0, 3.0])
    >>> mean, round(upper, 6), round(lower, 6)
    (2.0, 1.0, 1.0)
    """
    r = _as_curve(rhos, "rhos")
    if r.size == 0:
        raise ValueError("aggregate needs at least one rho")
    m = float(np.mean(r))

    def semi(side: np.ndarray) -> float:
        return float(np.sqrt(np.mean((side - m) ** 2))) if side.size else 0.0

    return m, semi(r[r > m]), semi(r[r < m])


def bootstrap_interval(values, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`, from a fixed generator (the same
    values give the same interval). Fewer than two values: (NaN, NaN)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def measurements_per_epoch(batches_per_epoch: int, every: int) -> int:
    """The measurements of a whole epoch: `batches_per_epoch // every`, at least 1."""
    return max(1, int(batches_per_epoch) // int(every))


def normalized_curve(x, batches_per_epoch: int) -> np.ndarray:
    """`robust_minmax(sma(x, window))` with the study's window: the curve the figures show."""
    return robust_minmax(sma(x, smoothing_window(batches_per_epoch)))


def summarize(
    delta_w, delta_a=None, batches_per_epoch: int | None = None, tau: float = 0.1, *, weight_change=None
) -> dict:
    """The study's numbers for one run: AUC_W, AUC_P, rho and the stabilisation times.

    Two forms. `summarize(delta_w, delta_a, batches_per_epoch)` compares the two curves
    given. `summarize(tracker, batches_per_epoch=...)` takes them from a `regimes.Tracker`
    and reads them as a run does: `weight_change` ("layerwise", the headline, or
    "global") picks the weight curve, and the result also holds every other reading
    (`rho_global`, `rho_layerwise`, `rho_units`, ...: `summarize_run`).

    >>> import numpy as np
    >>> t = np.arange(100)
    >>> summarize(np.exp(-t / 50), np.exp(-t / 5), batches_per_epoch=10)["rho"] > 1
    True

    Args:
        delta_w: the weight-change curve, one value per measurement (`tracker.delta_w_layerwise`
            for the headline reading, `tracker.delta_w` for the global one), or the tracker.
        delta_a: the pattern-change curve, as long (`tracker.delta_a`); not with a tracker.
        batches_per_epoch: sets the smoothing window (0.3 epoch). With curves it counts
            measurements: for a tracker built with `every=k`, pass `batches_per_epoch // k`.
            With a tracker it counts optimizer steps, and the tracker's `every` is applied.
        tau: the threshold of the stabilisation times, a fraction of each curve's range.
        weight_change: the reading of a tracker's weight change; with curves, pass the curve.

    Returns:
        A dict with `auc_w`, `auc_p`, `rho` (`auc_w / auc_p`; inf when only the pattern
        curve is flat, NaN when both are), `stabilization_w`, `stabilization_p`, `tau`,
        `window` and `steps`.
    """
    if hasattr(delta_w, "delta_w_layerwise"):  # a Tracker (duck-typed: this module loads without torch)
        return _summarize_tracker(delta_w, delta_a, batches_per_epoch, tau, weight_change or "layerwise")
    if weight_change is not None:
        raise ValueError(
            "weight_change picks a tracker's curve: pass the tracker (summarize(tracker, batches_per_epoch=...)), "
            "or pass the curve you want (tracker.delta_w_layerwise or tracker.delta_w)"
        )
    if delta_a is None or batches_per_epoch is None:
        raise ValueError("summarize needs delta_w, delta_a and batches_per_epoch (or a tracker and batches_per_epoch)")
    delta_w = _as_curve(delta_w, "delta_w")
    delta_a = _as_curve(delta_a, "delta_a")
    if delta_w.shape != delta_a.shape:
        raise ValueError(f"delta_w and delta_a must have the same length, got {delta_w.size} and {delta_a.size}")
    if delta_w.size == 0:
        raise ValueError("summarize needs at least one recorded step; call tracker.step() after optimizer.step()")
    window = min(smoothing_window(batches_per_epoch), delta_w.size)
    w_hat = robust_minmax(sma(delta_w, window))
    a_hat = robust_minmax(sma(delta_a, window))
    auc_w, auc_p = auc(w_hat), auc(a_hat)
    if auc_p > 0:
        rho = auc_w / auc_p
    elif auc_w > 0:
        rho = math.inf
    else:
        rho = math.nan  # both curves flat: no evidence either way
    return {
        "auc_w": auc_w,
        "auc_p": auc_p,
        "rho": rho,
        "stabilization_w": stabilization(w_hat, tau),
        "stabilization_p": stabilization(a_hat, tau),
        "tau": tau,
        "window": window,
        "steps": int(delta_w.size),
    }


WEIGHT_CHANGES = ("layerwise", "global")
PATTERN_CHANGES = ("sites", "units")  # da (mean over sites, eq. 3), da_units (pooled over units)
READING_CURVES = {"global": "dw", "layerwise": "dw_layerwise", "sites": "da", "units": "da_units"}


def _summarize_tracker(tracker, delta_a, batches_per_epoch, tau: float, weight_change: str) -> dict:
    if weight_change not in WEIGHT_CHANGES:
        raise ValueError(f"weight_change must be one of {', '.join(WEIGHT_CHANGES)}, got {weight_change!r}")
    if batches_per_epoch is None and isinstance(delta_a, numbers.Integral) and not isinstance(delta_a, bool):
        delta_a, batches_per_epoch = None, delta_a  # summarize(tracker, batches_per_epoch)
    if delta_a is not None:
        raise ValueError(
            "with a tracker, summarize reads delta_a from it: call summarize(tracker, batches_per_epoch=...)"
        )
    if batches_per_epoch is None:
        raise ValueError("summarize(tracker, ...) needs batches_per_epoch: the optimizer steps in one epoch")
    measurements = measurements_per_epoch(batches_per_epoch, getattr(tracker, "every", 1))  # the run's rule
    curves = {
        "dw": tracker.delta_w,
        "dw_layerwise": tracker.delta_w_layerwise,
        "da": tracker.delta_a,
        "da_units": tracker.delta_a_units,
    }
    if len(curves["da"]) == 0:
        raise ValueError("summarize needs at least one recorded step; call tracker.step() after optimizer.step()")
    return summarize_run(curves, measurements, weight_change, tau)


def summarize_run(curves: dict, batches_per_epoch: int, weight_change: str = "layerwise", tau: float = 0.1) -> dict:
    """A run's headline numbers under the four readings (docs/method.md, SPEC "The four readings").

    `curves` holds `dw` (eq. 2), `dw_layerwise` (the mean of per-tensor means), `da` (the
    mean over sites, eq. 3) and optionally `da_units` (pooled over units). Returns
    `summarize`'s keys for the `weight_change` reading with `da` (the headline), plus
    `rho_global` and `rho_layerwise`, and the readings with `da_units`: `rho_units` (the
    headline's weight change), `rho_global_units`, `rho_layerwise_units`, each weight
    change's `auc_w_<w>` and `stabilization_w_<w>`, and `auc_p_units`, `stabilization_p_units`.
    Without a `da_units` curve as long as `da` (a run recorded before it), the pooled
    readings are None. Empty curves give {}.
    """
    if weight_change not in WEIGHT_CHANGES:
        raise ValueError(f"weight_change must be one of {', '.join(WEIGHT_CHANGES)}, got {weight_change!r}")
    if len(curves["da"]) == 0:
        return {}
    readings = {
        "global": summarize(curves["dw"], curves["da"], batches_per_epoch, tau),
        "layerwise": summarize(curves["dw_layerwise"], curves["da"], batches_per_epoch, tau),
    }
    out = {
        **readings[weight_change],
        "rho_global": readings["global"]["rho"],
        "rho_layerwise": readings["layerwise"]["rho"],
    }
    for w in WEIGHT_CHANGES:
        out[f"auc_w_{w}"] = readings[w]["auc_w"]
        out[f"stabilization_w_{w}"] = readings[w]["stabilization_w"]
    units = curves.get("da_units")
    pooled = units is not None and len(units) == len(curves["da"])
    for w in WEIGHT_CHANGES:
        reading = summarize(curves[READING_CURVES[w]], units, batches_per_epoch, tau) if pooled else {}
        out[f"rho_{w}_units"] = reading.get("rho")
        if w == weight_change:
            out["rho_units"] = reading.get("rho")
            out["auc_p_units"] = reading.get("auc_p")
            out["stabilization_p_units"] = reading.get("stabilization_p")
    return out


def four_readings(curves: dict, batches_per_epoch: int, tau: float = 0.1) -> dict:
    """rho, AUCs and t_tau under each of the four readings, keyed `(weight change, pattern change)`
    (`("layerwise", "sites")` is the study's headline); a reading whose curve is missing is left out."""
    out = {}
    for w in WEIGHT_CHANGES:
        for p in PATTERN_CHANGES:
            dw, da = curves.get(READING_CURVES[w]), curves.get(READING_CURVES[p])
            if dw is not None and da is not None and len(dw) == len(da) and len(da):
                out[(w, p)] = summarize(dw, da, batches_per_epoch, tau)
    return out
