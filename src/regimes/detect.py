"""Online regime-change detection (SPEC section 6). NumPy only: no torch here.

The offline stabilisation time `t_tau` (SPEC section 2) asks of a finished curve:
from which point on does its smoothed, robustly normalised form stay below `tau`?
`RegimeChangeDetector` answers the same question during training, one measured step
at a time, never looking ahead: the answer after `n` updates depends on the first
`n` values only.

Steps are update counts, 1-based: step `s` is the `s`-th call of `update` (iteration
`s` of a run whose tracker recorded iteration 0 at construction). Smoothed value `i`
(0-based) is the trailing mean of steps `i + 1 .. i + k`, with the study's window
`k = smoothing_window(batches_per_epoch)`; it belongs to step `i + k`, the step its
window ends at. The offline `t_tau = i / len(x_hat)` is therefore step `i + k`
(`offline_settle_step`).

The rule, for each curve (dw and da alike):

1. Candidate. After `n` updates the detector holds exactly what the offline analysis
   computes on the first `n` values: the moving average and its robust range `lo, hi`
   (the 0.5th and 99.5th percentiles of the smoothed values so far, numpy's linear
   interpolation, kept bit-identical by two pairs of heaps). The candidate is the
   offline settle step of that prefix: where the final run of smoothed values below
   `tau` of the range begins. None while the latest smoothed value is at or above.
2. Claim. "For good" cannot be seen online, so while no claim stands, a candidate
   is claimed only when all four hold (fractions are of the range `hi - lo`):
   - it lasted: the run is at least `confirm(n) = max(10, confirm_epochs *
     batches_per_epoch, confirm_fraction * n)` steps long (rounded up). The part
     that grows with `n` is what keeps stationary noise from ever settling: its
     quiet stretches grow like `log n`, not like `n`;
   - it came down: fewer than `max_quiet_before` (half) of the raw values before the
     run were below `tau`. A curve that was mostly quiet already and merely stopped
     spiking (heavy-tailed noise, whose offline `t_tau` is the time of its last
     spike) has not changed regime;
   - it sits deep: the mean of the later half of the last `confirm(n)` steps is
     below `max_level * tau` (0.3 tau): well inside the band, not noise hugging
     its edge;
   - it has stopped falling: the decline from the earlier to the later half, per
     step, carried on for as many steps again as have passed, stays within
     `max_drift * tau` (one band). A curve still sliding down (a power law, an
     exponential short of its floor) would drag `lo` down and leave the band.
3. A claim stands while the curve stays below `tau` (it moves with the start of the
   run if the range changes) and is withdrawn, back to None, when the latest
   smoothed value is at or above `tau` of the range again: `settled_*` is the
   current belief, not a latch. Each change is a `RegimeEvent` ("settled", "moved",
   "withdrawn"), returned by `update` and kept in `events`; the first claim ever is
   kept too (`first_settled_*`), for a runner that acts once.

So `settled(n) = candidate(n)` if a candidate exists and either `settled(n - 1)` is
not None or the four conditions hold at `n`; else None. The tests recompute exactly
this from scratch with `regimes.analysis` on every prefix. Whenever a claim stands
at the end of a run, it equals the offline `t_tau` of the whole curve.

The defaults (2 epochs, 0.25, 0.5, 0.3, 1) come from `benchmarks/detect.py`. On its
synthetic families (500 curves each): of 4000 curves of stationary noise (normal,
exponential, lognormal, Pareto, uniform, binomial and Poisson flips, AR(1)), one was
ever claimed, for one step (a Pareto curve whose very first value was a spike,
which no rule can tell from a decay within one step); on exponential decays with up
to 5% noise, the first claim fell within 1.2 epochs of the known decay time in 9
cases out of 10, and was made about twice the decay time after the start.

Degenerate input:
- A flat curve (its range within `1e-9` of its magnitude: the rounding the
  cumulative-sum moving average leaves on a constant) normalises to all zeros, as
  `robust_minmax` does for an exactly flat one, so it settles at step `k` once
  `confirm(n)` steps have passed: a curve of zeros has settled, nothing moves. (The
  offline analysis does not forgive that rounding: `summarize` on a constant curve
  can give any t_tau.)
- A non-finite value (NaN, inf: a diverged step) is skipped, not refused: it counts as a
  step and has no answer (any claim is withdrawn), and the curve starts over after it:
  the answers are then the rule above on the values since the last non-finite one, in
  steps of the whole run. One bad value never silences the detector for good;
  `state()["nonfinite_at"]` says the last such step. The other curve is unaffected.
  `batches_per_epoch` is a whole number >= 1 (2.5, True or a string is a ValueError),
  and so is every update a real number.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from regimes.analysis import normalized_curve, smoothing_window, stabilization
from regimes.errors import UsageError

__all__ = [
    "RegimeChangeDetector",
    "RegimeEvent",
    "SettleDetector",
    "offline_settle_step",
    "settle_history",
]

CURVES = ("w", "p")  # weight change (dw), pattern change (da)
FLAT_RELATIVE = 1e-9  # a range this small against the curve's magnitude is rounding, not change
MIN_CONFIRM_STEPS = 10  # with a batch or two an epoch, two epochs are no evidence


@dataclass(frozen=True)
class RegimeEvent:
    """A change in what the detector says about one curve.

    curve: "w" (weight change) or "p" (pattern change).
    kind: "settled" (None -> a step), "moved" (one step -> another, the range
      estimate changed) or "withdrawn" (a step -> None, the curve rose again).
    step: the settle step now claimed (None when withdrawn).
    previous: the settle step claimed before (None when newly settled).
    at: the update (1-based) after which the change happened.
    """

    curve: str
    kind: str
    step: int | None
    previous: int | None
    at: int


def _virtual_index(n: int, q: float) -> float:
    # numpy's "linear" method (Hyndman & Fan 7), computed as numpy does, so that the
    # running percentile is bit-identical to np.percentile on the same values.
    return (n - 1) * q


def _lerp(a: float, b: float, t: float) -> float:
    # numpy's _lerp: interpolate from the nearer end.
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


class _RunningPercentile:
    """np.percentile(values, 100 * q) of a growing list of finite values, O(log n) per add.

    `_low` (a max-heap, negated) holds the smallest `r` values and `_high` (a min-heap)
    the rest, with `r` chosen so that the two order statistics numpy interpolates
    between are the top of each heap.
    """

    def __init__(self, q: float):
        self.q = q
        self._low: list[float] = []
        self._high: list[float] = []

    def add(self, value: float) -> None:
        if self._low and value <= -self._low[0]:
            heapq.heappush(self._low, -value)
        else:
            heapq.heappush(self._high, value)
        n = len(self._low) + len(self._high)
        wanted = min(math.floor(_virtual_index(n, self.q)), n - 1) + 1  # the lower neighbour is the r-th smallest
        while len(self._low) > wanted:
            heapq.heappush(self._high, -heapq.heappop(self._low))
        while len(self._low) < wanted:
            heapq.heappush(self._low, -heapq.heappop(self._high))

    def value(self) -> float:
        if not self._low:
            return math.nan
        v = _virtual_index(len(self._low) + len(self._high), self.q)
        below = -self._low[0]
        above = self._high[0] if self._high else below  # past the last value numpy takes the last twice
        return _lerp(below, above, v - math.floor(v))


class _Growing:
    """A float64 array that grows by appending, in amortised O(1)."""

    def __init__(self):
        self._data = np.empty(256)
        self.size = 0

    def append(self, value: float) -> None:
        if self.size == self._data.size:
            self._data = np.concatenate([self._data, np.empty(self._data.size)])
        self._data[self.size] = value
        self.size += 1

    def view(self) -> np.ndarray:
        return self._data[: self.size]


class SettleDetector:
    """The online settle step of one curve; `RegimeChangeDetector` runs two of these.

    `update(x)` takes the next value and returns `settled`: the 1-based update count
    `s` whose trailing mean (of updates `s - k + 1 .. s`) begins the run of smoothed
    values below `tau` of the range, once that run is claimed (see the module
    docstring for the conditions); else None.
    """

    def __init__(
        self,
        batches_per_epoch: int,
        tau: float = 0.1,
        *,
        confirm_epochs: float = 2.0,
        confirm_fraction: float = 0.25,
        max_quiet_before: float = 0.5,
        max_drift: float = 1.0,
        max_level: float = 0.3,
    ):
        if not 0 < tau <= 1:
            raise UsageError(f"tau must be in (0, 1], got {tau}")
        if confirm_epochs < 0 or not 0 <= confirm_fraction < 1:
            raise UsageError(
                f"confirm_epochs must be >= 0 and confirm_fraction in [0, 1), got "
                f"{confirm_epochs} and {confirm_fraction}"
            )
        if not 0 < max_quiet_before <= 1 or max_drift < 0 or not 0 < max_level <= 1:
            raise UsageError(
                f"max_quiet_before must be in (0, 1], max_drift >= 0 and max_level in (0, 1], got "
                f"{max_quiet_before}, {max_drift} and {max_level}"
            )
        self.batches_per_epoch = check_batches_per_epoch(batches_per_epoch)
        self.window = smoothing_window(self.batches_per_epoch)
        self.tau = float(tau)
        self.confirm_epochs = float(confirm_epochs)
        self.confirm_fraction = float(confirm_fraction)
        self.max_quiet_before = float(max_quiet_before)
        self.max_drift = float(max_drift)
        self.max_level = float(max_level)
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.nonfinite_at: int | None = None
        self._start_over()

    def _start_over(self) -> None:
        """Forget the curve's values (not the step count): it begins again after step `self.steps`."""
        self._offset = self.steps  # the update count before the curve's current stretch of finite values
        self.settled: int | None = None
        self._total = 0.0  # running sum, added in order: np.cumsum's arithmetic
        self._sums = deque([0.0], maxlen=self.window + 1)
        self._raw = _Growing()
        self._smoothed = _Growing()
        self._lo = _RunningPercentile(0.5 / 100)
        self._hi = _RunningPercentile(99.5 / 100)
        # Suffix maxima of the smoothed curve: indices and values, values strictly
        # decreasing. The last smoothed index at or above any threshold is on it.
        self._peak_index: list[int] = []
        self._peak_value: list[float] = []
        self._run_start: int | None = None  # smoothed index; None: the last value is not below

    def confirm_steps(self, n: int | None = None) -> int:
        """Steps a run below tau must have lasted after `n` updates (default: now) to be claimed."""
        n = self.steps - self._offset if n is None else n
        return max(
            MIN_CONFIRM_STEPS,
            math.ceil(self.confirm_epochs * self.batches_per_epoch),
            math.ceil(self.confirm_fraction * n),
        )

    def update(self, value) -> int | None:
        """Take the next value (a real number: a bool or a string is a ValueError).

        A NaN or infinite value (a diverged step) is skipped, not refused: it counts as a
        step, withdraws any claim, and the curve starts over after it (settle steps keep
        counting every update), so one bad value never silences the detector for good.
        `nonfinite_at` is the last such step."""
        if isinstance(value, (bool, np.bool_, str, bytes)):
            raise UsageError(f"update takes a real number, got {value!r}")
        x = float(value)
        self.steps += 1
        if not math.isfinite(x):
            self.nonfinite_at = self.steps
            self._start_over()
            return None
        self._raw.append(x)
        self._total += x
        self._sums.append(self._total)
        if self.steps - self._offset >= self.window:
            self._add_smoothed((self._sums[-1] - self._sums[0]) / self.window)
            self.settled = self._decide()
        return self.settled

    def _add_smoothed(self, s: float) -> None:
        index = self._smoothed.size
        self._smoothed.append(s)
        self._lo.add(s)
        self._hi.add(s)
        while self._peak_value and self._peak_value[-1] <= s:
            self._peak_value.pop()
            self._peak_index.pop()
        self._peak_value.append(s)
        self._peak_index.append(index)

    def _range(self) -> tuple[float, float, bool]:
        lo, hi = self._lo.value(), self._hi.value()
        flat = hi - lo <= FLAT_RELATIVE * max(abs(lo), abs(hi))
        return lo, hi, flat

    def _decide(self) -> int | None:
        lo, hi, flat = self._range()
        if flat:  # normalises to all zeros: below tau from the first smoothed value on
            self._run_start = start = 0
        else:
            self._run_start = start = self._run_start_below(lo, hi)
        if start is None:
            return None
        settle_step = self._offset + start + self.window  # smoothed index -> the update count its window ends at
        # A claim, once made, stands while the curve stays below tau (moving with the start
        # of the run if the range changes); the evidence below is needed to make one.
        if self.settled is not None:
            return settle_step
        if self._smoothed.size - start < self.confirm_steps():
            return None
        if flat:
            return settle_step
        quiet, level, drift = self._evidence(start, lo, hi)
        came_down = quiet < self.max_quiet_before * start
        deep = level < self.max_level * self.tau
        held = drift <= self.max_drift * self.tau
        return settle_step if came_down and deep and held else None

    def _run_start_below(self, lo: float, hi: float) -> int | None:
        """First smoothed index of the final run below tau (offline's rule on the prefix)."""
        span = hi - lo
        # Stack values decrease upwards, so "at or above tau" holds on a bottom segment.
        first, last = 0, len(self._peak_value)
        while first < last:
            middle = (first + last) // 2
            if (self._peak_value[middle] - lo) / span >= self.tau:  # = clip(...) >= tau, as 0 < tau <= 1
                first = middle + 1
            else:
                last = middle
        if first == 0:
            return 0
        start = self._peak_index[first - 1] + 1
        return start if start < self._smoothed.size else None

    def _evidence(self, start: int, lo: float, hi: float) -> tuple[int, float, float]:
        """(quiet, level, drift) for a run starting at smoothed index `start`, in units of the range.

        quiet: how many of the `start` raw values before the run's first window are below
        tau. Over the last `confirm_steps()` smoothed values, split in halves: level, the
        mean of the later half; drift, the mean of the earlier half minus that of the
        later one, per step, times the steps so far (the recent decline, carried on for
        as many steps again as have passed).
        """
        span = hi - lo
        quiet = int(np.count_nonzero((self._raw.view()[:start] - lo) / span < self.tau))
        smoothed = self._smoothed.view()
        n = smoothed.size
        half = min(self.confirm_steps(), n - start) // 2
        if half == 0:
            return quiet, (float(smoothed[-1]) - lo) / span, 0.0
        later = float(np.mean(smoothed[n - half :]))
        earlier = float(np.mean(smoothed[n - 2 * half : n - half]))
        return quiet, (later - lo) / span, (earlier - later) / span * (self.steps - self._offset) / half

    def state(self) -> dict:
        """What the last decision rests on, in the curve's own units and in steps."""
        lo = hi = normalized = math.nan
        flat = False
        quiet = level = drift = None
        if self._smoothed.size:
            lo, hi, flat = self._range()
            last = float(self._smoothed.view()[-1])
            normalized = 0.0 if flat else min(max((last - lo) / (hi - lo), 0.0), 1.0)
            if self._run_start is not None and not flat:
                quiet, level, drift = self._evidence(self._run_start, lo, hi)
        run_start = None if self._run_start is None else self._offset + self._run_start + self.window
        return {
            "steps": self.steps,
            "window": self.window,
            "tau": self.tau,
            "smoothed": float(self._smoothed.view()[-1]) if self._smoothed.size else math.nan,
            "lo": lo,
            "hi": hi,
            "flat": flat,
            "threshold": lo + self.tau * (hi - lo),
            "normalized": normalized,
            "run_start": run_start,
            "run_length": 0 if run_start is None else self.steps - run_start + 1,
            "confirm_steps": self.confirm_steps(),
            "before_run": 0 if self._run_start is None else self._run_start,
            "quiet_before": quiet,
            "level": level,
            "drift": drift,
            "settled": self.settled,
            "nonfinite_at": self.nonfinite_at,
        }


