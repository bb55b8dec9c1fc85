"""The neurons behind the curves (SPEC "Neurons, dead and always on"): per site and
measurement, the fraction of units on, of dead neurons and of always-on neurons.

A *neuron* is one hidden unit (MLP, Transformer FFN) or one channel (CNN); its units are
its values over every probe sample and every position, valid tokens only. A dead neuron
(all its units off) and an always-on one (all on) cannot flip, so they make the pattern
look settled.

    tracker = regimes.Tracker(model, probe, quantities=[NeuronStats()])
    tracker.records()["dead:layer1.relu"]        # one value per measurement

The counts come from the packed pattern the tracker already has (`step.pattern`, no
second forward), on the pattern's device; padding bits are stored off, and each neuron's
number of valid units is counted once, at `bind`.

Which axis holds the neurons: the last for a site of one or two dimensions ([B, H]) and
for a site the probe's padding mask fits (tokens: [B, T, H], [T, B, H], [B*T, H]); the
channel axis 1 for four or more dimensions ([B, C, H, W]); for three dimensions, axis 1
when the model holds a `Conv1d` ([B, C, L]), else the last ([B, T, H]).
`NeuronStats(channels_first=True/False)` decides for every site of three or more dimensions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from regimes import bits
from regimes.quantities import Quantity, Step

__all__ = ["NeuronStats", "neuron_axis", "KINDS"]

KINDS = ("on", "dead", "always_on")


def neuron_axis(shape: tuple[int, ...], tokens: bool, channels_first: bool) -> int:
    """The axis of a site's output (probe batch included) that indexes its neurons."""
    if len(shape) <= 2 or tokens or (len(shape) == 3 and not channels_first):
        return len(shape) - 1
    return 1


class NeuronStats(Quantity):
    """on:<site> (fraction of the site's units on), dead:<site> and always_on:<site>
    (fraction of its neurons with every unit off / on); `on`, `dead`, `always_on`: their
    unweighted means over sites (as da is); `dead_units`, `always_on_units`: the share of
    all units (pooled, as da_units) that belong to a dead / an always-on neuron."""

    def __init__(self, channels_first: bool | None = None):
        self.channels_first = channels_first

    def bind(self, tracker) -> None:
        super().bind(tracker)
        layout, device = tracker.layout, tracker.device
        channels_first = self.channels_first
        if channels_first is None:
            channels_first = any(isinstance(m, nn.Conv1d) for m in tracker.probe.module.modules())
        self.axes, valid_counts = [], []
        for site in layout.sites:
            axis = neuron_axis(site.shape, site.valid is not None, channels_first)
            valid = torch.ones(site.shape, dtype=torch.bool) if site.valid is None else site.valid.cpu()
            self.axes.append(axis)
            valid_counts.append(_per_neuron(valid, axis).to(device))  # [neurons] valid units each
        self.valid_counts = valid_counts
        self.has_units = [c > 0 for c in valid_counts]
        self.neurons = np.array([int(h.sum()) for h in self.has_units], dtype=np.float64)
        self.units_per_neuron = np.array(
            [float(c.sum()) / max(int(h.sum()), 1) for c, h in zip(valid_counts, self.has_units)]
        )  # equal across a site's neurons: a [B, T] mask covers every hidden unit alike

    def columns(self) -> list[str]:
        sites = self.tracker.sites
        per_site = [f"{kind}:{name}" for name in sites for kind in KINDS]
        return [*KINDS, "dead_units", "always_on_units", *per_site]

    def measure(self, step: Step) -> list[torch.Tensor]:
        layout = step.layout
        on = _unpack(step.pattern, layout.bits)  # [bits] bool, one per unit (padding off)
        counts = []
        for site, axis, valid, has in zip(layout.sites, self.axes, self.valid_counts, self.has_units):
            per_neuron = _per_neuron(layout.site_bits(on, site), axis)  # [neurons] units on
            counts += [per_neuron.sum(), ((per_neuron == 0) & has).sum(), ((per_neuron == valid) & has).sum()]
        return [torch.stack(counts)]  # [3L] int64, read back later

    def read(self, queued, n):
        layout = self.tracker.layout
        counts = torch.stack(queued).cpu().double().numpy().reshape(n, -1, 3)  # [N, L, (on, dead, always)]
        on = counts[:, :, 0] / layout.units
        dead = counts[:, :, 1] / self.neurons
        always = counts[:, :, 2] / self.neurons
        units = layout.units.sum()
        out = {
            "on": on.mean(1),
            "dead": dead.mean(1),
            "always_on": always.mean(1),
            "dead_units": counts[:, :, 1] @ self.units_per_neuron / units,
            "always_on_units": counts[:, :, 2] @ self.units_per_neuron / units,
        }
        for j, name in enumerate(self.tracker.sites):
            out[f"on:{name}"], out[f"dead:{name}"], out[f"always_on:{name}"] = on[:, j], dead[:, j], always[:, j]
        return out


def _per_neuron(site_bits: torch.Tensor, axis: int) -> torch.Tensor:
    """Units on per neuron: the count over every axis but `axis` ([neurons] int64)."""
    shape = site_bits.shape
    grouped = site_bits.reshape(math.prod(shape[:axis]), shape[axis], -1)  # [outer, neurons, inner], a view
    if bits.numpy_ok(site_bits):  # NumPy counts bools many times faster than torch on the CPU
        return torch.from_numpy(np.count_nonzero(grouped.numpy(), axis=(0, 2)).astype(np.int64))
    return grouped.to(torch.int32).sum((0, 2))  # int64; summing bools directly is far slower


def _unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    if bits.numpy_ok(packed):  # on the CPU, NumPy's unpackbits: one call, no per-op overhead
        return torch.from_numpy(np.unpackbits(packed.numpy(), count=n, bitorder="little").view(np.bool_))
    return bits.unpack(packed, n)
