"""The batched, bounded-memory core of LOST: degrees, order, similars and expansion map.

:func:`lost_tensors` runs spec section 3, steps 1-8, for a batch of same-grid images on the
features' device without ever holding the ``N x N`` Gram matrix ``A = F Fᵀ (+ bias)``:

* Degrees (step 2) are counted from row blocks of ``A``: per row, the number of strictly
  positive entries, minus the sign of the row's own diagonal entry.
* The order (step 3) is a stable sort of the degrees; seed and potentials (steps 4-5) are
  read from it.
* Similars (step 6) need only the seed's row; the expansion map (step 7) only the rows of
  the similars. Both come from the rows of the potentials, computed in blocks.

Exactness rule. Every Gram entry that feeds a decision (a degree sign, ``A[seed, p] > 0``,
a term of the expansion sum) is an entry of one matrix of a ``torch.bmm`` whose matrices
all have the same shape, ``(T, d) @ (d, N)`` with ``T = min(N, TILE_ROWS)``: the left
matrix is ``T`` feature rows of the image (a tile of consecutive patches for the degrees,
``T`` consecutive potentials in ascending-degree order for the similars and the expansion;
the last tile zero-padded), the right one the image's features transposed. The tiling
depends on ``N`` alone; ``chunk_size`` and the batch only change how many such matrices one
call holds. The expansion map is accumulated one similar at a time, in ascending-degree
order, by elementwise additions (one rounding each, the same on every device), not by a
reduction kernel, whose summation order is the library's choice (measured on CPU:
``torch.sum`` over the rows of a block changes in the last bit with the number of columns).

What this guarantees:

* CPU (one torch build and BLAS): results bitwise identical for every ``chunk_size`` and
  for an image alone or inside any batch, provided the BLAS gives a matrix of a batched
  product the same value whatever the number of matrices in the call and wherever they
  lie in memory. MKL does (the torch wheels' BLAS; ``tests/test_lost_batched.py`` checks
  it). The fixed shape is what matters: BLAS does *not* give a row the same value in
  products of different shapes. With MKL, a row of ``F[i:i+m] @ F.T`` differs in the last
  bit from the same row of ``F @ F.T`` for several ``m < 12``, and ``F[i] @ F.T`` (a
  matrix-vector product) differs too.
* CUDA: not guaranteed bitwise. cuBLAS may pick another kernel (another blocking or
  split-K) for another batch count, so entries may differ in the last bit between chunk
  sizes or batch compositions; a decision can change only where an entry plus the bias
  is within rounding of 0. All products run in true fp32 (TF32 off).
* Against the previous full-Gram implementation (one ``F @ F.T`` and a ``torch.sum`` over
  the similars' rows): identical whenever the products and sums are exact (e.g. integer
  features). Otherwise the expansion map may differ in the last bits (the summation
  order changed), and so a decision, but only where a value is within rounding of 0. On
  this MKL the degrees came out identical in every comparison made.

Memory: one step holds the Gram rows of ``chunk`` patches per image, about
``4 * B * N * chunk`` bytes (fp32 entries; their signs are written over them), plus
``O(B * N)`` for degrees, order and expansion. ``chunk`` is rounded down to whole tiles
(at least one tile). With a batch of several images the tiles are computed one at a time,
each as one product over the batch (a product holding several tiles of several images
would need a copy of the right operands), so the step is one tile. With one image a step
is one product over its tiles, the right operand broadcast without a copy (on CPU; on
CUDA torch may copy a broadcast batch operand, adding ``4 * d * N`` bytes per tile).
Time: the degree pass costs one ``N x N x d`` product per image, the similars' rows
``K x N x d`` more (``K = min(k_patches, N)``), plus ``K`` elementwise additions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch

from lostreg.precision import strict_fp32

__all__ = [
    "TILE_ROWS",
    "LostTensors",
    "auto_chunk_rows",
    "available_memory_bytes",
    "lost_degrees",
    "lost_expansion",
    "lost_tensors",
    "tile_rows",
]

#: Rows per Gram tile. Part of the exactness rule: changing it may change last bits.
TILE_ROWS = 128
#: Share of the available memory that one step may use when the chunk is chosen for you.
MEMORY_FRACTION = 1 / 8
#: Cap on one step's memory when the chunk is chosen for you: larger steps do not run
#: faster, on CPU nor GPU, once a step holds a few tiles.
MAX_STEP_BYTES = 256 * 2**20
#: Bytes per Gram entry held in a step: the fp32 value (its sign is written over it).
BYTES_PER_ENTRY = 4


def tile_rows(n: int) -> int:
    """Rows ``T`` of every Gram tile for an image of ``n`` patches (fixed by ``n`` alone)."""
    return max(1, min(int(n), TILE_ROWS))


def available_memory_bytes(device: torch.device) -> int:
    """Memory free for new tensors on ``device``, in bytes (a best effort).

    CUDA: free device memory plus what torch's caching allocator holds unused. CPU: Linux
    ``MemAvailable`` from ``/proc/meminfo``, else free physical pages from ``os.sysconf``.
    Anything else, or when these cannot be read: 1 GiB.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, OSError, ValueError):
            pass
    return 2**30


