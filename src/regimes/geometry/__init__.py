"""The paper's theory as instruments (SPEC section 5), for any piecewise-linear model.

- `local_affine_map(model, x) -> (K, c)`: the affine map the network computes near each
  input (Corollary 1), `f(x') = K x' + c` over flattened inputs and outputs.
- `region_distance(model, x) -> [B]`: the exact distance from each input to the boundary of
  its linear region; `region_boundary` also says which ReLU unit or max-pool switch it is.
- `parameter_radius(model, x) -> (certified, empirical)`: how far all trainable parameters
  can move (L2) before the input's ReLU pattern changes (Proposition 1): a proven lower
  bound and a searched upper bound.

Along training: `AnchorWatch` (a tracker quantity: distance of the weights from an anchor,
which probe samples flipped since) and `probe_geometry` (the three per probe sample) are what
the runner's `geometry = true` records per epoch (regimes.experiment.geometry).

Models with parts that are not piecewise linear (attention, GELU, LayerNorm, ...) raise
`NotPiecewiseLinearError` naming the part; pass a piecewise-linear submodule and its input
instead (for a Transformer, one feed-forward block and the hidden states entering it).
"""

from regimes.geometry._trace import NotPiecewiseLinearError
from regimes.geometry.radius import parameter_radius
from regimes.geometry.region import RegionBoundary, local_affine_map, region_boundary, region_distance
from regimes.geometry.watch import AnchorWatch, probe_geometry

__all__ = [
    "AnchorWatch",
    "NotPiecewiseLinearError",
    "RegionBoundary",
    "local_affine_map",
    "parameter_radius",
    "probe_geometry",
    "region_boundary",
    "region_distance",
]
