"""`Tracker`: rides along a training loop and records how much the weights and the
activation pattern change at every optimizer step (SPEC section 1).

    tracker = regimes.Tracker(model, probe)   # iteration 0: weights and pattern snapshot
    for x, y in loader:
        ...; optimizer.step(); tracker.step()  # dw_i, da_i and da_i per site
    tracker.delta_w, tracker.delta_a, tracker.delta_a_layers, tracker.sites

The per-step path only queues device kernels: results stay on the model's device and
are read back every `sync_every` steps or when an array is read.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from regimes import bits
from regimes.sites import ACTIVATIONS, SiteFilter, capture, select_sites, site_name, unwrap_model

__all__ = ["Tracker", "ProbeError", "NoActivationSitesError"]


class ProbeError(RuntimeError):
    """The model could not run the probe."""


class NoActivationSitesError(ValueError):
    """The model has no activation the tracker can watch."""


@dataclass(frozen=True)
class _Site:
    name: str
    shape: tuple[int, ...]  # of the site's output, probe batch included
    numel: int  # bits in its pattern: the output's element count
    start: int  # first bit of the site's pattern in the flat buffer (a multiple of 8)
    units: int  # units counted (padding excluded)
    valid: torch.Tensor | None  # bool, broadcastable to the site's output; None: every position counts

    @property
    def stop(self) -> int:
        """End of the site's bits, rounded up to a whole byte so sites never share one."""
        return self.start + (self.numel + 7) // 8 * 8


