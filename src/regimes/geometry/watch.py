"""The theory beside the measurement: a probe's geometry at one point of training, and what
the weights and patterns did from there on.

Proposition 1 says a perturbation of the parameters smaller than an input's certified
radius keeps its pattern. Taken at the weights `w_e` of an epoch's end, it is a guarantee
for every later weight `w` with `||w - w_e||_2 < radius`: the pattern cannot have changed
while the weights stayed in that ball. `AnchorWatch` measures, at every tracked step, how
far the weights are from such an anchor and which probe samples had a unit flip since it;
`probe_geometry` gives the radii and region distances at the anchor.
"""

from __future__ import annotations

import numpy as np
import torch

from regimes.errors import UsageError
from regimes.geometry.radius import parameter_radius
from regimes.geometry.region import region_boundary
from regimes.quantities import Quantity, Step

__all__ = ["AnchorWatch", "probe_geometry", "probe_inputs", "percentiles"]


class AnchorWatch(Quantity):
    """Since an anchor (the weights at `anchor()`; at first, the tracker's start):

    - `displacement`: ||w - w_anchor||_2 over every trainable parameter, at each measurement;
    - `samples_flipped`: the fraction of probe samples with at least one unit that flipped
      since the last measurement;
    - `flipped_since_anchor`: per probe sample, whether any unit flipped at any measurement
      since the anchor (a bool tensor on the tracker's device; `anchor()` clears it).

    Flips are seen at measurements: with `every = k`, a unit that flips and flips back
    between two measurements is not seen. The per-sample record needs sites whose first
    dimension is the probe's samples (batch first).
    """

    def bind(self, tracker) -> None:
        super().bind(tracker)
        size = tracker.probe_size
        for site in tracker.layout.sites:
            if not site.shape or site.shape[0] != size:
                raise UsageError(
                    f"site {site.name!r} has output shape {site.shape}: per-sample flips need the probe's "
                    f"{size} samples along the first dimension (batch first)"
                )
        self.flipped_since_anchor = torch.zeros(size, dtype=torch.bool, device=tracker.device)
        self.anchor()

    def anchor(self) -> None:
        """From now on, measure from the current weights and pattern."""
        self.anchor_weights = [w.clone() for w in self.tracker.weights.current()]
        self.flipped_since_anchor.zero_()

    def columns(self) -> list[str]:
        return ["displacement", "samples_flipped"]

    def measure(self, step: Step) -> list[torch.Tensor]:
        changed = step.previous_pattern ^ step.pattern
        flipped = torch.zeros_like(self.flipped_since_anchor)
        for site in step.layout.sites:
            bits = step.layout.site_pattern(changed, site.name)
            if site.valid is not None:
                bits = bits & site.valid
            flipped |= bits.reshape(len(flipped), -1).any(1)
        self.flipped_since_anchor |= flipped
        away = torch._foreach_sub(step.weights.current(), self.anchor_weights)
        return [torch.stack(torch._foreach_norm(away, 2)), flipped.float().mean()]

    def read(self, queued, n):
        norms = torch.stack(queued[0::2]).view(n, -1).double().square()
        return {
            "displacement": self.tracker.weights.reduce(norms).sum(1).sqrt().cpu().numpy(),
            "samples_flipped": torch.stack(queued[1::2]).double().cpu().numpy(),
        }

    def state_dict(self) -> dict:
        return {"anchor": [w.cpu() for w in self.anchor_weights], "flipped": self.flipped_since_anchor.cpu()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.anchor_weights = [w.to(self.tracker.device) for w in state["anchor"]]
            self.flipped_since_anchor = state["flipped"].to(self.tracker.device)


def probe_inputs(tracker) -> torch.Tensor:
    """The probe's input tensor, for the geometry functions (one positional tensor: the
    models whose forward takes keyword inputs, the Transformers, are not piecewise linear)."""
    args, kwargs = tracker.probe.args, tracker.probe.kwargs
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
        raise UsageError(
            "geometry needs a model whose forward takes one input tensor (a piecewise-linear MLP or CNN); "
            "this probe has keyword inputs or several: pass a feed-forward block and its input to regimes.geometry"
        )
    return args[0]


def probe_geometry(model: torch.nn.Module, x: torch.Tensor, *, directions: int = 4, seed: int = 0) -> dict:
    """Per probe sample (NumPy float64 arrays, and the nearest boundary's site names): the
    distance to the region's boundary, the certified and empirical parameter radii."""
    boundary = region_boundary(model, x)
    certified, empirical = parameter_radius(model, x, directions=directions, seed=seed)
    return {
        "distance": boundary.distance.detach().double().cpu().numpy(),
        "nearest_site": list(boundary.site),
        "nearest_unit": boundary.unit.cpu().numpy(),
        "certified": certified.detach().double().cpu().numpy(),
        "empirical": empirical.detach().double().cpu().numpy(),
    }


def percentiles(values: np.ndarray, name: str) -> dict[str, float]:
    """`name_p10`, `name_median`, `name_p90` of the finite values (NaN when there are none)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return {f"{name}_p10": float("nan"), f"{name}_median": float("nan"), f"{name}_p90": float("nan")}
    p10, median, p90 = np.percentile(finite, [10, 50, 90])
    return {f"{name}_p10": float(p10), f"{name}_median": float(median), f"{name}_p90": float(p90)}
