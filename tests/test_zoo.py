"""The model registry: every registered model is smoke-tested the moment it is registered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn as nn

import regimes
from regimes.registry import Registry
from regimes.zoo import STUDY_DROPOUT, create_model, describe_models, list_models, model_sites, register_model, registry


@dataclass(frozen=True)
class ModelCase:
    """How to build and feed one registered model in the tests (small, CPU-fast)."""

    kwargs: dict
    input_shape: tuple[int, ...]  # one example, without the batch dimension
    num_classes: int
    num_relus: int
    # Models that take more than a float tensor: inputs(batch) -> Tensor or dict of keyword inputs.
    inputs: Callable[[int], object] | None = None
    logits_shape: tuple[int, ...] = ()  # per example; () means (num_classes,)
    num_sites: int | None = None  # sites the tracker tracks with the registered filter; None: num_relus
    needs: tuple[str, ...] = field(default_factory=tuple)  # optional packages (skipped without them)


def _tokens(batch: int, length: int = 6, vocab: int = 40, **extra) -> dict:
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, -2:] = 0  # one padded example
    return {"input_ids": torch.randint(3, vocab, (batch, length)), "attention_mask": mask, **extra}


def _seq2seq(batch: int) -> dict:
    return _tokens(batch, decoder_input_ids=torch.randint(3, 40, (batch, 3)))


_HF = ("transformers",)
_TEXT = dict(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)


# A newly registered model must add its case here (test_every_model_has_a_case).
MODEL_CASES = {
    "mlp": ModelCase(dict(input_size=784, num_classes=10), (1, 28, 28), 10, num_relus=2),
    "lenet5": ModelCase(dict(in_channels=1, num_classes=10, input_size=28), (1, 28, 28), 10, num_relus=4),
    "alexnet": ModelCase(dict(in_channels=3, num_classes=100), (3, 32, 32), 100, num_relus=7),
    # Small CNNs for small images (CPU-scale presets): every ReLU application is a site.
    "resnet_small": ModelCase(  # stem + 2 per basic block
        dict(in_channels=1, num_classes=10, depths=[1, 1], widths=[4, 8]), (1, 28, 28), 10, num_relus=5
    ),
    "efficientnet_small": ModelCase(  # stem + head + per MBConv: expand (not with expansion 1), depthwise, SE
        dict(
            in_channels=1,
            num_classes=10,
            stem_channels=16,
            stages=[[1, 16, 1, 1, 3], [2, 16, 1, 2, 3]],
            head_channels=16,
        ),
        (1, 28, 28),
        10,
        num_relus=7,
    ),
    # Hugging Face models at tiny sizes. CNNs: every ReLU is a site (ResNet: stem + 2 per basic block).
    "resnet34": ModelCase(
        dict(num_classes=5, depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8),
        (3, 32, 32),
        5,
        num_relus=5,
        needs=_HF,
    ),
    "efficientnet_b0": ModelCase(  # stem + top + per MBConv block: expand (not block 1), depthwise, squeeze-excite
        dict(num_classes=5, width_coefficient=0.25, depth_coefficient=0.3), (3, 32, 32), 5, num_relus=25, needs=_HF
    ),
    # Transformers: one site per feed-forward, nothing else is a ReLU.
    "vit": ModelCase(
        dict(
            num_classes=5,
            image_size=16,
            patch_size=8,
            hidden_size=16,
            num_layers=2,
            num_heads=2,
            intermediate_size=32,
        ),
        (3, 32, 32),
        5,
        num_relus=2,
        needs=_HF,
    ),
    "swin": ModelCase(
        dict(num_classes=5, image_size=16, patch_size=2, embed_dim=8, depths=[1, 2], num_heads=[1, 2], window_size=4),
        (3, 32, 32),
        5,
        num_relus=3,
        needs=_HF,
    ),
    "pvt": ModelCase(
        dict(
            num_classes=5,
            image_size=16,
            depths=[1, 2],
            hidden_sizes=[8, 16],
            num_heads=[1, 2],
            mlp_ratios=[2, 2],
            sequence_reduction_ratios=[2, 1],
            patch_sizes=[4, 2],
        ),
        (3, 32, 32),
        5,
        num_relus=3,
        needs=_HF,
    ),
    "xlnet": ModelCase(dict(num_classes=3, **_TEXT), (6,), 3, num_relus=2, inputs=_tokens, needs=_HF),
    "roberta": ModelCase(dict(num_classes=3, max_length=8, **_TEXT), (6,), 3, num_relus=2, inputs=_tokens, needs=_HF),
    "gpt2": ModelCase(
        dict(_TEXT, max_length=8), (6,), 40, num_relus=2, inputs=_tokens, logits_shape=(6, 40), needs=_HF
    ),
    "t5": ModelCase(  # 2 encoder + 2 decoder feed-forwards
        dict(_TEXT, head_size=8), (6,), 40, num_relus=4, inputs=_seq2seq, logits_shape=(3, 40), needs=_HF
    ),
}

BATCH = 4  # > 1: BatchNorm needs more than one example per batch in training


def _case(name: str) -> ModelCase:
    if name not in MODEL_CASES:
        pytest.fail(f"model {name!r} is registered but has no entry in MODEL_CASES")
    return MODEL_CASES[name]


def _build(name: str) -> tuple[nn.Module, ModelCase]:
    case = _case(name)
    for package in case.needs:
        pytest.importorskip(package)
    torch.manual_seed(0)
    return create_model(name, **case.kwargs), case


def _inputs(case: ModelCase, batch: int = None):
    batch = batch or BATCH
    return case.inputs(batch) if case.inputs else torch.randn(batch, *case.input_shape)


def _forward(model: nn.Module, inputs) -> torch.Tensor:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def _loss(logits: torch.Tensor) -> torch.Tensor:
    targets = torch.randint(logits.shape[-1], logits.shape[:-1])
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _linear(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


# ---------------------------------------------------------------- registry


def test_every_model_has_a_case():
    assert sorted(MODEL_CASES) == list_models()


def test_list_models_is_sorted_and_holds_the_built_in_models():
    names = list_models()
    assert names == sorted(names)
    assert {"mlp", "lenet5", "alexnet"} <= set(names)


def test_every_model_has_a_one_line_description():
    descriptions = describe_models()
    assert list(descriptions) == list_models()
    for name, description in descriptions.items():
        assert description.strip() and "\n" not in description, name


def test_unknown_name_lists_valid_names_and_suggests_the_nearest():
    with pytest.raises(ValueError) as error:
        create_model("lenet")
    message = str(error.value)
    assert "did you mean 'lenet5'" in message
    for name in list_models():
        assert name in message


def test_unknown_argument_suggests_the_nearest():
    with pytest.raises(TypeError, match="did you mean 'num_classes'"):
        create_model("mlp", input_size=4, num_clases=2)


def test_missing_required_argument_is_named():
    with pytest.raises(TypeError, match="input_size"):
        create_model("mlp", num_classes=2)


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp", description="again")(lambda **kwargs: nn.Identity())


def test_a_registered_factory_is_built_with_its_kwargs(monkeypatch):
    # A private copy of the registry, so the test model does not leak into
    # the parametrised tests or other test modules.
    monkeypatch.setattr(registry, "MODELS", Registry("model", dict(registry.MODELS.items())))

    @register_model("tiny-linear", description="a test model")
    def tiny_linear(*, width: int = 3) -> nn.Module:
        return nn.Linear(width, 2)

    assert "tiny-linear" in list_models()
    assert describe_models()["tiny-linear"] == "a test model"
    assert create_model("tiny-linear", width=5).in_features == 5


# ---------------------------------------------------------------- every model


@pytest.mark.parametrize("name", list_models())
def test_forward_gives_one_logit_per_class(name):
    model, case = _build(name)
    model.eval()
    logits = _forward(model, _inputs(case))
    assert logits.shape == (BATCH, *(case.logits_shape or (case.num_classes,)))
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list_models())
def test_one_sgd_step_changes_every_parameter(name):
    model, case = _build(name)
    model.train()
    before = {key: p.detach().clone() for key, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    loss = _loss(_forward(model, _inputs(case)))
    loss.backward()
    optimizer.step()

    assert torch.isfinite(loss)
    # Every trainable parameter must be reached by the gradient: a layer left out
    # of forward() would stay unchanged.
    unchanged = [key for key, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[key])]
    assert not unchanged


@pytest.mark.parametrize("name", list_models())
def test_the_tracker_finds_the_registered_sites_and_rides_a_training_step(name):
    model, case = _build(name)
    probe = _inputs(case, batch=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with regimes.Tracker(model, probe, sites=model_sites(name)) as tracker:
        model.train()
        _loss(_forward(model, _inputs(case))).backward()
        optimizer.step()
        tracker.step()
    assert len(tracker.sites) == (case.num_sites if case.num_sites is not None else case.num_relus)
    assert not [s for s in tracker.sites if "attn" in s.lower() or "attention" in s.lower()]
    assert tracker.delta_w.shape == (1,) and tracker.delta_w[0] > 0
    assert tracker.delta_a_layers.shape == (1, len(tracker.sites))
    assert 0 <= tracker.delta_a[0] <= 1


@pytest.mark.parametrize("name", list_models())
def test_activation_sites_are_distinct_plain_relu_modules(name):
    model, case = _build(name)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    # modules() yields a shared module once, so a reused ReLU would lower the count
    # and merge two activation sites into one.
    assert len(relus) == case.num_relus
    # In-place ReLU would overwrite the pre-activation a hook may want to read.
    assert not any(relu.inplace for relu in relus)


@pytest.mark.parametrize("name", list_models())
def test_same_seed_builds_the_same_weights(name):
    first, _ = _build(name)
    second, _ = _build(name)
    for (key, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), key


# ---------------------------------------------------------------- MLP


def _mlp_parameter_count(input_size, hidden, num_classes, batchnorm=True):
    widths = [input_size, *hidden]
    count = sum(_linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
    if batchnorm:
        count += sum(2 * width for width in hidden)  # BatchNorm weight and bias
    return count + _linear(widths[-1], num_classes)


@pytest.mark.parametrize(
    "input_size, hidden, num_classes",
    [
        (784, (256, 128), 10),  # the study's MNIST MLP
        (104, (256, 128, 64), 2),  # Adult
        (30, (64, 32), 2),  # Breast Cancer
        (561, (512, 256), 6),  # HAR
    ],
)
def test_mlp_parameter_count_matches_the_formula(input_size, hidden, num_classes):
    model = create_model("mlp", input_size=input_size, num_classes=num_classes, hidden=hidden)
    assert _num_parameters(model) == _mlp_parameter_count(input_size, hidden, num_classes)
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == len(hidden)


def test_mlp_mnist_parameter_count_by_hand():
    # 784*256+256 + 2*256 + 256*128+128 + 2*128 + 128*10+10
    assert _num_parameters(create_model("mlp", input_size=784, num_classes=10)) == 235_914


def test_mlp_without_batchnorm_has_no_batchnorm():
    model = create_model("mlp", input_size=8, num_classes=3, hidden=[16], batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert _num_parameters(model) == _mlp_parameter_count(8, [16], 3, batchnorm=False)


def test_mlp_block_order_is_linear_norm_relu_dropout():
    model = create_model("mlp", input_size=8, num_classes=3, hidden=[16, 4], dropout=STUDY_DROPOUT)
    for block in model.blocks:
        assert [type(m) for m in block] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]
        assert block.dropout.p == 0.2


def test_mlp_has_dropout_only_when_asked():
    model = create_model("mlp", input_size=8, num_classes=3, hidden=[16, 4])
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_mlp_activation_sites_have_readable_names():
    model = create_model("mlp", input_size=8, num_classes=3, hidden=[16, 4])
    names = [name for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    assert names == ["blocks.0.relu", "blocks.1.relu"]


@pytest.mark.parametrize(
    "bad",
    [dict(hidden=[16, 0]), dict(dropout=1.0), dict(dropout=-0.1), dict(input_size=0), dict(num_classes=2.5)],
)
def test_mlp_rejects_bad_arguments(bad):
    kwargs = dict(input_size=8, num_classes=3, hidden=[16]) | bad
    with pytest.raises(ValueError):
        create_model("mlp", **kwargs)


# ---------------------------------------------------------------- LeNet5


def test_lenet5_has_the_classic_parameter_count():
    # conv1 156 + conv2 2416 + fc 48120 + 10164 + 850
    expected = (1 * 6 * 25 + 6) + (6 * 16 * 25 + 16) + _linear(400, 120) + _linear(120, 84) + _linear(84, 10)
    assert expected == 61_706
    assert _num_parameters(create_model("lenet5", input_size=28)) == 61_706
    assert _num_parameters(create_model("lenet5", input_size=32)) == 61_706


@pytest.mark.parametrize("input_size", [28, 32])
def test_lenet5_reaches_the_16x5x5_map_from_both_input_sizes(input_size):
    model = create_model("lenet5", in_channels=3, input_size=input_size)
    features = model.features(torch.randn(2, 3, input_size, input_size))
    assert features.shape == (2, 16, 5, 5)


def test_lenet5_for_cifar10_has_three_input_channels():
    model = create_model("lenet5", in_channels=3, num_classes=10, input_size=32)
    assert _num_parameters(model) == 61_706 + 2 * 6 * 25  # two more input channels in conv1
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_lenet5_activation_sites_have_readable_names():
    names = [name for name, m in create_model("lenet5").named_modules() if isinstance(m, nn.ReLU)]
    assert names == ["features.relu1", "features.relu2", "classifier.relu3", "classifier.relu4"]


@pytest.mark.parametrize("input_size", [30, 8, 64])
def test_lenet5_rejects_other_input_sizes_clearly(input_size):
    with pytest.raises(ValueError, match=f"28x28 or 32x32 inputs, got input_size={input_size}"):
        create_model("lenet5", input_size=input_size)


# ---------------------------------------------------------------- AlexNet


def test_alexnet_parameter_count_matches_the_variant():
    def conv3x3(c_in, c_out):
        return c_in * c_out * 9 + c_out

    expected = (
        conv3x3(3, 64)
        + conv3x3(64, 192)
        + conv3x3(192, 384)
        + conv3x3(384, 256)
        + conv3x3(256, 256)
        + _linear(256 * 2 * 2, 4096)
        + _linear(4096, 4096)
        + _linear(4096, 100)
    )
    assert _num_parameters(create_model("alexnet")) == expected == 23_640_996


def test_alexnet_features_end_in_a_256x2x2_map():
    model = create_model("alexnet", in_channels=1, num_classes=10)
    assert model.features(torch.randn(2, 1, 32, 32)).shape == (2, 256, 2, 2)


def test_alexnet_activation_sites_have_readable_names():
    names = [name for name, m in create_model("alexnet").named_modules() if isinstance(m, nn.ReLU)]
    assert names == [f"features.relu{i}" for i in range(1, 6)] + ["classifier.relu6", "classifier.relu7"]


def test_alexnet_dropout_is_active_only_in_training():
    model = create_model("alexnet", num_classes=10)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    inputs = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(model(inputs), model(inputs))
