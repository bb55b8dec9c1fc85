"""Frozen-regime training (regimes.freeze): each gated forward against a slow reference
written out by hand, the tracked pattern constant after the freeze, the zoo, the runner."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_zoo import _build, _forward, _inputs, _loss

import regimes
from regimes.experiment import get_preset, train_run
from regimes.experiment.config import ConfigError
from regimes.freeze import FrozenGates, ValuePattern, freeze_regime
from regimes.records import RunDirectory
from regimes.zoo import create_model, model_sites


def _perturb(model: nn.Module, scale: float = 0.3, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator) * (p.abs().mean() + 1e-3))


# ---------------------------------------------------------------- a gated MLP, by hand


def _mlp_reference(live: nn.Module, frozen_params: dict, x: torch.Tensor, training: bool, activation=torch.relu):
    """The zoo MLP (Linear -> BatchNorm -> ReLU, no dropout) gated by a frozen copy, written out:
    the copy in eval mode (running statistics), the live one with batch statistics in training."""
    f = frozen_params
    h_frozen = x.flatten(1)
    h = x.flatten(1)
    for i, block in enumerate(live.blocks):
        z_frozen = F.linear(h_frozen, f[f"blocks.{i}.linear.weight"], f[f"blocks.{i}.linear.bias"])
        z_frozen = F.batch_norm(
            z_frozen,
            f[f"blocks.{i}.norm.running_mean"],
            f[f"blocks.{i}.norm.running_var"],
            f[f"blocks.{i}.norm.weight"],
            f[f"blocks.{i}.norm.bias"],
            training=False,
        )
        gate = (z_frozen > 0).float()
        h_frozen = activation(z_frozen)  # the copy runs its own activation
        z = F.linear(h, block.linear.weight, block.linear.bias)
        norm = block.norm
        z = F.batch_norm(
            z,
            norm.running_mean.clone(),
            norm.running_var.clone(),
            norm.weight,
            norm.bias,
            training=training,
            momentum=norm.momentum,
            eps=norm.eps,
        )
        h = z * gate
    return F.linear(h, live.head.weight, live.head.bias)


@pytest.mark.parametrize("sites", [None, ["blocks.0.{}", "blocks.1.{}"]])  # mode path, module path
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu"])  # GELU sites become gated linear units too
def test_gated_mlp_matches_the_hand_written_forward_and_its_gradient(training, sites, activation):
    torch.manual_seed(0)
    sites = sites and [s.format(activation) for s in sites]
    model = create_model("mlp", input_size=12, num_classes=3, hidden=[16, 8], activation=activation)
    x = torch.randn(32, 12)
    model.train()
    for _ in range(3):  # running statistics away from their start
        model(torch.randn(32, 12) * 2 + 1)
    frozen_params = {k: v.clone() for k, v in model.state_dict().items()}
    gates = FrozenGates(model, sites=sites, activation=activation).install()
    assert bool(gates._overridden) == (sites is not None)
    _perturb(model)
    model.train(training)
    reference_model = create_model("mlp", input_size=12, num_classes=3, hidden=[16, 8], activation=activation)
    reference_model.load_state_dict(model.state_dict())
    out = model(x)
    expected = _mlp_reference(reference_model, frozen_params, x, training, getattr(F, activation))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    expected.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all(p.grad is None for p in gates.frozen.parameters())
    gates.remove()
    assert not torch.allclose(model(x), out)  # ungated again


# ---------------------------------------------------------------- every form of relu


class EveryRelu(nn.Module):
    """A CNN with each form of ReLU call: modules (in place, and one called twice), F.relu,
    F.relu(inplace=True), torch.relu, torch.relu_, Tensor.relu and Tensor.relu_."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.twice = nn.ReLU()
        self.fc1 = nn.Linear(4 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x, relu=None):
        relu = relu or {}
        apply = lambda name, z, f: relu[name](z) if name in relu else f(z)  # noqa: E731
        z = self.conv(x)  # [B, 4, 4, 4]
        z = apply("act", z, self.act)
        z = apply("twice#0", z - 0.1, self.twice)
        z = apply("twice#1", z - 0.1, self.twice)
        z = self.fc1(z.flatten(1))
        z = apply("relu()#0", z, F.relu)
        z = apply("relu()#1", self.fc2(z), lambda t: F.relu(t, inplace=True))
        z = apply("relu()#2", self.fc3(z), torch.relu)
        z = apply("relu()#3", z - 0.2, torch.relu_)
        z = apply("relu()#4", z - 0.2, torch.Tensor.relu)
        z = apply("relu()#5", z - 0.2, torch.Tensor.relu_)
        return self.head(z)


