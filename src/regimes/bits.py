"""Activation patterns as packed bits, and counting the bits that flip.

A pattern is kept one bit per unit, on the model's device, in a flat uint8 buffer.
On the GPU everything is torch kernels; on the CPU the same steps run in NumPy on
the tensors' own memory (tested equal to the torch path).
Bit `k` of a site's pattern is bit `k % 8` of byte `k // 8` (numpy's
`packbits(bitorder="little")`). Every function here is a handful of elementwise
kernels with no host-device synchronisation, so it can run on every training step.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

# Multiplying eight 0/1 bytes (read as one little-endian int64) by this constant
# gathers them into the top byte, byte k landing on bit 56 + k. No two partial
# products share a bit position, so no carry disturbs the top byte.
_GATHER_BITS = 0x0102040810204080



@functools.lru_cache(maxsize=None)
def _popcount_table(device: torch.device) -> torch.Tensor:
    return torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.uint8, device=device)


def _numpy_ok(*tensors: torch.Tensor) -> bool:
    # On the CPU, NumPy works on the same memory with a fraction of torch's per-call
    # overhead, which is most of the cost at probe sizes. np.bitwise_count: NumPy >= 2.
    return _HAS_BITWISE_COUNT and all(t.device.type == "cpu" for t in tensors)


_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")


def pack(bits: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor (any shape, read in row-major order) into `ceil(numel / 8)` bytes."""
    flat = bits.reshape(-1)
    if _numpy_ok(flat):
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
    if _numpy_ok(previous, current, segment_ends):
        flipped = np.bitwise_count(np.bitwise_xor(previous.numpy(), current.numpy()))
        ends = segment_ends.numpy()
        starts = np.concatenate(([0], ends[:-1] + 1))
        return torch.from_numpy(np.cumsum(np.add.reduceat(flipped, starts, dtype=np.int64)))
    return _cumulative_flips_torch(previous, current, segment_ends)


def _cumulative_flips_torch(previous, current, segment_ends) -> torch.Tensor:
    per_byte = popcount(torch.bitwise_xor(previous, current))
    return torch.cumsum(per_byte, 0, dtype=torch.int64)[segment_ends]
