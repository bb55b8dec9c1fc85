"""The four readings of rho (SPEC "The four readings"): da_units against a slow reference,
the summary's fields against `analysis.summarize` on the recorded curves, old runs without
da_units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_tracker import CASES, make_case, reference_patterns, run_forward, unit_weights

import regimes
from regimes import analysis
from regimes.records import RunSummary
from regimes.records.summary import STUDY_FIELDS


@pytest.mark.parametrize("name", CASES)
def test_da_units_pools_flips_over_every_unit(name):
    model, probe, data, loss_fn = make_case(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    tracker = regimes.Tracker(model, probe)
    previous = reference_patterns(model, probe)
    expected = []
    for _ in range(5):
        x, y = data()
        opt.zero_grad()
        loss_fn(run_forward(model, x), y).backward()
        opt.step()
        tracker.step()
        patterns = reference_patterns(model, probe)
        units = unit_weights(name, probe, patterns)
        flips = sum(((p != q) & u).sum().item() for p, q, u in zip(patterns, previous, units))
        expected.append(flips / sum(u.sum().item() for u in units))
        previous = patterns
    np.testing.assert_allclose(tracker.records()["da_units"], expected, rtol=1e-12, atol=0)
    assert max(expected) > 0, "the test should move the pattern"
    tracker.close()


def curves(steps=120, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    return {
        "dw": np.exp(-t / 60) + 0.01 * rng.random(steps),
        "dw_layerwise": np.exp(-t / 40),
        "da": np.exp(-t / 10),
        "da_units": np.exp(-t / 25) + 0.02 * rng.random(steps),
    }


@pytest.mark.parametrize("weight_change", ["layerwise", "global"])
def test_summarize_run_gives_every_reading(weight_change):
    c = curves()
    numbers = analysis.summarize_run(c, batches_per_epoch=10, weight_change=weight_change)
    by_hand = {
        (w, p): analysis.summarize(c[wc], c[pc], 10)
        for w, wc in [("global", "dw"), ("layerwise", "dw_layerwise")]
        for p, pc in [("sites", "da"), ("units", "da_units")]
    }
    assert numbers["rho"] == by_hand[(weight_change, "sites")]["rho"]
    assert numbers["rho_units"] == by_hand[(weight_change, "units")]["rho"]
    for w in ("global", "layerwise"):
        assert numbers[f"rho_{w}"] == by_hand[(w, "sites")]["rho"]
        assert numbers[f"rho_{w}_units"] == by_hand[(w, "units")]["rho"]
        assert numbers[f"auc_w_{w}"] == by_hand[(w, "sites")]["auc_w"]
        assert numbers[f"stabilization_w_{w}"] == by_hand[(w, "sites")]["stabilization_w"]
    assert numbers["auc_p_units"] == by_hand[("global", "units")]["auc_p"]
    assert numbers["stabilization_p_units"] == by_hand[("global", "units")]["stabilization_p"]
    assert set(STUDY_FIELDS) <= set(numbers)
    four = analysis.four_readings(c, 10)
    assert {k: v["rho"] for k, v in four.items()} == {k: v["rho"] for k, v in by_hand.items()}


def test_without_da_units_the_pooled_readings_are_none():
    c = curves()
    del c["da_units"]
    numbers = analysis.summarize_run(c, batches_per_epoch=10)
    assert numbers["rho_units"] is None and numbers["rho_global_units"] is None and numbers["auc_p_units"] is None
    assert math.isfinite(numbers["rho"])
    assert set(analysis.four_readings(c, 10)) == {("global", "sites"), ("layerwise", "sites")}
    old = RunSummary.from_dict({"rho": 1.5, "status": "finished"})  # an older summary.json
    assert old.rho_global_units is None and old["auc_p_units"] is None


def test_a_run_records_da_units_and_the_summary_carries_the_readings(tmp_path):
    pytest.importorskip("pyarrow")
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    run = regimes.Run(tmp_path / "run")
    tracker = run.watch(model, x[:8], optimizer=opt)
    for epoch in range(1, 4):
        for batch in torch.arange(64).split(8):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            tracker.step()
        run.end_epoch(epoch, {"train_loss": loss})
    summary = run.finish()
    steps = run.directory.read_steps()
    units = np.array([8 * 8, 8 * 32], dtype=float)
    per_site = np.column_stack([steps["da:1"], steps["da:3"]])
    np.testing.assert_allclose(steps["da_units"], per_site @ units / units.sum(), rtol=1e-12)
    expected = analysis.summarize(steps["dw"], steps["da_units"], 8 // 1)
    assert summary["rho_global_units"] == pytest.approx(expected["rho"], rel=1e-12)
    assert summary["rho_layerwise"] == summary["rho"]


def test_a_run_resumed_by_a_newer_version_reads_with_the_older_epochs_unmeasured(tmp_path):
    """Chunks written before da_units beside chunks with it: the old steps read as NaN."""
    pq = pytest.importorskip("pyarrow.parquet")

    from regimes.cli import main
    from regimes.explain import explain
    from regimes.records import RunDirectory

    out = tmp_path / "run"
    assert main(["run", "mlp-breast-cancer", "--set", "max_epochs=2", "--out", str(out), "--quiet"]) == 0
    first = sorted((out / "steps").glob("*.parquet"))[0]
    old = pq.read_table(first)
    pq.write_table(old.select([c for c in old.column_names if c != "da_units"]), first)
    steps = RunDirectory(out).read_steps()
    epoch_one = steps["epoch"] == 1
    assert np.isnan(steps["da_units"][epoch_one]).all() and np.isfinite(steps["da_units"][~epoch_one]).all()
    numbers = explain(out)
    assert math.isfinite(numbers["readings"]["layerwise/sites"]["rho"])
    assert numbers["neurons"]["first_epoch"] == 2  # the first epoch with da_units


def test_the_report_and_a_sweeps_seed_statistics_carry_the_pooled_readings(tmp_path, monkeypatch):
    from regimes.experiment import get_preset, train_run
    from regimes.report import format_table, study_table
    from regimes.runs import load_runs, seed_statistics

    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "data"))
    summaries = [
        dict(train_run(get_preset("mlp-breast-cancer").replace(max_epochs=2, seed=s), tmp_path / f"s{s}"))
        for s in (0, 1)
    ]
    statistics = seed_statistics(summaries)
    for key in ("rho_units", "rho_global_units", "rho_layerwise_units"):
        assert statistics[key] == pytest.approx(np.mean([s[key] for s in summaries]), rel=1e-12)
    table = format_table(study_table(load_runs([tmp_path / "s0"])))
    assert "rho layerwise units" in table and f"{summaries[0]['rho_layerwise_units']:.2f}" in table


@pytest.mark.parametrize("every", [1, 3])
def test_summarize_takes_a_tracker_and_its_reading(every):
    """`regimes.summarize(tracker, ...)` reads as a run does: the layerwise headline by default,
    `weight_change="global"` on request, every reading beside it, `every` applied to the window."""
    model, probe, data, loss_fn = make_case("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    tracker = regimes.Tracker(model, probe, every=every)
    batches_per_epoch = 12
    for _ in range(4 * batches_per_epoch):
        x, y = data()
        opt.zero_grad()
        loss_fn(run_forward(model, x), y).backward()
        opt.step()
        tracker.step()
    per_epoch = batches_per_epoch // every
    # by hand: the curves a user would pass, each reading on its own
    layerwise = analysis.summarize(tracker.delta_w_layerwise, tracker.delta_a, per_epoch)
    global_ = analysis.summarize(tracker.delta_w, tracker.delta_a, per_epoch)
    pooled = analysis.summarize(tracker.delta_w_layerwise, tracker.records()["da_units"], per_epoch)
    headline = regimes.summarize(tracker, batches_per_epoch=batches_per_epoch)
    assert headline["window"] == analysis.smoothing_window(per_epoch)
    assert headline["rho"] == layerwise["rho"] and headline["auc_w"] == layerwise["auc_w"]
    assert headline["rho_layerwise"] == layerwise["rho"] and headline["rho_global"] == global_["rho"]
    assert headline["rho_units"] == pooled["rho"]
    assert regimes.summarize(tracker, batches_per_epoch) == headline  # positional, as with curves
    other = regimes.summarize(tracker, batches_per_epoch=batches_per_epoch, weight_change="global")
    assert other["rho"] == global_["rho"] and other["rho_layerwise"] == layerwise["rho"]
    assert layerwise["rho"] != global_["rho"], "the test should tell the readings apart"
    tracker.close()


def test_summarize_refuses_a_reading_it_cannot_apply():
    tracker_free = curves()
    with pytest.raises(ValueError, match="weight_change picks a tracker's curve"):
        regimes.summarize(tracker_free["dw"], tracker_free["da"], 10, weight_change="global")
    with pytest.raises(ValueError, match="weight_change must be one of"):
        model, probe, _, _ = make_case("mlp")
        with regimes.Tracker(model, probe) as tracker:
            regimes.summarize(tracker, batches_per_epoch=5, weight_change="per-tensor")
    with pytest.raises(ValueError, match="needs delta_w, delta_a and batches_per_epoch"):
        regimes.summarize(tracker_free["dw"], tracker_free["da"])