SITES = ["act", "twice#0", "twice#1", *(f"relu()#{i}" for i in range(6))]


def _every_relu_reference(live, frozen, x, sites):
    """Two plain forwards: the frozen one records each site's pre-activation, the live one
    multiplies its own by the frozen gate at the chosen sites and applies ReLU elsewhere."""
    recorded = {}

    def record(name):
        def f(z):
            recorded[name] = z.clone()
            return torch.relu(z)

        return f

    with torch.no_grad():
        frozen(x, relu={s: record(s) for s in SITES})
    return live(x, relu={s: (lambda z, s=s: z * (recorded[s] > 0)) for s in sites})


@pytest.mark.parametrize(
    "sites", [None, ["twice#1", "relu()#1", "relu()#3", "relu()#5"], ["act", "twice#0", "twice#1"]]
)  # the last: module sites only (one in place, one called twice), gated by the module path
def test_every_form_of_relu_is_gated_as_the_reference_gates_it(sites):
    torch.manual_seed(0)
    model = EveryRelu()
    x = torch.randn(5, 2, 4, 4)
    tracker = regimes.Tracker(model, x)
    assert tracker.sites == SITES  # the names the gates are matched by
    frozen = EveryRelu()
    frozen.load_state_dict(model.state_dict())
    gates = FrozenGates(model, sites=sites).install()
    assert bool(gates._overridden) == (sites is not None and all("()" not in s for s in sites))
    _perturb(model, 0.5)
    reference = EveryRelu()
    reference.load_state_dict(model.state_dict())
    x.requires_grad_(True)
    out = model(x)
    expected = _every_relu_reference(reference, frozen, x, sites or SITES)
    torch.testing.assert_close(out, expected)
    grad = torch.autograd.grad(out.sum(), x)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(expected.sum(), x)[0])
    with gates.suspended():
        torch.testing.assert_close(model(x), reference(x))  # the value network's own forward
    gates.remove()
    assert "forward" not in model.act.__dict__  # the module's own forward again
    torch.testing.assert_close(model(x), reference(x))


# ---------------------------------------------------------------- the tracker: da = 0


