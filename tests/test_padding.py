"""Padding is not a unit, in every layout and either convention (SPEC section 1), against a
slow reference that captures each site's input with plain hooks and counts only real tokens."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import regimes


def reference_da(model, probe_kwargs, modules, token_masks, train_step, steps, z_is_output=False):
    """Per-site flipped fraction over real tokens only, step by step. `modules`: one per site,
    whose input (or output, with `z_is_output`) is the site's z; `token_masks[i]`: bool mask
    over the rows of site i after flattening its leading positions (True = a real token)."""

    def patterns():
        seen = []

        def keep(module, args, out):
            seen.append(((out if z_is_output else args[0]) > 0).detach().clone())

        handles = [m.register_forward_hook(keep) for m in modules]
        was, fast = model.training, torch.backends.mha.get_fastpath_enabled()
        model.eval()
        torch.backends.mha.set_fastpath_enabled(False)  # PyTorch's fused eval path has no ReLU to see
        try:
            with torch.no_grad():
                model(**probe_kwargs)
        finally:
            model.train(was)
            torch.backends.mha.set_fastpath_enabled(fast)
            for h in handles:
                h.remove()
        return seen

    rows = []
    before = patterns()
    for _ in range(steps):
        train_step()
        after = patterns()
        per_site = []
        for a, b, real in zip(before, after, token_masks):
            a, b = a.reshape(real.numel(), -1), b.reshape(real.numel(), -1)
            flips = (a != b)[real].double()
            per_site.append(flips.sum().item() / flips.numel())
        rows.append(per_site)
        before = after
    return np.array(rows)


def test_opt_flattened_layout_masks_padding():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.OPTConfig(
        vocab_size=40,
        hidden_size=16,
        ffn_dim=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        word_embed_proj_dim=16,
        activation_function="relu",
        dropout=0.0,
    )
    model = transformers.OPTForCausalLM(config)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    probe = {"input_ids": torch.randint(3, 40, (3, 6)), "attention_mask": mask}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every mask fits a site: no warning
        tracker = regimes.Tracker(model, probe)
    sites = [layer.activation_fn for layer in model.model.decoder.layers]
    assert len(tracker.sites) == 2
    assert [s.units for s in tracker.layout.sites] == [int(mask.sum()) * 32] * 2  # 12 real tokens x 32 units
    opt = torch.optim.Adam(model.parameters(), lr=0.05)

    def train_step():
        opt.zero_grad()
        ids = torch.randint(3, 40, (4, 6))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        tracker.step()

    flat = mask.reshape(-1).bool()
    expected = reference_da(model, probe, sites, [flat, flat], train_step, 4)
    np.testing.assert_allclose(tracker.delta_a_layers, expected, rtol=1e-12)
    assert expected.max() > 0


@pytest.mark.parametrize("batch_first", [False, True])
def test_pytorch_key_padding_masks(batch_first):
    torch.manual_seed(0)
    model = nn.Transformer(
        d_model=16,
        nhead=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dim_feedforward=24,
        dropout=0.0,
        batch_first=batch_first,
    )
    src_pad = torch.tensor([[False] * 5, [False, False, False, True, True]])  # True = padding
    tgt_pad = torch.tensor([[False, False, True, True, True], [False] * 5])  # same length: names decide
    shape = (2, 5, 16) if batch_first else (5, 2, 16)
    probe = {
        "src": torch.randn(shape),
        "tgt": torch.randn(shape),
        "src_key_padding_mask": src_pad,
        "tgt_key_padding_mask": tgt_pad,
    }
    tracker = regimes.Tracker(model, probe)
    assert tracker.sites == ["encoder.layers.0.relu()", "decoder.layers.0.relu()"]
    assert [s.units for s in tracker.layout.sites] == [8 * 24, 7 * 24]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def train_step():
        opt.zero_grad()
        model(torch.randn(shape), torch.randn(shape)).pow(2).mean().backward()
        opt.step()
        tracker.step()

    layers = [model.encoder.layers[0].linear1, model.decoder.layers[0].linear1]  # their output is z
    order = (lambda m: m) if batch_first else (lambda m: m.t())  # rows as the site's layout has them
    masks = [order(~src_pad).reshape(-1), order(~tgt_pad).reshape(-1)]
    expected = reference_da(model, probe, layers, masks, train_step, 3, z_is_output=True)
    np.testing.assert_allclose(tracker.delta_a_layers, expected, rtol=1e-12)
    assert expected.max() > 0


def test_a_mask_that_fits_no_site_is_a_warning():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    probe = {"input": torch.randn(3, 4)}

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, input, attention_mask):
            return self.net(input)

    with pytest.warns(UserWarning, match="encoder padding mask fits none of the tracked sites"):
        regimes.Tracker(Wrapped(), {**probe, "attention_mask": torch.ones(3, 7)})