class RegimeChangeDetector:
    """Online settle steps of the weight change and the pattern change (SPEC section 6).

    >>> detector = RegimeChangeDetector(batches_per_epoch=15)
    >>> for dw, da in zip(delta_w, delta_a):          # doctest: +SKIP
    ...     for event in detector.update(dw, da):
    ...         callback.on_regime_change(event)
    >>> detector.settled_w, detector.settled_p        # doctest: +SKIP

    `settled_w` / `settled_p`: after `n` calls of `update`, the step `s` (1-based: the
    `s`-th call of `update`, i.e. iteration `s` of a run whose tracker recorded
    iteration 0 at construction) from which that curve's trailing-smoothed value has
    stayed below `tau` of its range, once the detector has claimed it; else None. Only
    the first `n` values are used, ever. The answer is the current belief: withdrawn
    (back to None) if the curve rises to `tau` again, moved if the range estimate
    changes. The rule, and its options (`rule`: the keyword options of
    `SettleDetector`), are in the module docstring.

    `update` returns the events of that step (usually none), each a `RegimeEvent`;
    all events so far are in `events`. `first_settled_w` / `first_settled_p` keep the
    first claim ever made, `(settle step, update at which it was claimed)`, for a
    runner that acts once (freeze="auto").
    """

    def __init__(self, batches_per_epoch: int, tau: float = 0.1, **rule):
        self.batches_per_epoch = check_batches_per_epoch(batches_per_epoch)
        self.tau = tau
        self._curves = {name: SettleDetector(batches_per_epoch, tau, **rule) for name in CURVES}
        self.events: list[RegimeEvent] = []
        self.first_settled_w: tuple[int, int] | None = None
        self.first_settled_p: tuple[int, int] | None = None

    @property
    def steps(self) -> int:
        return self._curves["w"].steps

    @property
    def settled_w(self) -> int | None:
        return self._curves["w"].settled

    @property
    def settled_p(self) -> int | None:
        return self._curves["p"].settled

    def update(self, delta_w, delta_a) -> tuple[RegimeEvent, ...]:
        """Feed one measured step (two floats); return what changed, usually ()."""
        events = []
        for name, value in zip(CURVES, (delta_w, delta_a)):
            curve = self._curves[name]
            before = curve.settled
            after = curve.update(value)
            if after == before:
                continue
            kind = "settled" if before is None else "withdrawn" if after is None else "moved"
            events.append(RegimeEvent(name, kind, after, before, curve.steps))
            first = f"first_settled_{name}"
            if after is not None and getattr(self, first) is None:
                setattr(self, first, (after, curve.steps))
        self.events.extend(events)
        return tuple(events)

    def state(self) -> dict:
        """Each curve's state (`SettleDetector.state`), keyed "w" and "p"."""
        return {name: curve.state() for name, curve in self._curves.items()}

    def reset(self) -> None:
        for curve in self._curves.values():
            curve.reset()
        self.events.clear()
        self.first_settled_w = self.first_settled_p = None


