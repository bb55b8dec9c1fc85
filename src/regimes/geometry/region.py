"""The input-space side: the local affine map of Corollary 1 and the distance to the region's boundary."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import jvp, vmap

from regimes.errors import UsageError
from regimes.geometry._trace import Recorder, Trace, evaluating, per_sample_norm, prepare, trace

__all__ = ["RegionBoundary", "local_affine_map", "region_boundary", "region_distance"]

# Working memory for one pass of input directions (all samples, all intermediate tangents).
_CHUNK_BYTES = 256 * 2**20


@dataclass(frozen=True)
class RegionBoundary:
    """The nearest boundary of each sample's linear region.

    `distance[b]` is the Euclidean distance from `x[b]` (flattened) to it; `site[b]` names the
    ReLU site (as the tracker names it) or the max-pool whose switch it is; `unit[b]` is the
    flat index of the unit in that site's input for one sample (for a max-pool: of the pool's
    output element), `competitor[b]` the flat index, in the pool's input, of the element that
    would take over the max (-1 for a ReLU unit). `direction[b]` is the unit vector, shaped like
    `x[b]`, along which the boundary is nearest: `x + distance * direction` lies on it.
    A sample whose region has no boundary (no unit depends on the input) gets `inf`, site
    `None`, unit -1 and a zero direction.
    """

    distance: torch.Tensor  # [B]
    site: list[str | None]
    unit: torch.Tensor  # [B] long
    competitor: torch.Tensor  # [B] long
    direction: torch.Tensor  # [B, *x.shape[1:]]


def _chunk(x: torch.Tensor, tr: Trace, chunk_size: int | None) -> int:
    n_in = x[0].numel()
    if chunk_size is not None:
        if chunk_size < 1:
            raise UsageError(f"chunk_size must be >= 1, got {chunk_size}")
        return min(n_in, chunk_size)
    per_direction = x.shape[0] * max(1, tr.dependent_numel) * x.element_size() * 4
    return max(1, min(n_in, _CHUNK_BYTES // per_direction))


def _pool_argmax(tr: Trace) -> list[torch.Tensor]:
    """Per max-pool, the window position holding the max: [B, L, O] (the first, on ties, as torch picks)."""
    winners = []
    for pool in tr.pools:
        values = _windows(pool.input, pool)  # [B, L, O, T]
        winners.append(values.argmax(-1))
    return winners


def _windows(t: torch.Tensor, pool, fill: float = float("-inf")) -> torch.Tensor:
    """[B, L, O, T] windows of a pool's input [B, *lead, *spatial]; padding reads as `fill`."""
    spatial = t.shape[t.dim() - pool.spatial :]
    flat = t.reshape(t.shape[0], -1, spatial.numel())
    windows = flat[..., pool.windows.index]
    return windows.masked_fill(~pool.windows.valid, fill)


def _jacobians(module: nn.Module, x: torch.Tensor, tr: Trace, with_sites: bool, chunk_size: int | None):
    """K [B, n_out, n_in], and with `with_sites` the squared norms of every ReLU pre-activation's
    gradient (shaped like its z) and of every max-pool switch's gradient ([B, L, O, T]).

    Forward mode: one jvp per input direction (a chunk of basis vectors at a time, vmapped over
    the directions and the samples). Under the model's own pattern the jvp is the derivative
    of the affine piece, as ReLU's and max-pool's derivatives follow x's pattern (0 at z = 0).
    """
    batch, sample_shape = x.shape[0], x.shape[1:]
    n_in = x[0].numel()
    n_out = tr.output[0].numel()
    K = x.new_empty(batch, n_out, n_in)
    site_sq = [torch.zeros_like(site.z) for site in tr.sites] if with_sites else []
    winners = _pool_argmax(tr) if with_sites else []
    pool_sq = [
        torch.zeros(w.shape + (p.windows.index.shape[1],), dtype=x.dtype, device=x.device)
        for w, p in zip(winners, tr.pools)
    ]

    def forward(xb):  # one sample [*sample_shape] -> outputs flattened, and what the sites saw
        recorder = Recorder()
        with recorder:
            out = module(xb.unsqueeze(0))
        recorder.check(tr)
        seen = recorder.relu_inputs + recorder.pool_inputs if with_sites else []
        return (out.reshape(-1), *seen)

    def tangents(xb, directions):  # [chunk, *sample_shape] -> tangents of every output of `forward`
        return vmap(lambda v: jvp(forward, (xb,), (v,))[1])(directions)

    step = _chunk(x, tr, chunk_size)
    with evaluating(module), torch.no_grad():
        for start in range(0, n_in, step):
            stop = min(n_in, start + step)
            directions = torch.zeros(stop - start, n_in, dtype=x.dtype, device=x.device)
            directions[torch.arange(stop - start), torch.arange(start, stop)] = 1
            out = vmap(tangents, in_dims=(0, None))(x, directions.view(-1, *sample_shape))
            K[:, :, start:stop] = out[0].transpose(1, 2)  # [B, chunk, n_out] -> [B, n_out, chunk]
            if not with_sites:
                continue
            for sq, t in zip(site_sq, out[1 : 1 + len(tr.sites)]):
                sq += t.pow(2).sum(1).reshape(sq.shape)  # t [B, chunk, 1, ...]
            for sq, t, pool, winner in zip(pool_sq, out[1 + len(tr.sites) :], tr.pools, winners):
                t = t.reshape(batch * (stop - start), *pool.input.shape[1:])
                windows = _windows(t, pool, 0.0).view(batch, stop - start, *sq.shape[1:])  # [B, c, L, O, T]
                best = windows.gather(-1, winner[:, None, :, :, None].expand(*windows.shape[:-1], 1))
                sq += (best - windows).pow(2).sum(1)
    return K, site_sq, pool_sq, winners


