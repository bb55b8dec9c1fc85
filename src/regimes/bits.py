"""Activation patterns as packed bits: where each site's bits go, packing, and counting flips.

A pattern is kept one bit per unit, on the model's device, in a flat uint8 buffer.
`PatternLayout` says where each site's bits lie in it (one place for the layout).
On the GPU everything is torch kernels; on the CPU the same steps run in NumPy on
the tensors' own memory (tested equal to the torch path).
Bit `k` of a site's pattern is bit `k % 8` of byte `k // 8` (numpy's
`packbits(bitorder="little")`). Every function here is a handful of elementwise
kernels with no host-device synchronisation, so it can run on every training step.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

# Multiplying eight 0/1 bytes (read as one little-endian int64) by this constant
# gathers them into the top byte, byte k landing on bit 56 + k. No two partial
# products share a bit position, so no carry disturbs the top byte.
_GATHER_BITS = 0x0102040810204080


@functools.cache
def _popcount_table(device: torch.device) -> torch.Tensor:
    return torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.uint8, device=device)


def numpy_ok(*tensors: torch.Tensor) -> bool:
    # On the CPU, NumPy works on the same memory with a fraction of torch's per-call
    # overhead, which is most of the cost at probe sizes. np.bitwise_count: NumPy >= 2.
    if not _HAS_BITWISE_COUNT:
        return False
    for t in tensors:  # a loop, not all(genexpr): this runs several times per probe
        if not t.is_cpu:
            return False
    return True


_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")


def pack(bits: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor (any shape, read in row-major order) into `ceil(numel / 8)` bytes."""
    flat = bits.reshape(-1)
    if numpy_ok(flat):
        return torch.from_numpy(np.packbits(flat.numpy(), bitorder="little"))
    return _pack_torch(flat)


