"""Activation patterns as packed bits, and counting the bits that flip.

A pattern is kept one bit per unit, on the model's device, in a flat uint8 buffer.
Bit `k` of a site's pattern is bit `k % 8` of byte `k // 8` (numpy's
`packbits(bitorder="little")`). Every function here is a handful of elementwise
kernels with no host-device synchronisation, so it can run on every training step.
"""

from __future__ import annotations

import functools

import torch

# Multiplying eight 0/1 bytes (read as one little-endian int64) by this constant
# gathers them into the top byte, byte k landing on bit 56 + k. No two partial
# products share a bit position, so no carry disturbs the top byte.
_GATHER_BITS = 0x0102040810204080



@functools.lru_cache(maxsize=None)
def _popcount_table(device: torch.device) -> torch.Tensor:
    return torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.uint8, device=device)


def pack_into(out: torch.Tensor, bits: torch.Tensor) -> None:
    """Pack a flat bool tensor of `n` bits into the uint8 tensor `out` of `ceil(n / 8)` bytes."""
    n = bits.numel()
    if n % 8:
        bits = torch.cat([bits, bits.new_zeros(8 - n % 8)])
    # bool -> uint8 is a free reinterpretation; eight bytes -> one int64 likewise.
    words = bits.view(torch.uint8).view(torch.int64)
    # Writing int64 into uint8 keeps the low byte, i.e. the gathered bits (modular conversion).
    torch.bitwise_right_shift(words * _GATHER_BITS, 56, out=out)


def pack(bits: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor (any shape, read in row-major order) into `ceil(numel / 8)` bytes."""
    flat = bits.reshape(-1)
    out = torch.empty((flat.numel() + 7) // 8, dtype=torch.uint8, device=bits.device)
    pack_into(out, flat)
    return out


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
    per_byte = popcount(torch.bitwise_xor(previous, current))
    return torch.cumsum(per_byte, 0, dtype=torch.int64)[segment_ends]
