"""Regimes of smooth activations: every zoo model takes `activation`, and the tracked
pattern is the sign of the pre-activation, tested against references that record z."""

from __future__ import annotations

import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_zoo import MODEL_CASES, _build, _forward, _inputs

import regimes
from regimes.experiment import get_preset
from regimes.experiment.presets import NATIVE_ACTIVATIONS, PRESETS
from regimes.experiment.setup import resolve_device, setup_run
from regimes.tracker import NoActivationSitesError
from regimes.zoo import create_model, model_sites

SMOOTH = ["gelu", "silu"]
# Positive pre-activations whose GELU and SiLU round to 0 (float32 subnormals; bf16 sooner).
TINY = torch.tensor([1e-45, 2e-45, -1e-45, 0.0])


class EveryCall(nn.Module):
    """One site of each form: the module, the module in place (SiLU), the functional call and
    the functional call in place; the pre-activation of each is kept for the reference."""

    def __init__(self, activation: str, functional: bool = True):
        super().__init__()
        self.activation, self.functional = activation, functional
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.module = nn.GELU() if activation == "gelu" else nn.SiLU()
        self.in_place = nn.GELU() if activation == "gelu" else nn.SiLU(inplace=True)
        self.z: list[torch.Tensor] = []

    def forward(self, x):
        function = F.gelu if self.activation == "gelu" else F.silu
        self.z = []

        def keep(z):
            z = torch.cat([z, TINY.expand(z.shape[0], -1)], dim=1)  # [B, 8 + 4]
            self.z.append(z.clone())
            return z

        h = self.module(keep(self.fc1(x)))[:, :8]
        h = self.in_place(keep(self.fc2(h)))[:, :8]
        if not self.functional:  # module sites only: the tracker hooks the modules alone
            return h
        h = function(keep(self.fc3(h)))[:, :8]
        if self.activation == "silu":
            h = F.silu(keep(h), inplace=True)[:, :8]
        return h


@pytest.mark.parametrize("activation", SMOOTH)
@pytest.mark.parametrize("module_hooks", [True, False])
def test_the_pattern_is_the_sign_of_the_pre_activation(activation, module_hooks):
    torch.manual_seed(0)
    model = EveryCall(activation, functional=not module_hooks)
    x = torch.randn(5, 6)
    tracker = regimes.Tracker(model, x, activation=activation)
    assert (tracker.probe.site_modules is not None) == module_hooks
    tracker.step()  # one more probe
    model(x)
    assert len(tracker.sites) == len(model.z)
    for site, z in zip(tracker.sites, model.z):
        assert torch.equal(tracker.pattern(site), z > 0), site
        assert tracker.pattern(site)[:, 8].all()  # z = 1e-45 > 0 is on, though GELU/SiLU(z) == 0


def test_the_rule_reads_the_input_for_smooth_activations_and_the_output_for_relu():
    assert regimes.sites.ACTIVATIONS.get("relu").reads_input is False
    assert all(regimes.sites.ACTIVATIONS.get(a).reads_input for a in SMOOTH)
    assert not (F.gelu(TINY[:1]) > 0).any() and not (F.silu(TINY[:1]) > 0).any()  # why


def _site_inputs(model: nn.Module, sites: list[str], inputs) -> dict[str, torch.Tensor]:
    """Each site module's input, recorded by a forward pre-hook (module sites, in eval mode)."""
    modules, recorded, handles = dict(model.named_modules()), {}, []
    for site in sites:
        handles.append(
            modules[site].register_forward_pre_hook(
                lambda m, args, site=site: recorded.__setitem__(site, args[0].detach().clone())
            )
        )
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            _forward(model, inputs)
    finally:
        model.train(was)
        for handle in handles:
            handle.remove()
    return recorded


@pytest.mark.parametrize("activation", SMOOTH)
@pytest.mark.parametrize("name", sorted(MODEL_CASES))
def test_every_zoo_model_takes_the_activation_and_the_tracker_follows_it(name, activation):
    _, case = _build(name)  # skips without the model's optional packages
    torch.manual_seed(0)
    model = create_model(name, activation=activation, **case.kwargs)
    kinds = {type(m) for m in model.modules()}
    wanted = nn.GELU if activation == "gelu" else nn.SiLU
    assert wanted in kinds and nn.ReLU not in kinds
    inputs = _inputs(case)
    tracker = regimes.Tracker(model, inputs, activation=activation, sites=model_sites(name))
    assert len(tracker.sites) == (case.num_sites or case.num_relus)
    z = _site_inputs(model, tracker.sites, inputs)
    for site in tracker.sites:
        on = tracker.pattern(site)
        valid = tracker.layout.site(site).valid
        expected = z[site] > 0 if valid is None else (z[site] > 0) & valid
        assert torch.equal(on, expected), site
    with pytest.raises(NoActivationSitesError):
        regimes.Tracker(model, inputs, sites=model_sites(name))  # no ReLU left to watch


@pytest.mark.parametrize("name", ["mlp", "lenet5", "alexnet"])
def test_relu_stays_the_default_with_the_same_site_names(name):
    model, case = _build(name)
    tracker = regimes.Tracker(model, _inputs(case))
    assert all("relu" in site for site in tracker.sites)
    with pytest.raises(ValueError, match="activation must be one of relu, gelu, silu"):
        create_model(name, activation="tanh", **case.kwargs)


def test_the_runner_passes_the_activation_to_the_tracker():
    config = get_preset("mlp-breast-cancer")
    config = config.replace(model_args={**config.model_args, "activation": "silu"})
    run = setup_run(config, resolve_device("cpu"))
    assert run.tracker.probe.activation.name == "silu"
    assert run.tracker.sites == ["blocks.0.silu", "blocks.1.silu"]


def test_native_presets_keep_the_architecture_s_own_activation():
    natives = [name for name in PRESETS.names() if name.endswith("-native")]
    assert sorted(natives) == sorted(f"{name}-native" for name in NATIVE_ACTIVATIONS)
    for name in natives:
        native, study = get_preset(name), get_preset(name.removesuffix("-native"))
        assert native.model_args == {**study.model_args, "activation": NATIVE_ACTIVATIONS[study.preset]}
        assert native.model == study.model and native.lr == study.lr
    assert get_preset("efficientnetb0-cifar100-native").model_args["activation"] == "silu"