def _pack_torch(flat: torch.Tensor) -> torch.Tensor:
    n = flat.numel()
    if n % 64:
        flat = torch.cat([flat, flat.new_zeros(64 - n % 64)])
    # bool -> uint8 is a free reinterpretation; eight bytes -> one int64 likewise.
    words = flat.view(torch.uint8).view(torch.int64)
    packed = torch.empty(words.numel(), dtype=torch.uint8, device=flat.device)
    # Writing int64 into uint8 keeps the low byte, i.e. the gathered bits (modular conversion).
    torch.bitwise_right_shift(words * _GATHER_BITS, 56, out=packed)
    return packed[: (n + 7) // 8]


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first `n` bits of a packed uint8 tensor, as a flat bool tensor."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 1).reshape(-1)[:n].bool()


def popcount(packed: torch.Tensor) -> torch.Tensor:
    """Number of set bits in each byte (uint8 in, uint8 out)."""
    return _popcount_table(packed.device)[packed.int()]


def cumulative_flips(previous: torch.Tensor, current: torch.Tensor, segment_ends: torch.Tensor) -> torch.Tensor:
    """Bits that differ between two packed buffers, counted from the start up to each segment's end.

    `segment_ends` (int64, on the buffers' device) holds each segment's last byte index,
    increasing. The per-segment counts are the differences of consecutive values (the
    caller takes them on the host, which saves kernels on every step).
    """
    if numpy_ok(previous, current, segment_ends):
        ends = segment_ends.numpy()
        return _cumulative_flips_numpy(previous.numpy(), current.numpy(), np.concatenate(([0], ends[:-1] + 1)))
    return _cumulative_flips_torch(previous, current, segment_ends)


def _cumulative_flips_numpy(previous: np.ndarray, current: np.ndarray, segment_starts: np.ndarray) -> torch.Tensor:
    flipped = np.bitwise_xor(previous, current)
    np.bitwise_count(flipped, out=flipped)  # popcount in place: a byte holds at most 8
    return torch.from_numpy(np.add.reduceat(flipped, segment_starts, dtype=np.int64).cumsum())


def _cumulative_flips_torch(previous, current, segment_ends) -> torch.Tensor:
    per_byte = popcount(torch.bitwise_xor(previous, current))
    return torch.cumsum(per_byte, 0, dtype=torch.int64)[segment_ends]


# ---------------------------------------------------------------------- the layout


@dataclass(frozen=True)
class SiteLayout:
    """Where one site's bits lie in the flat pattern buffer.

    `numel` bits (the site output's elements, probe batch included) start at bit `start`,
    a multiple of 8, so sites never share a byte; `units` of them count (padding excluded).
    """

    name: str
    shape: tuple[int, ...]  # of the site's output, probe batch included
    numel: int
    start: int
    units: int
    valid: torch.Tensor | None = None  # bool, broadcastable to the output; None: every position counts

    @property
    def stop(self) -> int:
        """End of the site's bits, rounded up to a whole byte."""
        return self.start + (self.numel + 7) // 8 * 8


class PatternLayout:
    """Every tracked site's place in one flat bool buffer, packed at once to one bit per unit.

    `sites` in buffer order. The buffer is a whole number of int64 words (for packing);
    bits between sites (byte and word rounding) stay off, so they never count as flips.
    """

    def __init__(self, sites: list[tuple[str, tuple[int, ...], torch.Tensor | None]], device: torch.device):
        """`sites`: (name, output shape, valid-position mask or None) in buffer order."""
        placed, offset = [], 0
        for name, shape, valid in sites:
            numel = int(np.prod(shape))
            units = numel if valid is None else int(valid.sum()) * numel // valid.numel()
            placed.append(SiteLayout(name, tuple(shape), numel, offset, units, valid))
            offset = placed[-1].stop
        self.sites: tuple[SiteLayout, ...] = tuple(placed)
        self.bits = -(-offset // 64) * 64
        self.units = np.array([s.units for s in placed], dtype=np.float64)  # per site, for da
        self._segment_ends = torch.tensor([s.stop for s in placed], device=device) // 8 - 1  # last byte of each site
        self._segment_starts = np.array([s.start // 8 for s in placed], dtype=np.intp)  # first byte, for NumPy
        self._has_gaps = sum(s.numel for s in placed) != self.bits
        self._by_name = {s.name: s for s in placed}

    @property
    def stored_bytes(self) -> int:
        """Bytes one packed pattern takes."""
        return self.bits // 8

    def site(self, name: str) -> SiteLayout:
        if name not in self._by_name:
            raise KeyError(f"unknown site {name!r}; the tracked sites are {list(self._by_name)}")
        return self._by_name[name]

    def new_buffer(self, device: torch.device) -> torch.Tensor:
        """A bool buffer for one pattern; zeroed only where gaps must read as off."""
        make = torch.zeros if self._has_gaps else torch.empty
        return make(self.bits, dtype=torch.bool, device=device)

    def site_bits(self, buffer: torch.Tensor, site: SiteLayout) -> torch.Tensor:
        """The site's slice of the bool buffer, shaped as its output (a view: write into it)."""
        return buffer[site.start : site.start + site.numel].view(site.shape)

    def cumulative_flips(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """Flipped bits between two packed patterns, counted up to each site's end: [L] int64."""
        if numpy_ok(previous, current):
            return _cumulative_flips_numpy(previous.numpy(), current.numpy(), self._segment_starts)
        return _cumulative_flips_torch(previous, current, self._segment_ends)

    def cumulative_flips_rows(self, previous: np.ndarray, current: np.ndarray) -> np.ndarray:
        """`cumulative_flips` of many pairs at once: packed patterns [N, bytes] (NumPy, uint8)
        -> [N, L] int64, row n the counts between previous[n] and current[n]."""
        flipped = np.bitwise_xor(previous, current)
        np.bitwise_count(flipped, out=flipped)  # popcount in place: a byte holds at most 8
        return np.add.reduceat(flipped, self._segment_starts, axis=1, dtype=np.int64).cumsum(axis=1)

    @staticmethod
    def flips_per_site(cumulative: np.ndarray) -> np.ndarray:
        """Per-site flip counts from `cumulative_flips` rows ([N, L] -> [N, L], float64)."""
        return np.diff(cumulative, axis=1, prepend=0.0)

    def site_pattern(self, packed: torch.Tensor, name: str) -> torch.Tensor:
        """One site's on/off pattern from a packed buffer, as a bool tensor of the site's shape."""
        site = self.site(name)
        return unpack(packed[site.start // 8 : site.stop // 8], site.numel).view(site.shape)

    def __repr__(self) -> str:
        return f"PatternLayout({len(self.sites)} sites, {int(self.units.sum())} units, {self.stored_bytes} bytes)"
