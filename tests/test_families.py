"""The study's families at CPU scale (SPEC section 4): a preset per family on real data that
installs offline, with the family's optimizer settings from the study's table.

The presets are run end to end here on small fixtures in the Debian packages' layouts
(Fashion-MNIST's gzipped IDX files, the Jargon File's text), so no test needs the packages.
"""

from __future__ import annotations

import gzip
import math
import struct
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from regimes.experiment import get_preset, train_run
from regimes.tracker import Tracker
from regimes.zoo import create_model, model_sites

# preset -> (the study's row it takes its settings from, optimizer, weight decay, lr, min_delta)
FAMILIES = {
    "resnet-fashion-mnist": ("ResNet34 / CIFAR100", "adam", 1e-4, 1e-2, 0.01),
    "efficientnet-fashion-mnist": ("EfficientNetB0 / CIFAR100", "adamw", 1e-3, 2e-2, 0.01),
    "vit-fashion-mnist": ("ViT-B16 / CIFAR100", "adamw", 5e-2, 1e-4, 0.0),
    "gpt2-jargon": ("GPT-2 / WikiText", "adamw", 1e-2, 3e-4, 0.0),
}
TRANSFORMERS = ("vit-fashion-mnist", "gpt2-jargon")


@pytest.fixture(autouse=True)
def offline_fixtures(tmp_path, monkeypatch):
    """Fixtures in place of Debian's packages; nothing of the user's data, cache or the hub is seen."""
    from regimes.data import images, text

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REGIMES_DATA", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)
    fashion = tmp_path / "fashion-mnist"
    fashion.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 48), ("t10k", 24)):
        labels = np.arange(n) % 10
        images_ = rng.integers(0, 60, (n, 28, 28)) + 19 * labels[:, None, None]  # learnable: brightness is the class
        _write_idx(fashion / f"{prefix}-images-idx3-ubyte.gz", images_)
        _write_idx(fashion / f"{prefix}-labels-idx1-ubyte.gz", labels)
    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST", str(fashion))
    jargon = tmp_path / "jargon-text"
    jargon.mkdir()
    words = "a hacker is one who enjoys the intellectual challenge of creatively overcoming limitations".split()
    paragraphs = [" ".join(rng.choice(words, 30)) for _ in range(300)]
    (jargon / "jargon.txt.gz").write_bytes(gzip.compress("\n\n".join(paragraphs).encode()))
    monkeypatch.setattr(text, "DEBIAN_JARGON", str(jargon))


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.mark.parametrize("preset", list(FAMILIES))
def test_each_family_has_its_rows_optimizer_and_the_studys_early_stopping(preset):
    _row, optimizer, weight_decay, lr, min_delta = FAMILIES[preset]
    config = get_preset(preset)
    assert (config.optimizer, config.weight_decay, config.lr, config.min_delta) == (
        optimizer,
        weight_decay,
        lr,
        min_delta,
    )
    assert config.early_stopping_patience == round(config.max_epochs / 3)
    assert config.precision == "fp32" and config.momentum == 0.0  # CPU: no bf16, no schedule
    assert config.dataset in ("fashion-mnist", "jargon-file")


@pytest.mark.parametrize("preset", list(FAMILIES))
def test_each_family_tracks_every_relu_of_a_cnn_and_only_the_feed_forwards_of_a_transformer(preset):
    pytest.importorskip("transformers")
    config = get_preset(preset)
    torch.manual_seed(0)
    model = create_model(config.model, **config.model_args).eval()
    if config.task == "causal-lm":
        probe = {"input_ids": torch.randint(3, config.model_args["vocab_size"], (2, 16))}
    else:
        probe = torch.randn(2, 1, 28, 28)
    with Tracker(model, probe, sites=model_sites(config.model)) as tracker:
        relus = sum(isinstance(m, torch.nn.ReLU) for m in model.modules())
        if preset in TRANSFORMERS:
            assert len(tracker.sites) == config.model_args["num_layers"]  # one feed-forward per layer
            assert all("mlp" in site for site in tracker.sites)
        else:
            assert len(tracker.sites) == relus > 5
    logits = model(**probe) if isinstance(probe, dict) else model(probe)
    assert logits.shape[-1] == (config.model_args["vocab_size"] if config.task == "causal-lm" else 10)


@pytest.mark.parametrize("preset", list(FAMILIES))
def test_each_family_preset_runs_end_to_end_on_fixtures_in_the_packages_layout(preset, tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    config = get_preset(preset)
    changes = {"max_epochs": 2, "batch_size": 8}
    if config.dataset == "fashion-mnist":
        changes["data_args"] = {"train_size": 24, "val_size": 10}
    else:
        changes["data_args"] = {
            **config.data_args,
            "vocab_size": 300,
            "max_length": 32,
            "train_chars": 5000,
            "val_chars": 2000,
        }
        changes["model_args"] = {**config.model_args, "vocab_size": 300, "max_length": 32}
    summary = train_run(config.replace(**changes), tmp_path / "run", device="cpu")
    assert summary["status"] == "finished" and summary["stop_epoch"] == 2
    assert math.isfinite(summary["rho"]) and math.isfinite(summary["rho_global"])
    assert summary["data_source"].startswith("local: ")
    # the best epoch in the score's own direction (a perplexity's best is its lowest)
    scores = pd.read_parquet(tmp_path / "run" / "epochs.parquet").set_index("epoch").val_score
    best = scores.max() if summary["higher_is_better"] else scores.min()
    assert summary["higher_is_better"] is (config.task != "causal-lm")
    assert (summary["best_score"], summary["best_epoch"]) == (
        best,
        scores.idxmax() if summary["higher_is_better"] else scores.idxmin(),
    )
    assert scores.nunique() == 2, "two epochs with different scores tell max from min"
    if config.dataset == "fashion-mnist":
        assert (summary["train_size"], summary["val_size"]) == (24, 10)