def test_after_the_freeze_the_tracked_pattern_is_constant_and_the_value_pattern_is_recorded():
    torch.manual_seed(0)
    model = create_model("mlp", input_size=10, num_classes=3, hidden=[32, 16])
    x, y = torch.randn(64, 10), torch.randint(3, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker = regimes.Tracker(model, x[:16], quantities=[ValuePattern()])

    def steps(n):
        for _ in range(n):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            tracker.step()

    steps(5)
    gates = freeze_regime(tracker)
    frozen_pattern = tracker.last_pattern.clone()
    steps(10)
    records = tracker.records()
    before, after = records["iteration"] <= 5, records["iteration"] > 5
    assert (records["da"][before] > 0).any()
    assert (records["da"][after] == 0).all()  # by construction: the frozen copy's pattern
    assert torch.equal(tracker.last_pattern, frozen_pattern)
    np.testing.assert_array_equal(records["da_value"][before], records["da"][before])
    assert np.isnan(records["drift_value"][before]).all()
    assert (records["da_value"][after] > 0).any() and (records["drift_value"][after] > 0).all()
    # drift_value against a reference: the value network's own sign pattern, gates off.
    with gates.suspended(), torch.no_grad():
        model.eval()
        z_live = [model.blocks[0].norm(model.blocks[0].linear(x[:16]))]
        z_frozen = [gates.frozen.blocks[0].norm(gates.frozen.blocks[0].linear(x[:16]))]
        h_live, h_frozen = torch.relu(z_live[0]), torch.relu(z_frozen[0])
        z_live.append(model.blocks[1].norm(model.blocks[1].linear(h_live)))
        z_frozen.append(gates.frozen.blocks[1].norm(gates.frozen.blocks[1].linear(h_frozen)))
        model.train()
    expected = np.mean([((a > 0) != (b > 0)).float().mean().item() for a, b in zip(z_live, z_frozen)])
    assert records["drift_value"][-1] == pytest.approx(expected)
    assert model.training  # the probe restored the mode


def test_gates_are_computed_with_gradients_off_and_the_copy_never_moves():
    torch.manual_seed(0)
    model = create_model("mlp", input_size=6, num_classes=2, hidden=[8])
    gates = FrozenGates(model).install()
    before = {k: v.clone() for k, v in gates.frozen.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(16, 6)).sum().backward()
        optimizer.step()
    assert all(torch.equal(v, gates.frozen.state_dict()[k]) for k, v in before.items())
    assert not gates.frozen.training and not any(p.requires_grad for p in gates.frozen.parameters())


# ---------------------------------------------------------------- the zoo


def _module_sites_reference(model, frozen, inputs, sites):
    """Independent of the TorchFunctionMode: module hooks record each tracked activation
    module's input in the frozen copy, then replace each one's output in the live model."""
    names = dict(model.named_modules())
    z_frozen, handles = {}, []
    frozen_modules = dict(frozen.named_modules())
    for site in sites:
        handles.append(
            frozen_modules[site].register_forward_pre_hook(
                lambda m, args, site=site: z_frozen.__setitem__(site, args[0].clone())
            )
        )
    with torch.no_grad():
        _forward(frozen, inputs)
    for handle in handles:
        handle.remove()
    hooks = []
    for site in sites:
        stash = {}
        hooks.append(
            names[site].register_forward_pre_hook(lambda m, args, stash=stash: stash.__setitem__("z", args[0].clone()))
        )
        hooks.append(
            names[site].register_forward_hook(
                lambda m, args, out, stash=stash, site=site: stash["z"] * (z_frozen[site] > 0)
            )
        )
    try:
        return _forward(model, inputs)
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("name", ["mlp", "lenet5", "alexnet", "resnet34", "vit", "roberta", "gpt2", "t5"])
def test_every_cnn_and_transformer_ffn_of_the_zoo_is_gated(name):
    model, case = _build(name)
    inputs = _inputs(case)
    tracker = regimes.Tracker(model, inputs, sites=model_sites(name), quantities=[ValuePattern()])
    assert all("#" not in s for s in tracker.sites)  # module sites: the reference finds them by name
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    gates = freeze_regime(tracker)
    assert len(gates._overridden) == len(tracker.sites)  # the module path
    frozen = gates.frozen
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(_forward(model, inputs), _forward(frozen, inputs))  # the copy's own gates
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        _loss(_forward(model, inputs)).backward()
        optimizer.step()
        tracker.step()
    assert (tracker.delta_a == 0).all()
    model.eval()
    with torch.no_grad():
        gated = _forward(model, inputs)
        with gates.suspended():
            expected = _module_sites_reference(model, frozen, inputs, tracker.sites)
            plain = _forward(model, inputs)
    torch.testing.assert_close(gated, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(gated, plain)  # the gates do something
    gates.remove()


# ---------------------------------------------------------------- the runner


def test_config_freeze_values():
    config = get_preset("mlp-breast-cancer")
    assert config.freeze == "off"
    assert config.replace(freeze="auto").freeze == "auto"
    assert config.replace(freeze=3).freeze == 3
    for bad in ("on", 0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="freeze"):
            config.replace(freeze=bad)


def test_a_run_frozen_after_an_epoch_records_the_freeze(tmp_path):
    torch.set_num_threads(1)
    config = get_preset("mlp-breast-cancer").replace(max_epochs=3, freeze=1, patience=5)
    summary = train_run(config, tmp_path / "run")
    steps = RunDirectory(tmp_path / "run").read_steps()
    per_epoch = summary["batches_per_epoch"]
    assert summary["freeze_iteration"] == per_epoch
    after = steps["iteration"] > per_epoch
    assert (steps["da"][after] == 0).all() and (steps["da"][~after] > 0).any()
    assert np.isnan(steps["drift_value"][~after]).all() and not np.isnan(steps["drift_value"][after]).any()
    assert {"da_value", "drift_value"} <= set(steps)


def test_a_frozen_run_resumed_gives_the_uninterrupted_numbers(tmp_path):
    torch.set_num_threads(1)
    config = get_preset("mlp-breast-cancer").replace(max_epochs=4, freeze=1, patience=5)
    whole = train_run(config, tmp_path / "whole")

    class StopAfter(regimes.experiment.callbacks.Callback):
        def on_epoch_end(self, run, **kwargs):
            if run.epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(config, tmp_path / "cut", callbacks=[StopAfter()])
    resumed = train_run(config, tmp_path / "cut", resume=True)
    assert resumed["freeze_iteration"] == whole["freeze_iteration"]
    a, b = RunDirectory(tmp_path / "whole").read_steps(), RunDirectory(tmp_path / "cut").read_steps()
    for column in ("dw", "da", "da_value", "drift_value"):
        np.testing.assert_array_equal(a[column], b[column], err_msg=column)
    assert resumed["best_score"] == whole["best_score"]


def test_a_freeze_after_the_last_epoch_is_a_warning(tmp_path):
    torch.set_num_threads(1)
    config = get_preset("mlp-breast-cancer").replace(max_epochs=1, freeze=1)
    with pytest.warns(UserWarning, match="it will not freeze"):
        summary = train_run(config, tmp_path / "run")
    assert summary["freeze_iteration"] is None


def test_freeze_off_leaves_the_steps_table_as_it_was(tmp_path):
    torch.set_num_threads(1)
    summary = train_run(get_preset("mlp-breast-cancer").replace(max_epochs=1), tmp_path / "run")
    assert summary["freeze_iteration"] is None
    assert not {"da_value", "drift_value"} & set(RunDirectory(tmp_path / "run").read_steps())
    assert not math.isnan(summary["best_score"])


def test_auto_freezes_at_the_first_epoch_end_after_the_detector_s_first_claim(tmp_path):
    from regimes.run import Run

    torch.manual_seed(0)
    model = create_model("mlp", input_size=6, num_classes=2, hidden=[8])
    run = Run(tmp_path / "run", freeze="auto", batches_per_epoch=3)
    tracker = run.watch(model, torch.randn(4, 6))
    for _ in range(3):
        tracker.step()
    run.end_epoch(1)  # the detector exists now, and has claimed nothing
    assert run.gates is None and "frozen" not in run.state_dict()
    run.detector.first_settled_p = (5, 7)  # settled at step 5, claimed at update 7
    for _ in range(3):
        tracker.step()
    run.end_epoch(2)
    assert run.freeze_iteration == 6 and run.gates.installed
    assert set(run.state_dict()["frozen"]) == {"iteration", "state"}
    run.end_epoch(3, last=True)  # frozen once only
    assert run.freeze_iteration == 6
    run.gates.remove()
    run.close()


def test_a_sweep_over_freeze_writes_one_column_type():
    from regimes.experiment.sweep import Job, trial_row

    base = get_preset("mlp-breast-cancer")
    rows = [
        trial_row(Job(f"trials/f{value}", base.replace(freeze=value), "x"), {}, swept=("freeze",))
        for value in ("off", 2)
    ]
    assert [row["freeze"] for row in rows] == ["off", "2"]


# -- issue 18: gates that gate nothing are never silent


def test_install_on_a_model_without_the_sites_raises():
    from regimes.freeze import FrozenGates

    with pytest.raises(ValueError, match="holds no relu module"):
        FrozenGates(nn.Linear(3, 3)).install()
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with pytest.raises(ValueError, match="no relu site 'nope'"):
        FrozenGates(model, sites=["nope", "1"]).install()
    with pytest.raises(ValueError, match="no relu site '0'"):
        FrozenGates(model, sites=["0"]).install()  # a Linear, not an activation
    gates = FrozenGates(model, sites=["1"]).install()  # the real site still works
    assert gates.installed
    gates.remove()


def test_a_gated_forward_in_which_no_site_ran_raises():
    from regimes.freeze import FrozenGates

    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.relu = nn.Linear(3, 3), nn.ReLU()

        def forward(self, x):
            return self.linear(x)  # its ReLU never runs

    model = Skips()
    with FrozenGates(model), pytest.raises(ValueError, match="ran in this forward"):
        model(torch.randn(2, 3))