def auto_chunk_rows(device: torch.device, batch: int, n: int) -> int:
    """Gram rows per image for one step: ``MEMORY_FRACTION`` of the available memory, at
    most ``MAX_STEP_BYTES``, at least one row (the core rounds up to one tile)."""
    budget = min(available_memory_bytes(device) * MEMORY_FRACTION, MAX_STEP_BYTES)
    return max(1, int(budget // (BYTES_PER_ENTRY * max(batch, 1) * max(n, 1))))


def _gram_row_blocks(
    left: torch.Tensor, feats: torch.Tensor, tile: int, tiles_per_step: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """Rows of ``left @ featsᵀ`` per image, in steps, by fixed-shape tile products.

    Args:
        left: (B, R, d) float32, the rows whose Gram rows are wanted.
        feats: (B, N, d) float32, row-major (the right operand is its transposed view).
        tile: ``T``; every matrix product is ``(T, d) @ (d, N)``.
        tiles_per_step: tiles per product call when B == 1.

    Yields:
        ``(r0, block)``: ``block`` is (B, r, N) float32, the Gram rows of ``left[:, r0:r0+r]``,
        a fresh tensor the caller may modify in place.
    """
    batch, n_left, d = left.shape
    n = feats.shape[1]
    # Always the transposed view of row-major features, so that every call passes BLAS the
    # same layout (a contiguous copy of Fᵀ would select another transpose mode).
    right = feats.transpose(1, 2)
    n_tiles = -(-n_left // tile)
    step = tiles_per_step if batch == 1 else 1
    for t0 in range(0, n_tiles, step):
        t1 = min(t0 + step, n_tiles)
        r0, r1 = t0 * tile, min(t1 * tile, n_left)
        rows = left[:, r0:r1]
        if r1 - r0 < (t1 - t0) * tile:  # the last tile, zero-padded to T rows
            padded = left.new_zeros(batch, (t1 - t0) * tile, d)
            padded[:, : r1 - r0] = rows
            rows = padded
        if batch == 1:
            # (m, T, d) @ (m, d, N): m tiles of one image, right operand broadcast.
            out = torch.bmm(rows.reshape(t1 - t0, tile, d), right.expand(t1 - t0, d, n))
            out = out.reshape(1, (t1 - t0) * tile, n)
        else:
            out = torch.bmm(rows, right)  # (B, T, d) @ (B, d, N): one tile of every image
        block = out[:, : r1 - r0]
        # Drop every reference before the next product, so only one step is alive at once.
        del out, rows
        yield r0, block
        del block


@dataclass(frozen=True)
class LostTensors:
    """Steps 1-8 of LOST for a batch, on the features' device.

    Attributes:
        degree: (B, N) int64, strictly positive off-diagonal Gram entries per patch.
        potentials: (B, K) int64, ``K = min(k_patches, N)``: per image, the patches in
            ascending-degree order with excluded patches moved last (stable: the lowest
            flat index first on ties). ``potentials[:, 0]`` is the seed.
        valid: (B, K) bool, True for the slots that are potentials (not excluded ones).
        similar: (B, K) bool, ``valid & (A[seed, potentials] > 0)``.
        expansion: (B, N) float32, sum of the similars' Gram rows, in slot order.
    """

    degree: torch.Tensor
    potentials: torch.Tensor
    valid: torch.Tensor
    similar: torch.Tensor
    expansion: torch.Tensor


def lost_degrees(feats: torch.Tensor, gram_bias: float, chunk_rows: int) -> torch.Tensor:
    """Step 2 for a batch: per patch, the strictly positive off-diagonal Gram entries (validated inputs).

    Args:
        feats: (B, N, d) float32, finite, contiguous, on the device to compute on.
        gram_bias: finite; added to every Gram entry before the sign test.
        chunk_rows: >= 1, Gram rows per image held by one step (rounded to whole tiles).

    Returns:
        (B, N) int64 degrees on the features' device.
    """
    batch, n, _ = feats.shape
    tile = tile_rows(n)
    tiles_per_step = max(1, int(chunk_rows) // tile)
    bias = float(gram_bias)
    degree = torch.empty(batch, n, dtype=torch.int64, device=feats.device)
    # float32 counts are exact up to 2**24; beyond, float64 (slower, never needed for images).
    count_dtype = torch.float32 if n < 2**24 else torch.float64
    with strict_fp32():
        for r0, block in _gram_row_blocks(feats, feats, tile, tiles_per_step):
            if bias != 0:
                block.add_(bias)
            # The diagonal entries of these rows sit at columns r0, r0+1, ...: the same
            # values as in the count, so subtracting their sign is zeroing the diagonal.
            diag_positive = torch.diagonal(block, offset=r0, dim1=1, dim2=2) > 0
            # Signs written over the block as 1.0 / 0.0 and summed in float: no extra
            # memory, and far faster than summing a bool tensor. Exact in any summation
            # order: every partial sum is an integer below 2**24.
            block.gt_(0)
            counts = block.sum(dim=-1, dtype=count_dtype).to(torch.int64)
            degree[:, r0 : r0 + block.shape[1]] = counts - diag_positive.to(torch.int64)
            del block
    return degree


def lost_expansion(
    feats: torch.Tensor,
    degree: torch.Tensor,
    k_patches: int,
    gram_bias: float,
    chunk_rows: int,
    excluded: torch.Tensor | None = None,
) -> LostTensors:
    """Steps 3-8 for a batch from its degrees: order, seed, potentials, similars, expansion map.

    Several-object LOST (:func:`lostreg.lost.lost_objects`) calls it once per object with the
    same degrees and the patches already taken ``excluded``.

    Args:
        feats: (B, N, d) float32 as in :func:`lost_degrees`.
        degree: (B, N) int64 from :func:`lost_degrees` on the same features and bias.
        k_patches: >= 1.
        gram_bias: finite; added to every Gram entry before any threshold or sum.
        chunk_rows: >= 1, Gram rows per image held by one step (rounded to whole tiles).
        excluded: (B, N) bool on the same device, or None: patches that are never seed or
            potential (they keep their degree and their column of the expansion map).

    Returns:
        A :class:`LostTensors` on the features' device (nothing copied to the host).
    """
    batch, n, _ = feats.shape
    tile = tile_rows(n)
    tiles_per_step = max(1, int(chunk_rows) // tile)
    bias = float(gram_bias)
    device = feats.device
    with strict_fp32():
        # Degrees are < N, so adding N puts every excluded patch after every allowed one;
        # the stable sort keeps ascending flat index within equal keys.
        key = degree if excluded is None else degree + excluded.to(torch.int64) * n
        k = min(int(k_patches), n)
        potentials = torch.sort(key, dim=1, stable=True).indices[:, :k]
        slots = torch.arange(k, device=device).unsqueeze(0)
        if excluded is None:
            valid = torch.ones(batch, k, dtype=torch.bool, device=device)
        else:
            allowed = n - excluded.sum(dim=1, keepdim=True)
            valid = slots < allowed

        pot_feats = torch.gather(feats, 1, potentials.unsqueeze(-1).expand(-1, -1, feats.shape[2]))
        expansion = torch.zeros(batch, n, dtype=torch.float32, device=device)
        similar = valid
        for r0, block in _gram_row_blocks(pot_feats, feats, tile, tiles_per_step):
            if bias != 0:
                block.add_(bias)
            if r0 == 0:
                # Slot 0 is the seed: its row decides which potentials are similar.
                similar = valid & (torch.gather(block[:, 0], 1, potentials) > 0)
            rows = block.shape[1]
            block.masked_fill_(~similar[:, r0 : r0 + rows].unsqueeze(-1), 0.0)
            # Left to right in slot order; adding a zero row changes nothing (x + 0 == x).
            for i in range(rows):
                expansion.add_(block[:, i])
            del block

    return LostTensors(
        degree=degree, potentials=potentials, valid=valid, similar=similar, expansion=expansion
    )


def lost_tensors(
    feats: torch.Tensor,
    k_patches: int,
    gram_bias: float,
    chunk_rows: int,
    excluded: torch.Tensor | None = None,
) -> LostTensors:
    """Degrees, order, similars and expansion map of a batch (validated inputs):
    :func:`lost_degrees` then :func:`lost_expansion`.

    Args:
        feats: (B, N, d) float32, finite, contiguous, on the device to compute on.
        k_patches: >= 1.
        gram_bias: finite; added to every Gram entry before any threshold or sum.
        chunk_rows: >= 1, Gram rows per image held by one step (rounded to whole tiles).
        excluded: (B, N) bool on the same device, or None. Excluded patches keep their
            degree and their column of the expansion map but are never seed or potential.
            Every image must have a patch that is not excluded.

    Returns:
        A :class:`LostTensors` on the features' device. Nothing is copied to the host and
        nothing waits for the device.
    """
    degree = lost_degrees(feats, gram_bias, chunk_rows)
    return lost_expansion(feats, degree, k_patches, gram_bias, chunk_rows, excluded)
