"""The online detector (SPEC section 6) against slow references.

The reference recomputes, from scratch on every prefix, what the offline analysis
(`regimes.analysis`) says of it, and applies the claim rule of `regimes.detect`'s
docstring with plain numpy. The detector must give the same answer after every step.
"""

from __future__ import annotations

import inspect
import itertools
import math
import subprocess
import sys

import numpy as np
import pytest

from regimes import analysis
from regimes.detect import (
    FLAT_RELATIVE,
    RegimeChangeDetector,
    RegimeEvent,
    SettleDetector,
    _RunningPercentile,
    offline_settle_step,
    settle_history,
)

# The claim rule's defaults, spelled out so that changing them is a visible decision.
RULE = {"confirm_epochs": 2.0, "confirm_fraction": 0.25, "max_quiet_before": 0.5, "max_drift": 1.0, "max_level": 0.3}


def test_the_reference_uses_the_detectors_defaults():
    parameters = inspect.signature(SettleDetector).parameters
    assert {name: parameters[name].default for name in RULE} == RULE
    assert parameters["tau"].default == 0.1


# ---------------------------------------------------------------- slow reference


def slow_answer(prefix, bpe, tau, claimed_before, rule=RULE):
    """The detector's answer after len(prefix) updates, from the offline analysis of the prefix."""
    n, k = len(prefix), analysis.smoothing_window(bpe)
    if n < k or not np.all(np.isfinite(prefix)):
        return None
    s = analysis.sma(prefix, k)
    lo, hi = np.percentile(s, [0.5, 99.5])
    flat = hi - lo <= FLAT_RELATIVE * max(abs(lo), abs(hi))
    x_hat = np.zeros_like(s) if flat else analysis.robust_minmax(s)
    i = round(analysis.stabilization(x_hat, tau) * len(x_hat))  # first index of the final run below tau
    if i == len(x_hat):
        return None
    step = i + k
    if claimed_before:
        return step
    needed = max(10, math.ceil(rule["confirm_epochs"] * bpe), math.ceil(rule["confirm_fraction"] * n))
    if len(s) - i < needed:
        return None
    if flat:
        return step
    span = hi - lo
    quiet = np.count_nonzero((prefix[:i] - lo) / span < tau)
    half = min(needed, len(s) - i) // 2
    if half:
        later, earlier = float(np.mean(s[len(s) - half :])), float(np.mean(s[len(s) - 2 * half : len(s) - half]))
        level, drift = (later - lo) / span, (earlier - later) / span * n / half
    else:
        level, drift = (s[-1] - lo) / span, 0.0
    if quiet < rule["max_quiet_before"] * i and level < rule["max_level"] * tau and drift <= rule["max_drift"] * tau:
        return step
    return None


def slow_history(x, bpe, tau=0.1, rule=RULE):
    """The answers after each value. A non-finite value is a step with no answer, after which
    the curve starts over (issue 18: one bad value does not silence the detector for good):
    each answer is the offline rule on the values since the last non-finite one, in steps of
    the whole curve."""
    answers, start = [], 0
    for n in range(1, len(x) + 1):
        if not math.isfinite(x[n - 1]):
            answers.append(None)
            start = n
            continue
        claimed = bool(answers) and answers[-1] is not None
        answer = slow_answer(np.asarray(x[start:n], dtype=float), bpe, tau, claimed, rule)
        answers.append(None if answer is None else start + answer)
    return answers


# ---------------------------------------------------------------- synthetic curves


def exp_decay(rng, bpe, epochs, decay_epochs, noise=0.01, floor=0.2):
    t = np.arange(epochs * bpe, dtype=float)
    return floor + np.exp(-t / (decay_epochs * bpe)) + rng.normal(0, noise, t.size)


def step_drop(rng, bpe, epochs, drop_epoch, noise=0.01):
    t = np.arange(epochs * bpe)
    return np.where(t < drop_epoch * bpe, 1.0, 0.02) + rng.normal(0, noise, t.size)


def ramp(rng, bpe, epochs, end_epoch, noise=0.01):
    t = np.arange(epochs * bpe, dtype=float)
    return 0.1 + np.clip(1 - t / (end_epoch * bpe), 0, None) + rng.normal(0, noise, t.size)


