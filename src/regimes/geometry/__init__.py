"""The paper's theory as instruments (SPEC section 5)."""
from regimes.geometry._trace import NotPiecewiseLinearError
from regimes.geometry.region import RegionBoundary, local_affine_map, region_boundary, region_distance
from regimes.geometry.radius import parameter_radius