class Tracker:
    """Measures weight change `dw` and activation-pattern change `da` per optimizer step.

    Args:
        model: any `nn.Module` (also wrapped by `torch.compile` or DDP: the underlying
            module is probed).
        probe: the fixed probe inputs: a Tensor (`model(probe)`), a tuple
            (`model(*probe)`) or a dict (`model(**probe)`). Moved to the model's device;
            floating tensors cast to the model's dtype.
        sites: which activation sites to track: None (all), a name or glob pattern, a
            list of them, or a predicate on the name. See `Tracker.sites`.
        every: measure every `every` optimizer steps (changes are then over `every` steps).
        activation: what counts as an activation: "relu" (default), "gelu" or "silu".
            A unit is on when the activation's output is > 0, i.e. its input is > 0.
        attention_mask: [B, T] mask (nonzero = token) of the probe's positions; padded
            positions are not units. Defaults to the probe dict's `attention_mask`. A probe
            dict's `decoder_attention_mask` masks the sites whose [B, T] is the decoder's.
        sync_every: read results back to the host every this many measurements.
    """

    def __init__(
        self,
        model: nn.Module,
        probe,
        *,
        sites: SiteFilter = None,
        every: int = 1,
        activation: str = "relu",
        attention_mask: torch.Tensor | None = None,
        sync_every: int = 256,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if every < 1 or sync_every < 1:
            raise ValueError(f"every and sync_every must be >= 1, got every={every}, sync_every={sync_every}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.model = model
        self.module = unwrap_model(model)
        self.every = every
        self.sync_every = sync_every
        self.activation = ACTIVATIONS[activation]
        self._module_names = {m: name for name, m in self.module.named_modules()}
        self.device, dtype = _device_and_dtype(self.module)
        self._args, self._kwargs = _prepare_probe(probe, self.device, dtype)
        self.probe_size = _batch_size(self._args, self._kwargs)

        named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameter (requires_grad=True): there is no weight change to measure")
        self.parameter_names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._param_sizes = np.array([p.numel() for p in self._params], dtype=np.float64)
        self._previous_weights = [p.detach().to(torch.float32, copy=True) for p in self._params]

        if attention_mask is None and isinstance(self._kwargs.get("attention_mask"), torch.Tensor):
            attention_mask = self._kwargs["attention_mask"]
        # An encoder-decoder's decoder sites read the decoder's mask: a site takes a mask
        # whose [B, T] matches its leading dimensions, the decoder's first for sites
        # named "*decoder*" (when both lengths are equal, the shape cannot tell).
        # 4-D additive masks and the like have no per-position reading.
        masks = {"encoder": attention_mask, "decoder": self._kwargs.get("decoder_attention_mask")}
        self._masks = {k: m.to(self.device).bool() for k, m in masks.items() if isinstance(m, torch.Tensor) and m.dim() == 2}

        self._site_table, self._site_modules = self._discover_sites(sites)
        self.sites = [s.name for s in self._site_table.values()]
        self._units = np.array([s.units for s in self._site_table.values()], dtype=np.float64)
        site_ends = [s.stop for s in self._site_table.values()]
        self._segment_ends = torch.tensor(site_ends, device=self.device) // 8 - 1  # last byte of each site
        self._pattern_bits = -(-site_ends[-1] // 64) * 64  # whole int64 words, for packing
        # Bits between sites (rounding up to bytes and words) must read as off.
        self._pattern_has_gaps = sum(s.numel for s in self._site_table.values()) != self._pattern_bits

        self.iteration = 0
        self._pending_sums: list[torch.Tensor] = []  # P scalars per measurement
        self._pending_flips: list[torch.Tensor] = []
        self._pending_iterations: list[int] = []
        self._chunks: list[np.ndarray] = []
        self._iteration_chunks: list[np.ndarray] = []
        self._closed = False
        self._warned_nonfinite = False
        self._warned_missing = False
        self._previous_pattern = self._probe_pattern()  # iteration 0

    # ------------------------------------------------------------------ sites

    def _run_probe(self) -> None:
        try:
            self.module(*self._args, **self._kwargs)
        except Exception as error:
            raise ProbeError(
                f"the model could not run the probe: {type(error).__name__}: {error}. The tracker calls "
                "model(probe) for a Tensor, model(*probe) for a tuple and model(**probe) for a dict: "
                "pass the probe in the form your model's forward takes."
            ) from error

    def _discover_sites(self, which: SiteFilter):
        """One forward with every activation call seen: names, shapes and where each goes in the buffer."""
        seen = []
        with capture(self.activation, self._module_names, lambda call, out: seen.append((call, out.shape))):
            self._run_probe()
        if not seen:
            raise NoActivationSitesError(
                f"found no {self.activation.name} in {type(self.module).__name__}'s forward on the probe. The "
                f"tracker watches {', '.join(m.__name__ for m in self.activation.modules)} modules and the "
                f"functional {self.activation.name} calls; if the model uses another activation, pass "
                f"activation= one of {sorted(ACTIVATIONS)}."
            )
        calls_per_forward = Counter(call.base for call, _ in seen)
        names = [site_name(call.base, call.index, calls_per_forward[call.base]) for call, _ in seen]
        chosen = set(select_sites(names, which))

        table: dict[tuple[str, int], _Site] = {}
        offset = 0
        for (call, shape), name in zip(seen, names):
            if name not in chosen:
                continue
            numel = int(np.prod(shape))
            valid = self._valid_positions(shape, decoder="decoder" in name)
            units = numel if valid is None else int(valid.sum()) * numel // valid.numel()
            site = _Site(name, tuple(shape), numel, offset, units, valid)
            table[(call.base, call.index)] = site
            offset = site.stop
        by_module = [call.module for call, name in zip((c for c, _ in seen), names) if name in chosen]
        # Module hooks alone suffice (and skip per-op dispatch) when every site is a module call.
        site_modules = list(dict.fromkeys(by_module)) if all(m is not None for m in by_module) else None
        return table, site_modules

    def _valid_positions(self, shape: torch.Size, decoder: bool = False) -> torch.Tensor | None:
        """The attention mask shaped to broadcast over a site's output, when its leading dims are [B, T]."""
        if len(shape) < 2:
            return None
        trailing = (1,) * (len(shape) - 2)
        order = ("decoder", "encoder") if decoder else ("encoder", "decoder")
        for mask in (self._masks[k] for k in order if k in self._masks):
            if tuple(shape[:2]) == tuple(mask.shape):
                return mask.view(*mask.shape, *trailing).expand(shape)
            if tuple(shape[:2]) == tuple(mask.shape[::-1]):  # sequence-first layouts [T, B, ...]
                return mask.t().reshape(*mask.shape[::-1], *trailing).expand(shape)
        return None

    def _probe_pattern(self) -> torch.Tensor:
        """Run the probe and pack every tracked site's on/off pattern into one flat buffer."""
        # Each site writes its on/off bits straight into its slice of one bool buffer
        # (one kernel per site); the whole buffer is then packed at once.
        make = torch.zeros if self._pattern_has_gaps else torch.empty
        on = make(self._pattern_bits, dtype=torch.bool, device=self.device)
        filled = []

        def on_site(call, output):
            site = self._site_table.get((call.base, call.index))
            if site is None or not isinstance(output, torch.Tensor):
                return
            site_on = on[site.start : site.start + site.numel].view(site.shape)
            torch.gt(output, 0, out=site_on)
            if site.valid is not None:
                site_on &= site.valid
            filled.append(site.name)

        with capture(self.activation, self._module_names, on_site, self._site_modules):
            self._run_probe()
        pattern = bits.pack(on)
        if len(filled) != len(self._site_table) and not self._warned_missing:
            self._warned_missing = True
            missing = sorted(set(self.sites) - set(filled))
            warnings.warn(
                f"the probe's forward at iteration {self.iteration} did not reach the sites {missing}: their "
                "pattern counts as all off. The model's control flow changed since the tracker was built.",
                stacklevel=3,
            )
        return pattern

    # ------------------------------------------------------------------ steps

    def _weight_change(self) -> list[torch.Tensor]:
        """Sum of |w_i - w_{i-1}| per parameter tensor (float32 scalars on the device), in fused kernels."""
        current = [p.detach() if p.dtype == torch.float32 else p.detach().float() for p in self._params]
        torch._foreach_sub_(self._previous_weights, current)  # previous := previous - current
        sums = torch._foreach_norm(self._previous_weights, 1)
        torch._foreach_copy_(self._previous_weights, current)
        return sums

    def step(self) -> None:
        """Record the change since the last measurement. Call right after `optimizer.step()`."""
        if self._closed:
            raise RuntimeError("Tracker.step() called after close(): build a new Tracker to keep measuring")
        self.iteration += 1
        if self.iteration % self.every:
            return
        # Raw sums and counts are queued as they are: stacking, differences and
        # divisions happen once per read-back, not once per step.
        self._pending_sums.extend(self._weight_change())
        pattern = self._probe_pattern()
        self._pending_flips.append(bits.cumulative_flips(self._previous_pattern, pattern, self._segment_ends))
        self._previous_pattern = pattern
        self._pending_iterations.append(self.iteration)
        if len(self._pending_iterations) >= self.sync_every:
            self._flush()

    def _flush(self) -> None:
        if not self._pending_iterations:
            return
        steps = len(self._pending_iterations)
        abs_sums = torch.stack(self._pending_sums).view(steps, -1).cpu().double().numpy()  # [N, P]
        cumulative = torch.stack(self._pending_flips).cpu().double().numpy()  # [N, L]
        da_layers = np.diff(cumulative, axis=1, prepend=0.0) / self._units
        dw = abs_sums.sum(1) / self._param_sizes.sum()
        rows = np.column_stack([dw, da_layers.mean(1), da_layers, abs_sums / self._param_sizes])
        self._chunks.append(rows)
        self._iteration_chunks.append(np.array(self._pending_iterations, dtype=np.int64))
        self._pending_sums, self._pending_flips, self._pending_iterations = [], [], []
        if not self._warned_nonfinite and not np.isfinite(rows[:, 0]).all():
            self._warned_nonfinite = True
            first = self._iteration_chunks[-1][~np.isfinite(rows[:, 0])][0]
            warnings.warn(
                f"non-finite parameters at iteration {first}: delta_w is NaN/inf from there on. Training "
                "has diverged; a lower learning rate or gradient clipping usually helps.",
                stacklevel=3,
            )

    def _records(self) -> np.ndarray:
        self._flush()
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        if len(self._iteration_chunks) > 1:
            self._iteration_chunks = [np.concatenate(self._iteration_chunks)]
        if not self._chunks:
            return np.empty((0, 2 + len(self.sites) + len(self._params)))
        return self._chunks[0]

    # ------------------------------------------------------------------ results

    @property
    def delta_w(self) -> np.ndarray:
        """Mean absolute weight change per measured step, over all trainable parameters: (T,)."""
        return self._records()[:, 0].copy()

    @property
    def delta_a(self) -> np.ndarray:
        """Fraction of probe units whose on/off state flipped, averaged over sites: (T,)."""
        return self._records()[:, 1].copy()

    @property
    def delta_a_layers(self) -> np.ndarray:
        """The flipped fraction per site, columns in the order of `sites`: (T, L)."""
        return self._records()[:, 2 : 2 + len(self.sites)].copy()

    @property
    def delta_w_tensors(self) -> np.ndarray:
        """Mean absolute weight change per parameter tensor, columns as `parameter_names`: (T, P)."""
        return self._records()[:, 2 + len(self.sites) :].copy()

    @property
    def iterations(self) -> np.ndarray:
        """The optimizer step each record belongs to: (T,)."""
        self._records()
        return self._iteration_chunks[0].copy() if self._iteration_chunks else np.empty(0, dtype=np.int64)

    def pattern(self, site: str) -> torch.Tensor:
        """The on/off pattern of `site` at the last measurement, as a bool tensor of the site's shape."""
        if site not in self.sites:
            raise KeyError(f"unknown site {site!r}; the tracked sites are {self.sites}")
        entry = next(s for s in self._site_table.values() if s.name == site)
        packed = self._previous_pattern[entry.start // 8 : entry.stop // 8]
        return bits.unpack(packed, entry.numel).view(entry.shape)

    # ------------------------------------------------------------------ lifecycle

    def state_dict(self) -> dict:
        """Everything needed to resume measuring after a restart (plain tensors and arrays)."""
        records = self._records()
        return {
            "iteration": self.iteration,
            "sites": list(self.sites),
            "parameter_names": list(self.parameter_names),
            "previous_weights": [w.cpu() for w in self._previous_weights],
            "previous_pattern": self._previous_pattern.cpu(),
            "records": records.copy(),
            "iterations": self.iterations,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()` of a tracker on the same model, probe and sites."""
        if state["sites"] != self.sites or state["parameter_names"] != self.parameter_names:
            raise ValueError(
                "the saved tracker state is for other sites or parameters than this tracker's: build the "
                "tracker on the same model, probe and site filter as the run that saved it"
            )
        self.iteration = int(state["iteration"])
        self._previous_weights = [w.to(self.device, torch.float32) for w in state["previous_weights"]]
        self._previous_pattern = state["previous_pattern"].to(self.device)
        self._pending_sums, self._pending_flips, self._pending_iterations = [], [], []
        self._chunks = [np.asarray(state["records"], dtype=np.float64)]
        self._iteration_chunks = [np.asarray(state["iterations"], dtype=np.int64)]

    def close(self) -> None:
        """Read back what is pending and release the snapshots. Hooks only live inside a probe."""
        if self._closed:
            return
        self._records()
        self._closed = True
        self._previous_weights = []

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Tracker({type(self.module).__name__}, probe of {self.probe_size}, {len(self.sites)} sites, "
            f"{int(self._param_sizes.sum())} parameters, iteration {self.iteration})"
        )


# ---------------------------------------------------------------------- probe inputs


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


def _prepare_probe(probe, device, dtype) -> tuple[tuple, dict]:
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
    if tensor.shape[0] == 0:
        raise ValueError(
            "the probe has a batch dimension of 0: it needs at least one sample (the study uses "
            "round(0.2 * batch size) samples of the validation split)"
        )
    return int(tensor.shape[0])