def local_affine_map(
    model: nn.Module, x: torch.Tensor, *, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map the network computes near each input (Corollary 1): `f(x') = K x' + c`.

    Returns `K [B, n_out, n_in]` and `c [B, n_out]` over the flattened input and output of
    each sample, with `K` the network's Jacobian under `x`'s activation pattern
    (`W_L D_L ... W_1 D_1 W_0` for an MLP) and `c = f(x) - K x`. It holds for every `x'` in the
    ball of radius `region_distance(model, x)`. The model runs in eval mode (BatchNorm with
    running statistics, dropout off); its train/eval state is restored. `chunk_size` caps how
    many input directions are pushed through at once (default: from a 256 MiB budget).
    """
    module, x = prepare(model, x)
    tr = trace(module, x)
    K, _, _, _ = _jacobians(module, x, tr, with_sites=False, chunk_size=chunk_size)
    c = tr.output.reshape(x.shape[0], -1) - torch.einsum("boi,bi->bo", K, x.reshape(x.shape[0], -1))
    return K, c


def region_boundary(model: nn.Module, x: torch.Tensor, *, chunk_size: int | None = None) -> RegionBoundary:
    """The nearest boundary of each input's linear region, and which unit it belongs to.

    Under `x`'s pattern every ReLU pre-activation `z_j` is affine in the input, and so is every
    max-pool's `z_max - z_k` for each competitor `k` in its window; the region is where all of
    them keep their sign, a convex polytope, so the distance from `x` to its boundary is exactly

        min over units j of |z_j(x)| / ||grad_x z_j||   and over max-pool switches of
        (z_max - z_k)(x) / ||grad_x (z_max - z_k)||,

    with the gradients taken under the fixed pattern. Units whose affine function is constant
    (gradient exactly 0) bound nothing. The network is affine on the whole open ball of that
    radius. See `RegionBoundary` for what is returned.
    """
    module, x = prepare(model, x)
    tr = trace(module, x)
    _, site_sq, pool_sq, winners = _jacobians(module, x, tr, with_sites=True, chunk_size=chunk_size)
    batch = x.shape[0]
    segments = []  # (name, kind, distances [B, n])
    for site, sq in zip(tr.sites, site_sq):
        norm = sq.sqrt()
        distance = torch.where(norm > 0, site.z.abs() / norm, torch.inf)
        segments.append((site.name, "relu", distance.reshape(batch, -1)))
    for pool, sq, winner in zip(tr.pools, pool_sq, winners):
        gap = _switch_gaps(pool.input, pool, winner)  # [B, L, O, T], inf where no competitor
        norm = sq.sqrt()
        distance = torch.where((norm > 0) & torch.isfinite(gap), gap / norm, torch.inf)
        segments.append((pool.name, "max_pool", distance.reshape(batch, -1)))

    if not segments:
        none = torch.full((batch,), -1, dtype=torch.long, device=x.device)
        return RegionBoundary(
            torch.full((batch,), torch.inf, device=x.device), [None] * batch, none, none.clone(), torch.zeros_like(x)
        )
    all_distances = torch.cat([d for _, _, d in segments], dim=1)  # [B, N]
    distance, flat = all_distances.min(dim=1)
    sizes = torch.tensor([d.shape[1] for _, _, d in segments], device=x.device)
    ends = sizes.cumsum(0)
    segment = torch.searchsorted(ends, flat, right=True)
    local = flat - (ends - sizes)[segment]
    finite = torch.isfinite(distance)

    unit = torch.full((batch,), -1, dtype=torch.long, device=x.device)
    competitor = unit.clone()
    site_names: list[str | None] = []
    for b in range(batch):  # bookkeeping on B integers, no tensor work
        site_names.append(segments[int(segment[b])][0] if bool(finite[b]) else None)
    n_sites = len(tr.sites)
    for k, pool in enumerate(tr.pools):
        chosen = finite & (segment == n_sites + k)
        n_out, width = pool.windows.index.shape
        out_element, slot = local // width, local % width  # out_element = lead * O + position
        lead_index, position = out_element // n_out, (out_element % n_out).clamp(max=n_out - 1)
        input_position = pool.windows.index[position, slot]
        unit = torch.where(chosen, out_element, unit)
        competitor = torch.where(chosen, lead_index * _spatial_numel(pool) + input_position, competitor)
    for k in range(n_sites):
        unit = torch.where(finite & (segment == k), local, unit)

    direction = _directions(module, x, tr, winners, segment, local, finite)
    return RegionBoundary(distance, site_names, unit, competitor, direction)


def _spatial_numel(pool) -> int:
    return pool.input[0].shape[pool.input[0].dim() - pool.spatial :].numel()


def _switch_gaps(values: torch.Tensor, pool, winner: torch.Tensor) -> torch.Tensor:
    """`z_max - z_k` for every competitor k of every window: [B, L, O, T], inf at padding and at the max itself."""
    windows = _windows(values, pool)
    best = windows.gather(-1, winner.unsqueeze(-1))
    gap = best - windows
    width = windows.shape[-1]
    itself = torch.arange(width, device=values.device) == winner.unsqueeze(-1)
    return gap.masked_fill(itself | ~pool.windows.valid, torch.inf)


def _directions(module, x, tr: Trace, winners, segment, local, finite) -> torch.Tensor:
    """Unit vectors from each x towards its nearest boundary: minus the sign of the boundary's
    affine function times its normalised gradient (one forward and one backward pass)."""
    batch = x.shape[0]
    if not bool(finite.any()):
        return torch.zeros_like(x)
    with evaluating(module), torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        recorder = Recorder()
        with recorder:
            module(xg)
        recorder.check(tr)
        chosen = xg.new_zeros(batch)
        rows = torch.arange(batch, device=x.device)
        for k, z in enumerate(recorder.relu_inputs):
            values = z.reshape(batch, -1)
            picked = values[rows, local.clamp(0, values.shape[1] - 1)]
            chosen = torch.where(finite & (segment == k), picked, chosen)
        for k, (v, pool, winner) in enumerate(zip(recorder.pool_inputs, tr.pools, winners)):
            windows = _windows(v, pool, 0.0)
            gap = (windows.gather(-1, winner.unsqueeze(-1)) - windows).reshape(batch, -1)
            picked = gap[rows, local.clamp(0, gap.shape[1] - 1)]
            chosen = torch.where(finite & (segment == len(tr.sites) + k), picked, chosen)
        (gradient,) = torch.autograd.grad(chosen.sum(), xg, allow_unused=True)
    if gradient is None:
        return torch.zeros_like(x)
    norm = per_sample_norm(gradient).clamp_min(torch.finfo(x.dtype).tiny)
    sign = torch.where(chosen.detach() < 0, 1.0, -1.0).to(x.dtype)
    direction = gradient * (sign / norm).view(batch, *[1] * (x.dim() - 1))
    return torch.where(finite.view(batch, *[1] * (x.dim() - 1)), direction, torch.zeros_like(direction))


def region_distance(model: nn.Module, x: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """[B]: the exact Euclidean distance from each input to the nearest boundary of its linear
    region (see `region_boundary`, which also says which unit it is)."""
    return region_boundary(model, x, chunk_size=chunk_size).distance
