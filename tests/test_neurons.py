"""NeuronStats against a slow reference: raw masks from the models' own pre-activations
(tests/test_tracker.py's recorders and hooks), neurons counted by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_tracker import bit_backend, make_case, reference_patterns, run_forward  # noqa: F401  (a fixture)

import regimes
from regimes.neurons import NeuronStats, neuron_axis

# mlp: [B, H]; cnn: channels of [B, C, H, W]; transformer: [B, T, H] hidden units;
# dict_attention_mask: [B, T, H] with padded tokens that are not units.
CASES = {"mlp": 1, "cnn_shared_inplace": 1, "transformer": 2, "dict_attention_mask": 2}


def slow_neuron_stats(name, probe, patterns):
    """Per site: (fraction of units on, of dead neurons, of always-on neurons), by loops."""
    out = []
    for z_on in patterns:
        if name == "dict_attention_mask":
            valid = probe["attention_mask"].bool().unsqueeze(-1).expand_as(z_on)
        else:
            valid = torch.ones_like(z_on)
        axis = CASES[name]
        on_units = total_units = dead = always = 0
        neurons = z_on.shape[axis]
        for k in range(neurons):
            mine, counted = z_on.select(axis, k), valid.select(axis, k)
            values = [bool(v) for v, c in zip(mine.flatten().tolist(), counted.flatten().tolist()) if c]
            on_units += sum(values)
            total_units += len(values)
            dead += not any(values)
            always += all(values)
        out.append((on_units / total_units, dead / neurons, always / neurons))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_neuron_stats_match_a_slow_reference(name, bit_backend):  # noqa: F811
    model, probe, data, loss_fn = make_case(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    tracker = regimes.Tracker(model, probe, quantities=[NeuronStats()])
    expected = []
    for _ in range(4):
        x, y = data()
        opt.zero_grad()
        loss_fn(run_forward(model, x), y).backward()
        opt.step()
        tracker.step()
        expected.append(slow_neuron_stats(name, probe, reference_patterns(model, probe)))
    records = tracker.records()
    expected = np.array(expected)  # [N, L, 3]
    for j, site in enumerate(tracker.sites):
        for k, kind in enumerate(("on", "dead", "always_on")):
            np.testing.assert_allclose(
                records[f"{kind}:{site}"], expected[:, j, k], rtol=1e-12, err_msg=f"{kind}:{site}"
            )
    for k, kind in enumerate(("on", "dead", "always_on")):
        np.testing.assert_allclose(records[kind], expected[:, :, k].mean(1), rtol=1e-12)
    units = tracker.layout.units
    np.testing.assert_allclose(records["dead_units"], expected[:, :, 1] @ units / units.sum(), rtol=1e-12)
    np.testing.assert_allclose(records["always_on_units"], expected[:, :, 2] @ units / units.sum(), rtol=1e-12)
    tracker.close()


def test_a_dead_network_reads_all_dead():
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
    tracker = regimes.Tracker(model, torch.randn(4, 3), quantities=[NeuronStats()])
    tracker.step()
    records = tracker.records()
    assert records["dead:1"][0] == 1.0 and records["on:1"][0] == 0.0 and records["always_on:1"][0] == 0.0


def test_the_neuron_axis():
    assert neuron_axis((8, 32), tokens=False, channels_first=False) == 1
    assert neuron_axis((8, 6, 4, 4), tokens=False, channels_first=False) == 1
    assert neuron_axis((8, 5, 24), tokens=False, channels_first=False) == 2
    assert neuron_axis((8, 5, 24), tokens=False, channels_first=True) == 1
    assert neuron_axis((5, 8, 24), tokens=True, channels_first=True) == 2
    assert neuron_axis((40, 24), tokens=True, channels_first=False) == 1


class FlatTokens(torch.nn.Module):
    """OPT's layout: the FFN sees the tokens flattened to [B*T, H]; padding marked by the mask."""

    def __init__(self):
        super().__init__()
        self.embed, self.up, self.act = torch.nn.Embedding(30, 8), torch.nn.Linear(8, 12), torch.nn.ReLU()
        self.seen = []

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids)  # [B, T, C]
        z = self.up(h.reshape(-1, h.shape[-1]))  # [B*T, H]
        self.seen.append(z.detach().clone())
        return self.act(z).sum()


def test_flattened_tokens_count_valid_tokens_only():
    torch.manual_seed(0)
    model = FlatTokens()
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    probe = {"input_ids": torch.randint(0, 30, (3, 4)), "attention_mask": mask}
    tracker = regimes.Tracker(model, probe, quantities=[NeuronStats()])
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randint(0, 30, (3, 4)), torch.ones(3, 4)).backward()
        opt.step()
        tracker.step()
    model.seen.clear()
    model.eval()
    with torch.no_grad():
        model(**probe)
    z_on = model.seen[-1] > 0  # [12, 12]: the last measurement's pattern
    valid = mask.reshape(-1).bool()
    kept = z_on[valid]  # only the 7 real tokens
    records = tracker.records()
    assert records["on:act"][-1] == pytest.approx(kept.float().mean().item())
    assert records["dead:act"][-1] == pytest.approx((~kept.any(0)).float().mean().item())
    assert records["always_on:act"][-1] == pytest.approx(kept.all(0).float().mean().item())


def test_a_runs_summary_and_report_carry_the_last_epochs_neurons(tmp_path):
    """summary.json's dead / always_on (site means) and *_units are the means of the steps
    table's columns over the last epoch; `regimes report` shows them, a seed group averages them."""
    pytest.importorskip("pyarrow")
    import pandas as pd

    from regimes.experiment import get_preset, train_run
    from regimes.report import NEURON_COLUMNS, format_table, study_table
    from regimes.runs import read_run, seed_statistics

    config = get_preset("mlp-breast-cancer").replace(max_epochs=3)
    summaries = [train_run(config.replace(seed=seed), tmp_path / f"seed{seed}") for seed in (0, 1)]
    for seed, summary in enumerate(summaries):
        steps = pd.read_parquet(tmp_path / f"seed{seed}" / "steps")
        last = steps[steps.epoch == steps.epoch.max()]
        for key, _, _ in NEURON_COLUMNS:
            assert summary[key] == pytest.approx(last[key].mean(), rel=1e-12), key
    assert 0 < summaries[0]["dead"] < 1 or 0 < summaries[0]["always_on"] < 1, "the test should see such neurons"
    rows = [read_run(tmp_path / f"seed{seed}") for seed in (0, 1)]
    table = format_table(study_table(rows))
    header = [cell.strip() for cell in table.splitlines()[0].split("|")]
    assert {"dead", "dead units", "always on", "always on units"} <= set(header)
    assert f"{summaries[0]['dead']:.3f}" in table.splitlines()[2]
    assert seed_statistics(rows)["dead"] == pytest.approx((summaries[0]["dead"] + summaries[1]["dead"]) / 2)
