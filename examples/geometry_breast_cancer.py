"""The theory's instruments on a trained Breast Cancer MLP: the local affine map, the
distance to the region's boundary, the parameter radii.

    regimes run mlp-breast-cancer --set geometry=true --threads 1 --out runs/geometry-bc
    python examples/geometry_breast_cancer.py runs/geometry-bc

The model, its data and its probe are rebuilt from the run's config; the weights are its
checkpoint's (the last epoch).
"""

import sys

import torch

from regimes import geometry
from regimes.experiment.config import RunConfig
from regimes.experiment.setup import setup_run
from regimes.geometry.watch import probe_inputs
from regimes.records import RunDirectory

run_dir = RunDirectory(sys.argv[1] if len(sys.argv) > 1 else "runs/geometry-bc")
config = RunConfig.from_dict(run_dir.read_config())
run = setup_run(config, torch.device("cpu"))
checkpoint = run_dir.read_checkpoint()
run.model.load_state_dict(checkpoint["model"])
model, x = run.model.eval(), probe_inputs(run.tracker)

K, c = geometry.local_affine_map(model, x)  # f(x') = K x' + c near each x
with torch.no_grad():
    error = (torch.einsum("boi,bi->bo", K, x.flatten(1)) + c - model(x)).abs().max()
print(f"epoch {checkpoint['epoch']}: K {tuple(K.shape)}, c {tuple(c.shape)}, max |K x + c - f(x)| = {error:.1e}")
margin = K[:, 1] - K[:, 0]  # the logit margin's gradient: what each feature does to the decision here
top = margin.abs().mean(0).topk(3).indices.tolist()
print(f"features that move the margin most near the probe (mean |K_1 - K_0|): {top}")

boundary = geometry.region_boundary(model, x)
certified, empirical = geometry.parameter_radius(model, x)
for i in range(len(x)):
    print(
        f"sample {i}: region distance {boundary.distance[i]:.4f} (nearest: {boundary.site[i]} unit "
        f"{int(boundary.unit[i])}), parameter radius certified {certified[i]:.2e} <= empirical {empirical[i]:.2e}"
    )
