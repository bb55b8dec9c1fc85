"""SPEC section 2 against closed-form curves and slow references."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from regimes import analysis
from regimes.analysis import aggregate, auc, robust_minmax, sma, stabilization, summarize


def test_analysis_imports_no_torch():
    """The analysis loads and runs with torch made unimportable."""
    code = (
        "import sys, importlib.util; sys.modules['torch'] = None;"
        f"spec = importlib.util.spec_from_file_location('analysis', {analysis.__file__!r});"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
        "print(m.summarize([3.0, 2.0, 1.0, 1.0], [2.0, 1.0, 1.0, 1.0], 1)['rho'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    expected = summarize([3.0, 2.0, 1.0, 1.0], [2.0, 1.0, 1.0, 1.0], 1)["rho"]
    assert float(out) == pytest.approx(expected) and expected > 1


@pytest.mark.parametrize("window", [1, 2, 3, 7, 10])
def test_sma_matches_convolution(window):
    x = np.random.default_rng(0).normal(size=10)
    expected = [np.mean(x[i : i + window]) for i in range(len(x) - window + 1)]
    np.testing.assert_allclose(sma(x, window), expected, rtol=1e-12)
    assert len(sma(x, window)) == len(x) - window + 1


def test_sma_window_longer_than_curve_uses_the_whole_curve():
    np.testing.assert_allclose(sma([1.0, 2.0, 6.0], 10), [3.0])
    assert sma([], 3).size == 0
    with pytest.raises(ValueError, match="window"):
        sma([1.0], 0)


@pytest.mark.parametrize("batches, window", [(1, 1), (3, 1), (5, 2), (15, 4), (25, 8), (100, 30), (469, 141)])
def test_smoothing_window_rounds_half_to_even(batches, window):
    assert analysis.smoothing_window(batches) == window


def test_robust_minmax_on_a_linear_ramp():
    x = np.arange(201, dtype=float)  # percentiles 0.5 and 99.5 are exactly 1 and 199
    x_hat = robust_minmax(x)
    np.testing.assert_allclose(x_hat[1:200], (x[1:200] - 1) / 198)
    assert x_hat[0] == 0.0 and x_hat[-1] == 1.0
    assert auc(x_hat) == pytest.approx(0.5)  # symmetric about the middle


def test_robust_minmax_clips_outliers_and_flattens_constants():
    x = np.concatenate([np.zeros(500), np.ones(500)])
    x[0] = -100.0
    x[-1] = 100.0
    x_hat = robust_minmax(x)
    assert x_hat.min() == 0.0 and x_hat.max() == 1.0
    np.testing.assert_array_equal(x_hat[1:500], 0.0)
    np.testing.assert_array_equal(x_hat[500:-1], 1.0)
    np.testing.assert_array_equal(robust_minmax(np.full(7, 3.2)), np.zeros(7))


def test_stabilization_closed_forms():
    assert stabilization(np.array([1.0, 0.5, 0.05, 0.0])) == 0.5
    assert stabilization(np.array([0.0, 0.5, 0.05, 0.0])) == 0.5  # a late excursion resets the clock
    assert stabilization(np.array([0.0, 0.0])) == 0.0
    assert stabilization(np.array([0.0, 0.2])) == 1.0  # never settles
    assert stabilization(np.array([0.3, 0.25, 0.1]), tau=0.3) == 1 / 3
    assert stabilization(np.array([0.1, 0.1]), tau=0.1) == 1.0  # strictly below tau


def slow_stabilization(x_hat, tau):
    for i in range(len(x_hat) + 1):
        if all(v < tau for v in x_hat[i:]):
            return i / len(x_hat)


def test_stabilization_against_a_loop():
    rng = np.random.default_rng(1)
    for _ in range(50):
        x = rng.random(rng.integers(1, 30))
        assert stabilization(x, 0.3) == slow_stabilization(x, 0.3)


def test_aggregate_by_hand():
    m, up, down = aggregate([1.0, 2.0, 3.0, 6.0])
    assert m == 3.0
    assert up == pytest.approx(3.0)  # only 6 lies above: sqrt(9)
    assert down == pytest.approx(math.sqrt((4 + 1) / 2))  # 1 and 2 lie below
    assert aggregate([2.0]) == (2.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        aggregate([])


def test_summarize_step_curves():
    """Weights decay linearly over the whole run; the pattern drops to zero after a tenth."""
    t = 1000
    delta_w = np.linspace(1.0, 0.0, t)
    delta_a = np.where(np.arange(t) < 100, 1.0, 0.0)
    result = summarize(delta_w, delta_a, batches_per_epoch=1)  # window 1: no smoothing
    assert result["window"] == 1
    assert result["auc_w"] == pytest.approx(0.5, abs=1e-3)
    assert result["auc_p"] == pytest.approx(0.1)
    assert result["rho"] == pytest.approx(5.0, rel=1e-2)
    assert result["stabilization_p"] == pytest.approx(0.1)
    # The ramp is below 0.1 once (1 - i/999 - 0.005)/0.99 < 0.1, i.e. from i = 895.
    assert result["stabilization_w"] == pytest.approx(0.895, abs=2e-3)


def test_summarize_smooths_with_the_study_window():
    rng = np.random.default_rng(0)
    delta_w, delta_a = rng.random(200), rng.random(200)
    result = summarize(delta_w, delta_a, batches_per_epoch=20)
    w_hat = robust_minmax(sma(delta_w, 6))
    a_hat = robust_minmax(sma(delta_a, 6))
    assert result["window"] == 6
    assert result["auc_w"] == pytest.approx(w_hat.mean())
    assert result["rho"] == pytest.approx(w_hat.mean() / a_hat.mean())


def test_summarize_edge_cases():
    flat = summarize(np.ones(10), np.ones(10), 5)
    assert flat["auc_w"] == 0.0 and math.isnan(flat["rho"])
    assert summarize(np.arange(10.0), np.ones(10), 5)["rho"] == math.inf
    short = summarize([3.0, 2.0], [1.0, 1.0], batches_per_epoch=100)  # shorter than the window
    assert short["window"] == 2 and short["auc_w"] == 0.0
    with pytest.raises(ValueError, match="same length"):
        summarize(np.ones(3), np.ones(4), 1)
    with pytest.raises(ValueError, match="at least one"):
        summarize([], [], 1)
    with pytest.raises(ValueError, match="1-D"):
        summarize(np.ones((3, 2)), np.ones((3, 2)), 1)