def check_batches_per_epoch(batches_per_epoch) -> int:
    """`batches_per_epoch` as an int >= 1; 2.5, True, a string, 0 or a negative number is a ValueError."""
    if isinstance(batches_per_epoch, (bool, np.bool_)) or not isinstance(batches_per_epoch, (int, np.integer)):
        raise UsageError(f"batches_per_epoch must be a whole number >= 1, got {batches_per_epoch!r}")
    if batches_per_epoch < 1:
        raise UsageError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
    return int(batches_per_epoch)


def settle_history(x, batches_per_epoch: int, tau: float = 0.1, **rule) -> list[int | None]:
    """The online answer after each of the values of `x`, fed one at a time."""
    detector = SettleDetector(batches_per_epoch, tau, **rule)
    return [detector.update(value) for value in np.asarray(x, dtype=np.float64)]


def offline_settle_step(x, batches_per_epoch: int, tau: float = 0.1) -> int | None:
    """The offline `t_tau` of a whole curve, as the update count the detector reports.

    `stabilization` gives `i / len(x_hat)`; smoothed index `i` is the trailing mean of
    updates `i + 1 .. i + k`, so the step is `i + k`. None: never settled (t_tau = 1),
    or a curve shorter than one window.
    """
    x = np.asarray(x, dtype=np.float64)
    k = smoothing_window(batches_per_epoch)
    if x.size < k:
        return None
    x_hat = normalized_curve(x, batches_per_epoch)
    index = round(stabilization(x_hat, tau) * x_hat.size)
    return None if index >= x_hat.size else index + k