def curves_for_the_reference():
    rng = np.random.default_rng(0)
    c = {}
    for bpe in (1, 3, 5, 15, 23):
        c[f"exp bpe={bpe}"] = exp_decay(rng, bpe, max(20, 300 // bpe), 1.5)
    c["exp noisy"] = exp_decay(rng, 15, 20, 2.0, noise=0.08)
    c["step"] = step_drop(rng, 15, 20, 4)
    c["ramp"] = ramp(rng, 15, 20, 6)
    c["power law"] = (1 + np.arange(300) / 10.0) ** -1 + rng.normal(0, 0.005, 300)
    c["rise then decay"] = np.concatenate([np.linspace(0.1, 1, 60), 0.1 + 0.9 * np.exp(-np.arange(240) / 20)])
    c["settles then rises"] = np.concatenate([exp_decay(rng, 15, 16, 1.0), 1.5 + rng.normal(0, 0.01, 60)])
    c["normal noise"] = 1 + rng.normal(0, 0.1, 300)
    c["pareto noise"] = rng.pareto(1.5, 300) + 1
    c["poisson counts (ties)"] = rng.poisson(3, 300).astype(float)
    c["zeros"] = np.zeros(200)
    c["constant 0.3"] = np.full(200, 0.3)
    c["constant 7.7"] = np.full(200, 7.7)
    c["constant then drop"] = np.concatenate([np.full(60, 0.3), np.full(140, 0.01)])
    with_nan = exp_decay(rng, 15, 20, 1.0)
    with_nan[200] = np.nan
    c["nan late"] = with_nan
    with_inf = exp_decay(rng, 15, 20, 1.0)
    with_inf[40] = np.inf
    c["inf early"] = with_inf
    return c


REFERENCE_CURVES = curves_for_the_reference()


# ---------------------------------------------------------------- the tests


def test_detect_imports_no_torch():
    """detect (and the analysis it builds on) load and run with torch made unimportable."""
    src = str(__import__("pathlib").Path(analysis.__file__).parent)
    code = (
        "import sys, types; sys.modules['torch'] = None;"
        f"pkg = types.ModuleType('regimes'); pkg.__path__ = [{src!r}]; sys.modules['regimes'] = pkg;"
        "from regimes.detect import RegimeChangeDetector;"
        "d = RegimeChangeDetector(1);"
        "[d.update(v, 0.0) for v in [1.0] * 3 + [0.0] * 20];"
        "print(d.settled_w, d.settled_p)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["4", "1"]


@pytest.mark.parametrize("q", [0.005, 0.5, 0.995])
@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_running_percentile_is_numpys_bit_for_bit(q, kind):
    rng = np.random.default_rng(1)
    values = rng.normal(size=500) if kind == "normal" else rng.integers(0, 4, 500).astype(float)
    running = _RunningPercentile(q)
    for n, v in enumerate(values, start=1):
        running.add(float(v))
        assert running.value() == np.percentile(values[:n], 100 * q), n


@pytest.mark.parametrize("name", list(REFERENCE_CURVES))
def test_online_answer_equals_the_offline_rule_on_every_prefix(name):
    x = REFERENCE_CURVES[name]
    bpe = int(name.split("bpe=")[1]) if "bpe=" in name else 15
    assert settle_history(x, bpe) == slow_history(x, bpe)


def test_the_reference_curves_exercise_claims_moves_and_withdrawals():
    """Guard against a vacuous reference test: the curves above reach every kind of answer."""
    kinds = set()
    for x in REFERENCE_CURVES.values():
        detector = RegimeChangeDetector(15)
        for v in x:
            detector.update(v, v)
        kinds |= {e.kind for e in detector.events}
    assert kinds == {"settled", "moved", "withdrawn"}


@pytest.mark.parametrize("tau", [0.05, 0.2, 0.5])
def test_other_taus_against_the_reference(tau):
    x = REFERENCE_CURVES["exp noisy"]
    assert settle_history(x, 15, tau=tau) == slow_history(x, 15, tau=tau)


def test_no_look_ahead():
    """The answers after n updates depend on the first n values only."""
    rng = np.random.default_rng(2)
    x = exp_decay(rng, 15, 24, 1.5)
    full = settle_history(x, 15)
    assert any(a is not None for a in full)
    for n in (10, 80, 150, 250, 359):
        assert settle_history(x[:n], 15) == full[:n]
        # another future, same past: the same answers up to n
        other = np.concatenate([x[:n], 5 + rng.normal(0, 1, 100)])
        assert settle_history(other, 15)[:n] == full[:n]

    def events(values):
        detector = RegimeChangeDetector(15)
        return [detector.update(w, w / 2) for w in values]

    assert events(x[:200]) == events(x)[:200]


def test_final_answer_is_the_offline_t_tau():
    """When a claim stands at the end, it is the offline settle step, and that step is summarize's t_tau."""
    rng = np.random.default_rng(3)
    for decay in (0.5, 1.0, 2.0, 3.0):
        x = exp_decay(rng, 23, 25, decay)
        k = analysis.smoothing_window(23)
        final = settle_history(x, 23)[-1]
        assert final is not None and final == offline_settle_step(x, 23)
        t_tau = analysis.summarize(x, x, 23)["stabilization_w"]
        assert (final - k) / (x.size - k + 1) == pytest.approx(t_tau)


# Known decay times. An exponential floor + exp(-t / T) is within tau of its height at
# T ln(1 / tau); a step drop at the drop; a ramp to 0 over E epochs at 0.9 E.
KNOWN = [
    *[("exp", d, noise, seed) for d in (0.5, 1.0, 2.0, 4.0) for noise in (0.005, 0.02) for seed in range(3)],
    *[("step", e, 0.01, seed) for e in (1, 4, 10) for seed in range(3)],
    *[("ramp", e, 0.01, seed) for e in (2, 6, 12) for seed in range(3)],
]
# The bounds, in epochs, measured over these cases with margin (benchmarks/detect.py
# gives the distribution over random curves): the first claim vs the known time...
ERROR_BOUND_EPOCHS = {"exp": 1.25, "step": 0.5, "ramp": 0.5}
OFFLINE_BOUND_EPOCHS = 2.0  # ...and vs the offline t_tau of the whole curve.
# The claim waits for the evidence: about twice the decay time for slow decays
# (confirm_fraction and the drift condition), two epochs (confirm_epochs) for fast ones.
DELAY_FACTOR, DELAY_EPOCHS = 2.25, 2.0


@pytest.mark.parametrize("bpe", [15, 63])
@pytest.mark.parametrize("shape, when, noise, seed", KNOWN)
def test_detection_error_is_bounded_on_known_decays(shape, when, noise, seed, bpe):
    """The first claim lands near the known decay time and the offline t_tau, is made within
    DELAY_FACTOR * known + DELAY_EPOCHS, and the answer at the end is the offline t_tau."""
    rng = np.random.default_rng(seed)
    epochs = 30
    if shape == "exp":
        x, known = exp_decay(rng, bpe, epochs, when, noise), when * bpe * math.log(10)
    elif shape == "step":
        x, known = step_drop(rng, bpe, epochs, when, noise), when * bpe
    else:
        x, known = ramp(rng, bpe, epochs, when, noise), 0.9 * when * bpe
    offline = offline_settle_step(x, bpe)
    detector = RegimeChangeDetector(bpe)
    for v in x:
        detector.update(v, v)
    first, claimed_at = detector.first_settled_w
    assert abs(first - known) / bpe <= ERROR_BOUND_EPOCHS[shape]
    assert abs(first - offline) / bpe <= OFFLINE_BOUND_EPOCHS
    assert claimed_at <= DELAY_FACTOR * known + DELAY_EPOCHS * bpe
    assert detector.settled_w == offline


def stationary(kind, rng, size, bpe):
    if kind == "normal":
        return 1 + rng.normal(0, 0.1, size)
    if kind == "exponential":
        return rng.exponential(1.0, size)
    if kind == "lognormal":
        return rng.lognormal(0.0, 1.0, size)
    if kind == "pareto":  # infinite variance
        return rng.pareto(1.5, size) + 1
    if kind == "uniform":
        return rng.uniform(0, 1, size)
    if kind == "student-t":
        return 5 + rng.standard_t(2, size)
    if kind == "binomial flips":  # da: 13 probe samples x 192 units flipping at a steady rate
        return rng.binomial(13 * 192, 0.002, size) / (13 * 192)
    if kind == "poisson flips":
        return rng.poisson(2.0, size) / 1000
    if kind == "ar1":  # a level that wanders, correlation time half an epoch
        phi = math.exp(-1 / (0.5 * bpe))
        e = rng.normal(0, math.sqrt(1 - phi**2), size)
        out = np.empty(size)
        out[0] = e[0]
        for i in range(1, size):
            out[i] = phi * out[i - 1] + e[i]
        return 2 + 0.3 * out
    raise ValueError(kind)


NOISE = [
    "normal",
    "exponential",
    "lognormal",
    "pareto",
    "uniform",
    "student-t",
    "binomial flips",
    "poisson flips",
    "ar1",
]


@pytest.mark.parametrize("kind", NOISE)
def test_stationary_noise_never_settles(kind):
    """Not at the end, and not for a single step along the way."""
    for seed, (bpe, epochs) in enumerate([(1, 2000), (5, 600), (15, 200), (23, 150), (63, 60)]):
        rng = np.random.default_rng(100 + seed)
        x = stationary(kind, rng, bpe * epochs, bpe)
        detector = RegimeChangeDetector(bpe)
        for v in x:
            assert detector.update(v, v) == ()
        assert detector.settled_w is None and detector.settled_p is None and detector.events == []


@pytest.mark.parametrize("value", [0.0, 0.3, 7.7, 1e-12])
def test_a_constant_curve_settles_at_its_first_window(value):
    """Nothing moves: settled from step k, claimed once the confirmation span has passed."""
    bpe = 15
    k, needed = analysis.smoothing_window(bpe), 2 * bpe
    detector = RegimeChangeDetector(bpe)
    events = [detector.update(value, value) for _ in range(100)]
    assert detector.settled_w == detector.settled_p == k
    claimed_at = k + needed - 1  # the run holds steps k .. claimed_at
    assert events[claimed_at - 1] == (
        RegimeEvent("w", "settled", k, None, claimed_at),
        RegimeEvent("p", "settled", k, None, claimed_at),
    )
    assert all(e == () for i, e in enumerate(events) if i != claimed_at - 1)
    assert detector.state()["p"]["flat"]


def test_too_short_a_curve_says_nothing():
    detector = RegimeChangeDetector(100)  # k = 30
    for _ in range(29):
        assert detector.update(1.0, 0.0) == ()
    state = detector.state()["w"]
    assert detector.settled_w is None and math.isnan(state["lo"]) and state["run_start"] is None


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_value_unsettles_that_curve_for_good(bad):
    rng = np.random.default_rng(4)
    x = exp_decay(rng, 15, 20, 1.0)
    detector = RegimeChangeDetector(15)
    for v in x[:250]:
        detector.update(v, v)
    settled = detector.settled_w
    assert settled is not None and detector.settled_p == settled
    assert detector.update(bad, x[250]) == (RegimeEvent("w", "withdrawn", None, settled, 251),)
    for v in x[251:]:
        detector.update(v, v)
    assert detector.settled_w is None and detector.settled_p is not None  # the other curve goes on
    assert detector.state()["w"]["nonfinite_at"] == 251 and detector.state()["p"]["nonfinite_at"] is None


def test_a_nan_from_the_start_does_not_silence_the_curve_for_good():
    # Issue 18: this test said `settled_w is None` (the NaN poisoned the curve for good); the
    # curve now starts over after it, counting the NaN's step.
    detector = RegimeChangeDetector(5)
    detector.update(math.nan, 1.0)
    for _ in range(200):
        detector.update(0.0, 0.0)
    assert detector.settled_w == 1 + offline_settle_step([0.0] * 200, 5)
    assert detector.settled_p == offline_settle_step([1.0] + [0.0] * 200, 5) is not None
    assert detector.state()["w"]["nonfinite_at"] == 1


def test_an_inf_then_a_new_decay_settles_again():
    rng = np.random.default_rng(7)
    x = np.concatenate([exp_decay(rng, 15, 20, 1.0), [math.inf], exp_decay(rng, 15, 20, 1.0)])
    detector = RegimeChangeDetector(15)
    for v in x:
        detector.update(v, v)
    assert detector.settled_w is not None and detector.settled_w > 301
    assert detector.settled_w == 301 + offline_settle_step(x[301:], 15)


@pytest.mark.parametrize("bpe", [2.5, True, "15", None, float("nan")])  # 0 and negatives: refused before too
def test_batches_per_epoch_must_be_a_whole_number(bpe):
    with pytest.raises(ValueError, match="batches_per_epoch"):
        RegimeChangeDetector(bpe)
    with pytest.raises(ValueError, match="batches_per_epoch"):
        SettleDetector(bpe)


@pytest.mark.parametrize("value", [True, "0.5"])
def test_update_takes_numbers_only(value):
    with pytest.raises(ValueError, match="real number"):
        RegimeChangeDetector(5).update(value, 0.1)


def test_events_settle_then_withdraw_when_the_curve_rises():
    rng = np.random.default_rng(5)
    x = np.concatenate([exp_decay(rng, 15, 16, 1.0), 1.5 + rng.normal(0, 0.01, 60)])
    detector = RegimeChangeDetector(15)
    returned = []
    for v in x:
        returned.extend(detector.update(v, 1.0))  # a flat pattern curve settles too
    assert returned == detector.events
    w = [e for e in detector.events if e.curve == "w"]
    assert w[0].kind == "settled" and w[0].previous is None
    assert w[-1].kind == "withdrawn" and w[-1].step is None and w[-1].at > 240
    assert detector.settled_w is None
    assert detector.first_settled_w == (w[0].step, w[0].at)  # the first claim is kept
    for before, after in itertools.pairwise(w):  # a consistent chain of beliefs
        assert after.previous == before.step and after.at > before.at


def test_state_explains_a_claim():
    rng = np.random.default_rng(6)
    x = exp_decay(rng, 15, 20, 1.0)
    detector = SettleDetector(15)
    for v in x:
        if detector.update(v) is not None:
            break
    s = detector.state()
    assert s["settled"] == s["run_start"] == detector.settled
    assert s["run_length"] >= s["confirm_steps"] == max(30, math.ceil(0.25 * s["steps"]))
    assert s["quiet_before"] < 0.5 * s["before_run"]
    assert s["level"] < 0.3 * s["tau"] and s["drift"] <= s["tau"]
    assert s["threshold"] == pytest.approx(s["lo"] + s["tau"] * (s["hi"] - s["lo"]))
    assert s["normalized"] < s["tau"]
    sma = analysis.sma(x[: s["steps"]], analysis.smoothing_window(15))
    assert (s["lo"], s["hi"]) == tuple(np.percentile(sma, [0.5, 99.5]))


def test_takes_numpy_scalars_and_zero_dimensional_arrays():
    a, b = RegimeChangeDetector(3), RegimeChangeDetector(3)
    for v in np.linspace(1, 0, 50):
        a.update(float(v), float(v))
        b.update(np.float32(v), np.array(v))
    assert (a.settled_w, a.settled_p) == (b.settled_w, b.settled_p)


def test_reset_starts_over():
    rng = np.random.default_rng(7)
    x = exp_decay(rng, 15, 20, 1.0)
    detector = RegimeChangeDetector(15)
    for v in x:
        detector.update(v, v)
    first = (detector.settled_w, list(detector.events))
    detector.reset()
    assert detector.steps == 0 and detector.events == [] and detector.first_settled_w is None
    for v in x:
        detector.update(v, v)
    assert (detector.settled_w, detector.events) == first


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batches_per_epoch": 0}, "batches_per_epoch"),
        ({"batches_per_epoch": 10, "tau": 0.0}, "tau"),
        ({"batches_per_epoch": 10, "tau": 1.5}, "tau"),
        ({"batches_per_epoch": 10, "confirm_fraction": 1.0}, "confirm_fraction"),
        ({"batches_per_epoch": 10, "max_level": 0.0}, "max_level"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RegimeChangeDetector(**kwargs)


def test_offline_settle_step():
    k = analysis.smoothing_window(10)  # 3
    x = np.array([1.0] * 10 + [0.0] * 20)
    # smoothed index 10 is the first window of zeros only: steps 11 .. 13, so step 13
    assert offline_settle_step(x, 10) == 10 + k
    assert offline_settle_step(np.r_[x, 1.0], 10) is None  # ends above: never settled
    assert offline_settle_step([1.0, 0.0], 10) is None  # shorter than one window
