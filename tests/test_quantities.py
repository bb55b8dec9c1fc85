"""Quantities, incremental records and the all-or-nothing step, against slow references.

The references train step by step and compute each number with a float64 Python loop
over parameters or an elementwise comparison of patterns (tests/test_tracker.py's models).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_tracker import make_case, reference_patterns, run_forward, snapshot, train
from torch import nn

import regimes
from regimes.quantities import FlipsSinceStart, Quantity, UpdateNorm


def slow_step_numbers(before: dict, after: dict) -> dict:
    """dw_layerwise and the L2 update norm, one tensor at a time in float64."""
    means = [(after[n].double() - before[n].double()).abs().mean().item() for n in before]
    squares = [((after[n].double() - before[n].double()) ** 2).sum().item() for n in before]
    return {"dw_layerwise": float(np.mean(means)), "update_norm": float(np.sqrt(np.sum(squares)))}


@pytest.mark.parametrize("name", ["mlp", "cnn_shared_inplace", "functional"])
def test_added_quantities_match_slow_references(name):
    model, probe, data, loss_fn = make_case(name)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    tracker = regimes.Tracker(model, probe, quantities=[UpdateNorm(), FlipsSinceStart()], sync_every=2)
    start = reference_patterns(model, probe)
    expected = {"dw_layerwise": [], "update_norm": [], "da0": []}
    for _ in range(5):
        before = snapshot(model)
        x, y = data()
        opt.zero_grad()
        loss_fn(run_forward(model, x), y).backward()
        opt.step()
        tracker.step()
        for key, value in slow_step_numbers(before, snapshot(model)).items():
            expected[key].append(value)
        now = reference_patterns(model, probe)
        expected["da0"].append(np.mean([(a != b).double().mean().item() for a, b in zip(now, start)]))
    np.testing.assert_allclose(tracker.delta_w_layerwise, expected["dw_layerwise"], rtol=1e-5)
    np.testing.assert_allclose(tracker.records()["update_norm"], expected["update_norm"], rtol=1e-5)
    np.testing.assert_allclose(tracker.records()["da0"], expected["da0"], rtol=1e-12)
    assert np.asarray(expected["da0"]).max() > 0  # the case does flip units
    # the layerwise and global readings are different numbers (tensor sizes differ)
    assert not np.allclose(tracker.delta_w_layerwise, tracker.delta_w)


def test_records_are_named_and_read_incrementally():
    model, probe, data, loss_fn = make_case("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker = regimes.Tracker(model, probe, sync_every=3)
    names = [
        "dw",
        "dw_layerwise",
        *(f"dw:{n}" for n in tracker.parameter_names),
        "da",
        "da_units",
        *(f"da:{s}" for s in tracker.sites),
    ]
    assert tracker.history.columns == names
    seen = []
    for _ in range(7):
        train(model, data, loss_fn, opt, 1, tracker)
        new = tracker.records(since=seen[-1] if seen else 0, names=["da"])
        assert set(new) == {"iteration", "da"}
        seen.extend(new["iteration"].tolist())
    assert seen == list(range(1, 8))  # every record once, in order
    whole = tracker.records()
    np.testing.assert_array_equal(whole["da"], tracker.delta_a)
    np.testing.assert_array_equal(np.column_stack([whole[f"da:{s}"] for s in tracker.sites]), tracker.delta_a_layers)
    np.testing.assert_array_equal(tracker.records(since=5)["iteration"], [6, 7])


class CountSteps(Quantity):
    """The smallest possible quantity: the iteration it was measured at (tests the contract)."""

    def columns(self):
        return ["measured_at"]

    def measure(self, step):
        return [torch.tensor(float(step.iteration))]

    def read(self, queued, n):
        return {"measured_at": torch.stack(queued).double().numpy()}


def test_a_new_quantity_is_one_class():
    model, probe, data, loss_fn = make_case("functional")
    tracker = regimes.Tracker(model, probe, every=2, quantities=[CountSteps()], sync_every=2)
    for _ in range(6):
        tracker.step()
    np.testing.assert_array_equal(tracker.records()["measured_at"], [2, 4, 6])


def test_state_dict_does_not_grow_with_the_run():
    model, probe, data, loss_fn = make_case("mlp")
    tracker = regimes.Tracker(model, probe, quantities=[FlipsSinceStart()])

    def size():
        import io

        buffer = io.BytesIO()
        torch.save(tracker.state_dict(), buffer)
        return buffer.tell()

    first = size()
    for _ in range(50):
        tracker.step()
    assert size() == first


def test_load_state_dict_restores_quantity_state():
    model, probe, data, loss_fn = make_case("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    a = regimes.Tracker(model, probe, quantities=[FlipsSinceStart()])
    train(model, data, loss_fn, opt, 3, a)
    b = regimes.Tracker(model, probe, quantities=[FlipsSinceStart()])  # its own start would be now
    b.load_state_dict(a.state_dict())
    a.step()
    b.step()
    assert a.records()["da0"][-1] == b.records()["da0"][-1] > 0


class FailsOnce(nn.Module):
    """A model whose forward raises once when asked (an OOM or Ctrl-C inside the probe)."""

    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(6, 16), nn.Linear(16, 2)
        self.fail = None

    def forward(self, x):
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        return self.head(torch.relu(self.fc(x)))


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory"), KeyboardInterrupt()])
def test_a_failed_step_records_nothing_and_the_next_step_measures_normally(error):
    torch.manual_seed(0)
    model, probe = FailsOnce(), torch.randn(5, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    tracker = regimes.Tracker(model, probe)
    start = snapshot(model)

    def train_step():
        opt.zero_grad()
        model(torch.randn(8, 6)).pow(2).mean().backward()
        opt.step()

    train_step()
    tracker.step()
    after_first = snapshot(model)
    train_step()
    model.fail = error
    with pytest.raises((regimes.ProbeError, KeyboardInterrupt)):
        tracker.step()
    train_step()
    tracker.step()  # measures the change since the last good measurement: two optimizer steps
    now = snapshot(model)
    expected = [
        sum((after_first[n] - start[n]).abs().sum().item() for n in start) / sum(p.numel() for p in start.values()),
        sum((now[n] - after_first[n]).abs().sum().item() for n in start) / sum(p.numel() for p in start.values()),
    ]
    np.testing.assert_allclose(tracker.delta_w, expected, rtol=1e-5)
    np.testing.assert_array_equal(tracker.iterations, [1, 2])  # the failed step is not counted
    state = tracker.state_dict()  # reads and checkpoints work after a failure
    assert state["iteration"] == 2
    tracker.close()
