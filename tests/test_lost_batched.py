"""Tests of :func:`lostreg.lost.lost_batch`, the tiled core and ``lost``'s bounded memory.

Three kinds of checks:

* Against an independent full-Gram oracle (the pre-tiling algorithm, plus ``excluded``):
  exact on integer-valued features, whose dot products, biases and sums are exact in
  float32 (so ties and values that are exactly 0 are tested for real); decisions only on
  float features far from every threshold.
* Bitwise self-consistency: every ``chunk_size`` and every batch composition must give the
  same degrees, similars and expansion maps, bit for bit (the exactness rule of
  :mod:`lostreg.lost_tiles`, on CPU).
* Memory: ``lost`` at 20,736 patches, in a subprocess, must stay far below what an N x N
  float32 matrix needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.ndimage
import torch

import lostreg.lost_tiles as lost_tiles
from lostreg.lost import LostResult, _pack_to_host, lost, lost_batch

# ------------------------------------------------------------------------- oracle


def oracle(
    feats: torch.Tensor, rows: int, cols: int, k: int, bias: float, excluded: torch.Tensor | None = None
) -> dict:
    """LOST from the whole Gram matrix, as lostreg computed it before tiling (spec section 3)."""
    n = rows * cols
    gram = feats.float() @ feats.float().T + bias
    off = gram.clone()
    off.fill_diagonal_(0)
    degree = (off > 0).sum(1)
    allowed = [i for i in range(n) if excluded is None or not bool(excluded[i])]
    order = sorted(allowed, key=lambda i: (int(degree[i]), i))
    seed = order[0]
    potentials = order[:k]
    similars = [p for p in potentials if float(gram[seed, p]) > 0]
    expansion = gram[similars].sum(0).reshape(rows, cols) if similars else torch.zeros(rows, cols)
    labels, _ = scipy.ndimage.label((expansion > 0).numpy())
    sr, sc = divmod(seed, cols)
    if labels[sr, sc]:
        mask = labels == labels[sr, sc]
    else:
        mask = np.zeros((rows, cols), dtype=bool)
        mask[sr, sc] = True
    rr, cc = np.nonzero(mask)
    box = (int(cc.min()), int(rr.min()), int(cc.max()) + 1, int(rr.max()) + 1)
    return {
        "degree": degree.tolist(),
        "seed": seed,
        "similars": similars,
        "expansion": expansion,
        "mask": mask.tolist(),
        "box": box,
        "seed_in_mask": bool(labels[sr, sc]),
    }


def assert_matches_oracle(res: LostResult, exp: dict, exact: bool, ctx: str = "") -> None:
    assert res.degree.tolist() == exp["degree"], ctx
    assert res.seed == exp["seed"], ctx
    assert res.similars.tolist() == exp["similars"], ctx
    assert res.mask.tolist() == exp["mask"], ctx
    assert res.box == exp["box"], ctx
    assert res.seed_in_mask == exp["seed_in_mask"], ctx
    if exact:
        assert torch.equal(res.expansion, exp["expansion"]), ctx
    else:
        torch.testing.assert_close(res.expansion, exp["expansion"], rtol=1e-5, atol=1e-4)


def assert_identical(a: LostResult, b: LostResult, ctx: str = "") -> None:
    """Every field equal, the expansion map bit for bit (not merely ==: -0.0 vs 0.0 too)."""
    assert (a.seed, a.box, a.seed_in_mask) == (b.seed, b.box, b.seed_in_mask), ctx
    assert torch.equal(a.similars, b.similars), ctx
    assert torch.equal(a.mask, b.mask), ctx
    assert torch.equal(a.degree, b.degree), ctx
    assert torch.equal(a.expansion.view(torch.int32), b.expansion.view(torch.int32)), ctx


def integer_batch(gen: torch.Generator, batch: int, rows: int, cols: int, d: int) -> torch.Tensor:
    """Tie-heavy features: values in {-1, 0, 1}, so many dot products are exactly 0 and
    many degrees are equal; a blob of a second prototype gives multi-patch masks."""
    feats = torch.randint(-1, 2, (batch, rows * cols, d), generator=gen).float()
    proto = torch.randint(-1, 2, (batch, 1, d), generator=gen).float() * 2
    blob = torch.rand(batch, rows * cols, 1, generator=gen) < 0.3
    return torch.where(blob, feats + proto, feats)


def far_from_thresholds(feats: torch.Tensor, k: int, bias: float, excluded: torch.Tensor | None = None) -> bool:
    """Float cases only: every decision value is farther from 0 than a bound on its fp32
    rounding error (computed in float64), so the fp32 oracle and the tiled computation
    cannot land on different sides of a threshold."""
    f = feats.double()
    unit = 2.0**-24
    gram = f @ f.T + bias
    norms = f.norm(dim=1)
    err = 2 * (f.shape[1] + 2) * unit * (norms[:, None] * norms[None, :] + abs(bias))
    if bool((gram.abs() <= err).any()):
        return False
    n = f.shape[0]
    degree = ((gram > 0).sum(1) - (gram.diagonal() > 0).long()).tolist()
    allowed = [i for i in range(n) if excluded is None or not bool(excluded[i])]
    order = sorted(allowed, key=lambda i: (degree[i], i))
    sims = [p for p in order[:k] if gram[order[0], p] > 0]
    if not sims:
        return True
    sum_err = err[sims].sum(0) + 2 * len(sims) * unit * gram[sims].abs().sum(0)
    return bool((gram[sims].sum(0).abs() > sum_err).all())


CHUNKS = [1, 127, 128, 129, 300, 10**9, None]


# ------------------------------------------------------------- oracle agreement


@pytest.mark.parametrize("tile", [1, 2, 3, 5, 128])
def test_integer_features_match_oracle_for_every_tiling(monkeypatch: pytest.MonkeyPatch, tile: int) -> None:
    # Small tiles force many tiles, padded last tiles and multi-tile steps on small grids;
    # with exact arithmetic the tile size cannot change any value.
    monkeypatch.setattr(lost_tiles, "TILE_ROWS", tile)
    gen = torch.Generator().manual_seed(100 + tile)
    stats = {"multi": 0, "degenerate": 0}
    for case in range(12):
        rows, cols = int(torch.randint(1, 8, (1,), generator=gen)), int(torch.randint(1, 8, (1,), generator=gen))
        d = int(torch.randint(1, 4, (1,), generator=gen))
        k = [1, 3, 7, 100][case % 4]
        bias = [0.0, 0.5, -1.0, 1.0, -3.0, 2.0][case % 6]
        feats = integer_batch(gen, 3, rows, cols, d)
        chunk = [1, tile, 2 * tile + 1, None][case % 4]
        results = lost_batch(feats, (rows, cols), k, bias, chunk_size=chunk)
        for b, res in enumerate(results):
            exp = oracle(feats[b], rows, cols, k, bias)
            assert_matches_oracle(res, exp, exact=True, ctx=f"tile {tile} case {case} image {b}")
            # One image: several tiles per product, the padded last tile among them.
            alone = lost(feats[b], (rows, cols), k, bias, chunk_size=3 * tile + 1)
            assert_matches_oracle(alone, exp, exact=True, ctx=f"tile {tile} case {case} image {b} alone")
            stats["multi"] += int(res.mask.sum() > 1)
            stats["degenerate"] += int(not res.seed_in_mask)
    assert stats["multi"] >= 5 and stats["degenerate"] >= 1, stats


def test_float_features_match_oracle() -> None:
    gen = torch.Generator().manual_seed(7)
    checked = 0
    while checked < 6:
        rows, cols, d = [(3, 4, 8), (9, 11, 16), (17, 19, 32)][checked % 3]
        bias = [0.0, 0.25, -0.5][checked % 3]
        feats = torch.randn(rows * cols, d, generator=gen) + 0.2
        if not far_from_thresholds(feats, 100, bias):
            continue
        checked += 1
        assert_matches_oracle(lost(feats, (rows, cols), 100, bias), oracle(feats, rows, cols, 100, bias), exact=False)


def test_huge_norm_outlier_rows() -> None:
    # Artifact tokens: a few rows with norms 1000x the rest dominate their dot products.
    gen = torch.Generator().manual_seed(11)
    rows, cols, d = 14, 15, 24
    feats = torch.randn(2, rows * cols, d, generator=gen) + 0.1
    outliers = torch.tensor([3, 77, 150, 151])
    feats[:, outliers] *= 1000.0
    assert all(far_from_thresholds(f, 100, 0.0) for f in feats)
    batch = lost_batch(feats, (rows, cols))
    for b in range(2):
        assert_matches_oracle(batch[b], oracle(feats[b], rows, cols, 100, 0.0), exact=False)
        assert_identical(batch[b], lost(feats[b], (rows, cols), chunk_size=1))
    # Excluding the outliers: the same rules, with them skipped in the order.
    excluded = torch.zeros(2, rows * cols, dtype=torch.bool)
    excluded[:, outliers] = True
    masked = lost_batch(feats, (rows, cols), excluded=excluded)
    for b in range(2):
        assert masked[b].seed not in outliers.tolist()
        assert not set(masked[b].similars.tolist()) & set(outliers.tolist())
        assert_matches_oracle(masked[b], oracle(feats[b], rows, cols, 100, 0.0, excluded[b]), exact=False)


def test_negative_bias_degenerate_seed_in_a_batch() -> None:
    # b = -1 on BG/OBJ features (BG.BG = 1): BG's degree is 0 and nothing is similar to it.
    bg, obj = [1.0, 0.0], [-1.0, 1.0]
    plain = torch.tensor([bg] * 12)
    with_obj = plain.clone()
    with_obj[5] = with_obj[6] = torch.tensor(obj)
    feats = torch.stack([with_obj, plain + 1.0])  # second image: all (2, 1), degree 11
    res = lost_batch(feats, (3, 4), gram_bias=-1.0)
    assert res[0].seed == 0 and not res[0].seed_in_mask
    assert res[0].similars.numel() == 0 and torch.equal(res[0].expansion, torch.zeros(3, 4))
    assert res[0].box == (0, 0, 1, 1)
    assert res[1].seed == 0 and res[1].seed_in_mask and res[1].box == (0, 0, 4, 3)
    for b in range(2):
        assert_matches_oracle(res[b], oracle(feats[b], 3, 4, 100, -1.0), exact=True)


@pytest.mark.parametrize("grid", [(1, 1), (1, 2), (2, 1), (1, 9), (9, 1)])
def test_tiny_grids_and_k_larger_than_n(grid: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(grid[0] * 10 + grid[1])
    n = grid[0] * grid[1]
    feats = integer_batch(gen, 4, *grid, 3)
    for k in (1, n, n + 5, 1000):
        res = lost_batch(feats, grid, k_patches=k)
        for b in range(4):
            assert_matches_oracle(res[b], oracle(feats[b], *grid, k, 0.0), exact=True)
            assert_identical(res[b], lost(feats[b], grid, k_patches=k))
    one = lost(torch.tensor([[2.0, -1.0]]), (1, 1))
    assert (one.seed, one.box, one.seed_in_mask, one.degree.tolist()) == (0, (0, 0, 1, 1), True, [0])


# ------------------------------------------------------- chunks and batch composition


def test_chunk_size_never_changes_a_bit() -> None:
    # 19 x 23 = 437 patches: 4 tiles of 128, the last one partial. Float features so
    # that the values really depend on how they are computed.
    gen = torch.Generator().manual_seed(3)
    rows, cols = 19, 23
    feats = torch.randn(2, rows * cols, 16, generator=gen) + 0.15
    for bias in (0.0, -0.7):
        ref = lost_batch(feats, (rows, cols), gram_bias=bias, chunk_size=CHUNKS[0])
        for chunk in CHUNKS[1:]:
            got = lost_batch(feats, (rows, cols), gram_bias=bias, chunk_size=chunk)
            for b in range(2):
                assert_identical(ref[b], got[b], f"bias {bias} chunk {chunk} image {b}")
        for b in range(2):
            for chunk in (1, 300, 10**9):
                assert_identical(ref[b], lost(feats[b], (rows, cols), gram_bias=bias, chunk_size=chunk))


def test_batch_composition_never_changes_a_bit() -> None:
    gen = torch.Generator().manual_seed(4)
    rows, cols = 16, 21  # 336 patches: 3 tiles
    feats = torch.randn(5, rows * cols, 40, generator=gen)
    feats[1, 17] *= 300.0  # an outlier row in one image only
    full = lost_batch(feats, (rows, cols), k_patches=50, gram_bias=0.1)
    singles = [lost(f, (rows, cols), k_patches=50, gram_bias=0.1) for f in feats]
    pairs = lost_batch(feats[[3, 1]], (rows, cols), k_patches=50, gram_bias=0.1, chunk_size=1)
    for b in range(5):
        assert_identical(full[b], singles[b], f"image {b}")
    assert_identical(pairs[0], full[3])
    assert_identical(pairs[1], full[1])


def test_matches_previous_implementation_on_ties_and_zero_entries() -> None:
    # The hand-made shape of the tie rule: two degree-0 patches with a dot product of 0.
    o1, o2, bg = (-1.0, 1.0, 0.0), (-1.0, -1.0, 0.0), (1.0, 0.0, 0.0)
    feats = [bg] * 12
    feats[9], feats[2] = o1, o2
    res = lost_batch(torch.tensor([feats, feats]), (3, 4), chunk_size=1)
    for r in res:
        assert r.degree[2] == 0 and r.degree[9] == 0
        assert r.seed == 2 and r.similars.tolist() == [2] and r.box == (2, 0, 3, 1)


# ------------------------------------------------------------------------ excluded


def test_excluded_none_and_all_false_are_the_plain_result() -> None:
    gen = torch.Generator().manual_seed(5)
    feats = integer_batch(gen, 3, 6, 7, 3)
    plain = lost_batch(feats, (6, 7))
    none_excluded = lost_batch(feats, (6, 7), excluded=torch.zeros(3, 42, dtype=torch.bool))
    for a, b in zip(plain, none_excluded):
        assert_identical(a, b)
    assert_identical(plain[0], lost(feats[0], (6, 7), excluded=np.zeros(42, dtype=bool)))


def test_excluded_patches_are_skipped_in_the_order() -> None:
    gen = torch.Generator().manual_seed(6)
    rows, cols = 7, 8
    checked_seed_moves = 0
    for case in range(8):
        feats = integer_batch(gen, 2, rows, cols, 3)
        plain = lost_batch(feats, (rows, cols), k_patches=10)
        excluded = torch.rand(2, rows * cols, generator=gen) < 0.4
        excluded[:, [p.seed for p in plain]] = True  # force the seed to move
        res = lost_batch(feats, (rows, cols), k_patches=10, excluded=excluded)
        for b in range(2):
            r, ex = res[b], excluded[b]
            assert not bool(ex[r.seed])
            assert not any(bool(ex[s]) for s in r.similars.tolist())
            # Degrees still count every patch; the expansion map covers excluded ones.
            assert torch.equal(r.degree, plain[b].degree)
            allowed = [i for i in range(rows * cols) if not bool(ex[i])]
            order = sorted(allowed, key=lambda i: (int(r.degree[i]), i))
            assert r.seed == order[0]
            assert set(r.similars.tolist()) <= set(order[:10])
            assert_matches_oracle(r, oracle(feats[b], rows, cols, 10, 0.0, ex), exact=True, ctx=f"case {case}")
            checked_seed_moves += int(r.seed != plain[b].seed)
    assert checked_seed_moves == 16


def test_excluded_leaves_fewer_potentials_than_k() -> None:
    # Only patches 0 and 5 allowed: the potentials are those two, whatever k.
    feats = torch.ones(12, 2)
    excluded = torch.ones(12, dtype=torch.bool)
    excluded[[0, 5]] = False
    res = lost(feats, (3, 4), k_patches=100, excluded=excluded)
    assert res.seed == 0 and res.similars.tolist() == [0, 5]
    assert res.mask.all()  # every patch positive in A[0] + A[5]: the whole grid


def test_all_excluded_raises() -> None:
    with pytest.raises(ValueError, match="every patch"):
        lost(torch.ones(6, 2), (2, 3), excluded=torch.ones(6, dtype=torch.bool))
    excluded = torch.zeros(3, 6, dtype=torch.bool)
    excluded[2] = True
    with pytest.raises(ValueError, match="every patch of image 2"):
        lost_batch(torch.ones(3, 6, 2), (2, 3), excluded=excluded)


@pytest.mark.parametrize(
    ("excluded", "error", "match"),
    [
        (torch.zeros(6), ValueError, "bool"),
        (torch.zeros(5, dtype=torch.bool), ValueError, "shape"),
        (torch.zeros(1, 6, dtype=torch.bool), ValueError, "shape"),
        ([False] * 6, TypeError, "excluded"),
    ],
)
def test_excluded_validation(excluded: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        lost(torch.ones(6, 2), (2, 3), excluded=excluded)  # type: ignore[arg-type]


# ------------------------------------------------------------- argument validation


@pytest.mark.parametrize(
    ("features", "grid", "kwargs", "match"),
    [
        (torch.ones(6, 3), (2, 3), {}, "3-D"),
        (torch.ones(2, 6), (2, 3), {}, "3-D"),
        (torch.ones(2, 6, 3), (2, 2), {}, "rows"),
        (torch.ones(2, 6, 3), (0, 6), {}, "positive"),
        (torch.ones(2, 6, 3), (2, 3), {"k_patches": 0}, "k_patches"),
        (torch.ones(2, 6, 3), (2, 3), {"chunk_size": 0}, "chunk_size"),
        (torch.ones(2, 6, 3), (2, 3), {"chunk_size": -4}, "chunk_size"),
        (torch.ones(2, 6, 3), (2, 3), {"chunk_size": 2.5}, "chunk_size"),
        (torch.ones(2, 6, 3), (2, 3), {"chunk_size": True}, "chunk_size"),
        (torch.ones(2, 6, 3), (2, 3), {"gram_bias": float("inf")}, "gram_bias"),
        (torch.tensor([[[1.0, float("nan")]] * 6] * 2), (2, 3), {}, "NaN"),
        (torch.ones(2, 6, 3, dtype=torch.bool), (2, 3), {}, "real"),
        (torch.ones(2, 6, 3), (2, 3), {"excluded": torch.zeros(6, dtype=torch.bool)}, "shape"),
    ],
)
def test_lost_batch_invalid_arguments(features: torch.Tensor, grid: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        lost_batch(features, grid, **kwargs)


def test_lost_chunk_size_validation_and_types() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        lost(torch.ones(6, 3), (2, 3), chunk_size=0)
    with pytest.raises(TypeError):
        lost_batch([[[1.0]]], (1, 1))  # type: ignore[arg-type]


def test_empty_batch_and_numpy_float64_input() -> None:
    assert lost_batch(torch.ones(0, 6, 3), (2, 3)) == []
    gen = torch.Generator().manual_seed(8)
    feats = integer_batch(gen, 2, 3, 4, 3)
    ref = lost_batch(feats, (3, 4), gram_bias=0.5)
    for other in (feats.double(), feats.double().numpy()):
        for a, b in zip(ref, lost_batch(other, (3, 4), gram_bias=0.5)):
            assert_identical(a, b)


def test_result_tensors_are_independent_cpu_tensors() -> None:
    res = lost_batch(torch.randn(2, 12, 4, generator=torch.Generator().manual_seed(9)), (3, 4))
    for r in res:
        assert r.degree.dtype == torch.int64 and tuple(r.degree.shape) == (12,)
        assert r.similars.dtype == torch.int64 and r.expansion.dtype == torch.float32
        assert tuple(r.expansion.shape) == (3, 4) and r.mask.dtype == torch.bool
        assert type(r.seed) is int and all(type(v) is int for v in r.box)
    # Results of one batch must not share storage (a caller editing one edits no other).
    assert res[0].degree.untyped_storage().data_ptr() != res[1].degree.untyped_storage().data_ptr()


def test_pack_to_host_round_trips_dtypes() -> None:
    # The one-transfer packing used for device tensors, exercised on CPU tensors.
    gen = torch.Generator().manual_seed(10)
    tensors = [
        torch.randint(-5, 10**12, (3, 7), generator=gen),
        torch.rand(3, 5, generator=gen) > 0.5,
        torch.randn(3, 11, generator=gen),
        torch.randint(0, 9, (3, 2, 2), generator=gen),
    ]
    out = _pack_to_host(tensors)
    for t, o in zip(tensors, out):
        assert o.dtype == t.dtype and o.shape == t.shape and torch.equal(o, t)


# --------------------------------------------------------------------- chunk choice


def test_auto_chunk_follows_available_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert lost_tiles.available_memory_bytes(cpu) > 0
    monkeypatch.setattr(lost_tiles, "available_memory_bytes", lambda device: 8 * 2**30)
    # 1 GiB budget capped at 256 MiB: 256 MiB / (4 bytes * 2 images * 50k) rows.
    assert lost_tiles.auto_chunk_rows(cpu, 2, 50_000) == (256 * 2**20) // (4 * 2 * 50_000)
    monkeypatch.setattr(lost_tiles, "available_memory_bytes", lambda device: 1000)
    assert lost_tiles.auto_chunk_rows(cpu, 1, 50_000) == 1
    # Starved of memory the result is still the same (one tile per step).
    feats = torch.randn(300, 8, generator=torch.Generator().manual_seed(12))
    assert_identical(lost(feats, (15, 20)), lost(feats, (15, 20), chunk_size=10**6))


# ---------------------------------------------------------------------------- memory

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    import torch
    from lostreg.lost import lost
    rows, cols, d = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    feats = torch.randn(rows * cols, d, generator=torch.Generator().manual_seed(0))
    feats[:, 0] += 0.5
    lost(torch.randn(64, d), (8, 8))  # warm-up: allocator and BLAS buffers
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    res = lost(feats, (rows, cols))
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"extra_kib": after - before, "seconds": seconds, "seed": res.seed}))
    """
)


def test_lost_peak_memory_is_far_below_a_full_gram_matrix() -> None:
    rows, cols, d = 144, 144, 16  # N = 20,736: a float32 N x N matrix is 1.7 GB
    n = rows * cols
    # One thread keeps the time predictable on a shared machine; memory does not depend on it.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(rows), str(cols), str(d)],
        capture_output=True, text=True, timeout=120, check=True, env=env,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    extra = report["extra_kib"] * 1024  # Linux reports ru_maxrss in KiB
    full_gram = 4 * n * n
    # The pre-tiling lost() held the Gram matrix and a copy of it (> 2 * full_gram).
    assert extra < full_gram / 4, (extra / 2**20, report)
    assert 0 <= report["seed"] < n


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_decisions() -> None:
    gen = torch.Generator().manual_seed(13)
    feats = integer_batch(gen, 4, 19, 23, 3)  # exact arithmetic: bitwise equal on any device
    cpu = lost_batch(feats, (19, 23), gram_bias=0.5)
    for chunk in (1, 200, None):
        gpu = lost_batch(feats.cuda(), (19, 23), gram_bias=0.5, chunk_size=chunk)
        for a, b in zip(cpu, gpu):
            assert_identical(a, b)
