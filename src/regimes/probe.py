"""The probe: the fixed inputs a tracker runs through the model, the activation sites
they reach, and the on/off pattern of those sites packed to one bit per unit.

    probe = Probe(model, inputs, ACTIVATIONS["relu"])   # one forward finds the sites
    packed = probe.pattern()                            # every call: [layout.stored_bytes] uint8

The forward runs in eval mode without gradients (sites.capture), with every module's
flag restored afterwards and hooks only inside the call.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections import Counter
from collections.abc import Mapping

import torch
from torch import nn

from regimes import bits
from regimes.bits import PatternLayout, SiteLayout
from regimes.errors import RegimesError, UsageError
from regimes.sites import ACTIVATIONS, Activation, SiteFilter, capture, select_sites, site_name

__all__ = ["Probe", "ProbeError", "NoActivationSitesError"]


class ProbeError(RegimesError, RuntimeError):
    """The model could not run the probe."""


class NoActivationSitesError(UsageError):
    """The model has no activation the tracker can watch."""


class Probe:
    """Fixed probe inputs on a model, with the sites they reach and where their bits go.

    Public, documented state:
        args, kwargs: the inputs as the model is called with (on the model's device)
        size: the number of probe samples
        layout: `bits.PatternLayout`, the tracked sites in buffer order
        site_modules: the activation modules hooked when every site is a module call
            (the cheap path); None when functional calls are seen through a
            TorchFunctionMode (set it to None to force that path)
    """

    def __init__(
        self,
        module: nn.Module,
        probe,
        activation: Activation,
        *,
        sites: SiteFilter = None,
        attention_mask: torch.Tensor | None = None,
        autocast: torch.dtype | None = None,
    ) -> None:
        self.module = module
        self.activation = activation
        self.module_names = {m: name for name, m in module.named_modules()}
        self.device, dtype = _device_and_dtype(module)
        self.args, self.kwargs = _prepare(probe, self.device, dtype)
        self.size = _batch_size(self.args, self.kwargs)
        self.autocast = autocast
        self._masks = _token_masks(self.kwargs, attention_mask, self.device)
        self._warned_missing = False
        self._masks_used: set[str] = set()
        self.layout, self._by_call, self.site_modules = self._discover(sites)
        self._buffer: torch.Tensor | None = None
        self._site_targets: dict | None = None
        self._fingerprint: dict | None = None
        if unused := sorted(set(self._masks) - self._masks_used):
            warnings.warn(
                f"the probe's {' and '.join(unused)} padding mask fits none of the tracked sites "
                f"({[s.shape for s in self.layout.sites]}): padded positions count as units there. The tracker "
                "reads [B, T, ...], [T, B, ...] and flattened [B*T, ...] layouts of a [B, T] mask.",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ running

    def _precision(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def run(self) -> None:
        """One forward of the probe (the caller sets up the capture)."""
        try:
            with self._precision():
                self.module(*self.args, **self.kwargs)
        except Exception as error:
            raise ProbeError(
                f"the model could not run the probe: {type(error).__name__}: {error}. The tracker calls "
                "model(probe) for a Tensor, model(*probe) for a tuple and model(**probe) for a dict: "
                "pass the probe in the form your model's forward takes."
            ) from error

    def pattern(self, iteration: int = 0) -> torch.Tensor:
        """Run the probe and pack every tracked site's on/off pattern into one flat buffer."""
        # Each site writes its on/off bits straight into its slice of one bool buffer
        # (one kernel per site), kept from call to call; the whole buffer is then packed
        # at once into a new tensor, so nothing returned shares the buffer.
        targets = self._targets()
        filled = []
        is_on = self.activation.is_on

        def on_site(call, output):
            target = targets.get((call.base, call.index))
            if target is None or not isinstance(output, torch.Tensor):
                return
            site, out = target
            site_on = is_on(output, out)
            if site.valid is not None:
                site_on &= site.valid
            filled.append(site.name)

        with capture(self.activation, self.module_names, on_site, self.site_modules):
            self.run()
        if len(filled) != len(self.layout.sites):
            missing = [(site, out) for site, out in targets.values() if site.name not in filled]
            for _, out in missing:
                out.zero_()  # the buffer is reused: a site not reached this time reads as all off
            if not self._warned_missing:
                self._warned_missing = True
                warnings.warn(
                    f"the probe's forward at iteration {iteration} did not reach the sites "
                    f"{sorted(site.name for site, _ in missing)}: their pattern counts as all off. The model's "
                    "control flow changed since the tracker was built.",
                    stacklevel=4,
                )
        return bits.pack(self._buffer)

    def _targets(self) -> dict[tuple[str, int], tuple[SiteLayout, torch.Tensor]]:
        """Per site call: its layout and its slice of the reused bool buffer (made on first use)."""
        if self._site_targets is None:
            self._buffer = self.layout.new_buffer(self.device)
            self._buffer.zero_()  # gaps between sites must read as off; they are never written
            self._site_targets = {
                key: (site, self.layout.site_bits(self._buffer, site)) for key, site in self._by_call.items()
            }
        return self._site_targets

    def fingerprint(self) -> dict:
        """What identifies this probe in a saved tracker state: its size, each input's
        name, shape and dtype, and a SHA-256 of the inputs' bytes (computed once, on the host)."""
        if self._fingerprint is None:
            digest, inputs = hashlib.sha256(), []
            named = [(str(k), v) for k, v in enumerate(self.args)] + sorted(self.kwargs.items())
            for name, value in named:
                if not isinstance(value, torch.Tensor):
                    inputs.append([name, repr(value)])
                    digest.update(repr(value).encode())
                    continue
                inputs.append([name, list(value.shape), str(value.dtype).removeprefix("torch.")])
                flat = value.detach().reshape(-1).contiguous().cpu()
                digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
            self._fingerprint = {"size": self.size, "inputs": inputs, "digest": digest.hexdigest()}
        return self._fingerprint

    # ------------------------------------------------------------------ sites

    def _discover(self, which: SiteFilter):
        """One forward with every activation call seen: names, shapes and where each goes in the buffer."""
        seen = []
        with capture(self.activation, self.module_names, lambda call, out: seen.append((call, out.shape))):
            self.run()
        if not seen:
            raise NoActivationSitesError(
                f"found no {self.activation.name} in {type(self.module).__name__}'s forward on the probe. The "
                f"tracker watches {', '.join(m.__name__ for m in self.activation.modules)} modules and the "
                f"functional {self.activation.name} calls; if the model uses another activation, pass "
                f"activation= one of {', '.join(ACTIVATIONS.names())}."
            )
        calls_per_forward = Counter(call.base for call, _ in seen)
        names = [site_name(call.base, call.index, calls_per_forward[call.base]) for call, _ in seen]
        chosen = set(select_sites(names, which))
        kept = [(call, shape, name) for (call, shape), name in zip(seen, names) if name in chosen]
        layout = PatternLayout(
            [(name, tuple(shape), self._valid_positions(shape, decoder="decoder" in name)) for _, shape, name in kept],
            self.device,
        )
        by_call: dict[tuple[str, int], SiteLayout] = {
            (call.base, call.index): site for (call, _, _), site in zip(kept, layout.sites)
        }
        modules = [call.module for call, _, _ in kept]
        # Module hooks alone suffice (and skip per-op dispatch) when every site is a module call.
        site_modules = list(dict.fromkeys(modules)) if all(m is not None for m in modules) else None
        return layout, by_call, site_modules

    def _valid_positions(self, shape: torch.Size, decoder: bool = False) -> torch.Tensor | None:
        """The [B, T] token mask shaped to broadcast over a site's output, in whichever layout
        the site has: [B, T, ...], sequence-first [T, B, ...], or flattened [B*T, ...] (OPT)."""
        order = ("decoder", "encoder") if decoder else ("encoder", "decoder")
        for key in (k for k in order if k in self._masks):
            mask = self._masks[key]
            batch, length = mask.shape
            trailing = (1,) * (len(shape) - 2)
            if len(shape) >= 2 and tuple(shape[:2]) == (batch, length):
                valid = mask.view(batch, length, *trailing)
            elif len(shape) >= 2 and tuple(shape[:2]) == (length, batch):
                valid = mask.t().reshape(length, batch, *trailing)
            elif len(shape) >= 1 and shape[0] == batch * length and length > 1:
                valid = mask.reshape(batch * length, *(1,) * (len(shape) - 1))
            else:
                continue
            self._masks_used.add(key)
            return valid.expand(shape)
        return None


def _token_masks(kwargs: dict, attention_mask: torch.Tensor | None, device: torch.device) -> dict[str, torch.Tensor]:
    """The probe's [B, T] token masks (True = a real token) for the encoder and the decoder, from
    Hugging Face's `attention_mask` / `decoder_attention_mask` (nonzero = token) or PyTorch's
    `src_key_padding_mask` / `tgt_key_padding_mask` (True = padding). 4-D additive masks and
    the like have no per-position reading and are left alone."""

    def given(name):
        value = kwargs.get(name)
        return value if isinstance(value, torch.Tensor) and value.dim() == 2 else None

    tokens = {
        "encoder": attention_mask if attention_mask is not None else given("attention_mask"),
        "decoder": given("decoder_attention_mask"),
    }
    for side, padding_name in (("encoder", "src_key_padding_mask"), ("decoder", "tgt_key_padding_mask")):
        if tokens[side] is None and (padding := given(padding_name)) is not None:
            tokens[side] = ~padding.bool() if padding.dtype == torch.bool else padding == 0
    return {side: mask.to(device).bool() for side, mask in tokens.items() if mask is not None}


# ---------------------------------------------------------------------- inputs


def _device_and_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype | None]:
    tensors = list(module.parameters()) or list(module.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    floating = next((t.dtype for t in tensors if t.is_floating_point()), None)
    return device, floating


def _move(value, device: torch.device, dtype: torch.dtype | None):
    if isinstance(value, torch.Tensor):
        cast = dtype if dtype is not None and value.is_floating_point() else None
        return value.to(device=device, dtype=cast)
    if isinstance(value, Mapping):
        return {k: _move(v, device, dtype) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_move(v, device, dtype) for v in value)
    return value


def _prepare(probe, device, dtype) -> tuple[tuple, dict]:
    if isinstance(probe, torch.Tensor):
        args, kwargs = (probe,), {}
    elif isinstance(probe, (tuple, list)):
        args, kwargs = tuple(probe), {}
    elif isinstance(probe, Mapping):
        args, kwargs = (), dict(probe)
    else:
        raise TypeError(
            f"probe must be a Tensor, a tuple of positional inputs or a dict of keyword inputs, got "
            f"{type(probe).__name__}"
        )
    return _move(args, device, dtype), _move(kwargs, device, dtype)


def _batch_size(args: tuple, kwargs: dict) -> int:
    tensor = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.dim() > 0), None)
    if tensor is None:
        raise TypeError("the probe holds no tensor with a batch dimension: pass the probe inputs as tensors")
    if tensor.dim() == 1 and not kwargs:
        raise UsageError(
            f"the probe is a 1-D tensor of {tensor.shape[0]} values: the tracker needs a batch of samples with "
            "the batch first; for a single sample pass probe.unsqueeze(0)"
        )
    if tensor.shape[0] == 0:
        raise UsageError(
            "the probe has a batch dimension of 0: it needs at least one sample (the study uses "
            "round(0.2 * batch size) samples of the validation split)"
        )
    return int(tensor.shape[0])
