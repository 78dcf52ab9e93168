"""Tests of :mod:`lostreg.tokencut` against hand-made cases and a plain re-implementation.

Three kinds of inputs:

* Exact features: unit vectors whose cosines are exactly 1, 0.5 or 0 in float32 (rows of
  ±1 / 0 scaled to a power-of-two norm), so the strict ``> tau`` threshold, the
  self-loops and the degenerate graphs are tested on exact values.
* Structured features after the spec's section 5.1: background Voronoi regions with
  prototype directions, planted elliptical objects partly correlated with the background,
  random per-patch signal strength (many cosines near ``tau``), noise, outlier patches
  and, in some cases, all-zero feature vectors.
* Random features of low dimension: random graphs with scattered bipartitions.

``reference_tokencut`` below is a straightforward per-image implementation of the spec
(numpy / scipy, a breadth-first search for the 4-connected component). The reference
computes the cosine matrix with torch in float32, so the test does too; everything after
that is numpy.
"""

from __future__ import annotations

import dataclasses
from collections import deque

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from lostreg.boxes import patch_box_to_pixels
from lostreg.precision import strict_fp32
from lostreg.tokencut import (
    DEGENERATE_RTOL,
    EIG_SOLVERS,
    TokenCutResult,
    _gap_degenerate,
    _split_batch,
    _split_reference,
    _structureless,
    tokencut,
    tokencut_batch,
)

# --------------------------------------------------------------------- generators

# Exact 4-d directions: after L2 normalisation A = (.5, .5, .5, .5), E1..E3 are axes.
# A.E = 0.5, E_i.E_j = 0, every self-cosine 1.0 -- all exact in float32.
A = (1.0, 1.0, 1.0, 1.0)
E1, E2, E3 = (2.0, 0.0, 0.0, 0.0), (0.0, 2.0, 0.0, 0.0), (0.0, 0.0, 2.0, 0.0)


def exact_grid(
    rows: int, cols: int, cells: dict[tuple[int, int], tuple[float, ...]], bg=A
) -> torch.Tensor:
    """(rows*cols, 4) float32: ``bg`` everywhere except the given (row, col) cells."""
    return torch.tensor(
        [cells.get((r, c), bg) for r in range(rows) for c in range(cols)], dtype=torch.float32
    )


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def structured_features(rng: np.random.Generator, rows: int, cols: int, d: int = 384) -> np.ndarray:
    """(rows*cols, d) float32 planted-object features (spec 5.1)."""
    n = rows * cols
    rr, cc = (g.ravel() for g in np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"))
    k = int(rng.integers(2, 5))
    centres = np.stack([rng.uniform(0, rows, k), rng.uniform(0, cols, k)], axis=1)
    region = ((rr[:, None] - centres[:, 0]) ** 2 + (cc[:, None] - centres[:, 1]) ** 2).argmin(
        axis=1
    )
    protos = [_unit(rng.standard_normal(d)) for _ in range(k)]
    proto = np.stack([protos[r] for r in region])
    for _ in range(1 if rng.random() < 0.7 else 2):
        area = rng.uniform(0.03, 0.35) * n
        aspect = rng.uniform(0.5, 2.0)
        semi_r, semi_c = np.sqrt(area / np.pi * aspect), np.sqrt(area / np.pi / aspect)
        cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
        inside = ((rr - cy) / semi_r) ** 2 + ((cc - cx) / semi_c) ** 2 <= 1
        rho = rng.uniform(0.0, 0.6)  # correlation of the object with a background region
        proto[inside] = _unit(
            rho * protos[rng.integers(k)] + np.sqrt(1 - rho**2) * _unit(rng.standard_normal(d))
        )
    # Random signal strength against unit noise: same-region cosines spread over ~[0, 0.6].
    feats = rng.uniform(0.2, 1.2, size=(n, 1)) * proto + rng.standard_normal((n, d)) / np.sqrt(d)
    if rng.random() < 0.5:
        idx = rng.choice(n, size=int(rng.integers(1, 6)), replace=False)
        feats[idx] = rng.standard_normal((len(idx), d))  # outlier patches
    if rng.random() < 0.15:
        feats[rng.choice(n, size=int(rng.integers(1, 4)), replace=False)] = 0.0  # masked tokens
    return feats.astype(np.float32)


def random_features(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """(rows*cols, d) float32 Gaussian features of low dimension: a random graph."""
    feats = rng.standard_normal((rows * cols, int(rng.integers(2, 9))))
    if rng.random() < 0.3:
        feats[rng.choice(rows * cols, size=2, replace=False)] = 0.0
    return feats.astype(np.float32)


# ---------------------------------------------------------------- the reference


def _component(fg: np.ndarray, rows: int, cols: int, seed: int, diagonal: bool) -> np.ndarray:
    """Breadth-first search of the seed's component in a flat boolean mask."""
    steps = [(1, 0), (-1, 0), (0, 1), (0, -1)]
    if diagonal:
        steps += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    seen = np.zeros((rows, cols), dtype=bool)
    seen[divmod(seed, cols)] = True
    queue = deque([divmod(seed, cols)])
    while queue:
        r, c = queue.popleft()
        for dr, dc in steps:
            rr, cc = r + dr, c + dc
            if 0 <= rr < rows and 0 <= cc < cols and not seen[rr, cc] and fg[rr * cols + cc]:
                seen[rr, cc] = True
                queue.append((rr, cc))
    return seen


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def _resolve(x: np.ndarray, fg: np.ndarray) -> tuple[np.ndarray, int]:
    """Seed = first index of max |x|; invert the mask if the seed is not in it."""
    mags = np.abs(x)
    seed = 0
    for i in range(1, len(x)):
        if mags[i] > mags[seed]:
            seed = i
    return (fg if fg[seed] else ~fg), seed


def reference_tokencut(
    features: np.ndarray, rows: int, cols: int, tau: float = 0.2, eps: float = 1e-5
) -> dict:
    """TokenCut on one image, written from the spec (sections 1.3-1.6 and 5.3)."""
    n = rows * cols
    unit = F.normalize(torch.from_numpy(features), p=2.0, dim=1, eps=1e-12)
    with strict_fp32():
        cos = (unit @ unit.T).numpy()
    edges = cos > np.float32(tau)
    weights = edges.astype(np.float64)
    weights[~edges] = eps
    degree = np.diag(weights.sum(axis=1))
    evals, evecs = scipy.linalg.eigh(degree - weights, degree, subset_by_index=[1, 2])
    x = evecs[:, 0].copy()
    mean = x.sum() / n
    fg, seed = _resolve(x, x > mean)
    flipped = not (x > mean)[seed]
    if flipped:
        x = -x
    mask = _component(fg, rows, cols, seed, diagonal=False)
    off_diagonal = int(edges.sum() - np.trace(edges))
    lam2, lam3 = float(evals[0]), float(evals[1])
    degenerate = off_diagonal in (0, n * (n - 1)) or (lam3 - lam2) <= 1e-6 * max(lam3, 1e-12)

    # Variants of single conventions, to prove that the test cases can tell them apart.
    near_max = np.abs(x) >= (1 - 1e-6) * np.abs(x).max()
    variants = {
        "zero_split": _resolve(x, x > 0)[0],
        "median_split": _resolve(x, x > np.median(x))[0],
        "mask8": _component(fg, rows, cols, seed, diagonal=True),
        "near_tie": int(near_max.sum()) >= 2,
        "near_tie_other_component": bool((near_max & ~mask.ravel()).any()),
    }
    return {
        "x": x,
        "fg": fg,
        "seed": seed,
        "flipped": flipped,
        "mask": mask,
        "box": _box(mask),
        "eigenvalues": (lam2, lam3),
        "degenerate": degenerate,
        **variants,
    }


FIXED_KEYS = ("seed", "box", "degenerate", "eigenvalues")


def assert_fixed_degenerate(res: TokenCutResult, rows: int, cols: int) -> None:
    """The documented fixed result of a degenerate image."""
    assert res.degenerate is True
    assert res.seed == 0 and res.seed_rc == (0, 0)
    assert res.box == (0, 0, cols, rows)
    assert bool(res.mask.all()) and bool(res.bipartition.all())
    assert tuple(res.mask.shape) == (rows, cols)
    assert torch.equal(res.eigenvector, torch.zeros(rows, cols, dtype=torch.float64))


def assert_same_result(a: TokenCutResult, b: TokenCutResult, ctx: str = "") -> None:
    """Every field equal, bit for bit."""
    fields = ("seed", "box", "degenerate", "eigenvalues")
    assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields], ctx
    for name in ("mask", "bipartition", "eigenvector"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert ta.dtype == tb.dtype and torch.equal(ta, tb), f"{ctx}: {name}"


# -------------------------------------------------- scipy path == the reference


def _check_against_reference(feats: np.ndarray, rows: int, cols: int, tau: float, ctx: str) -> dict:
    ref = reference_tokencut(feats, rows, cols, tau=tau)
    res = tokencut(torch.from_numpy(feats), (rows, cols), tau=tau, eig="scipy")
    assert res.degenerate == ref["degenerate"], ctx
    assert res.eigenvalues == ref["eigenvalues"], ctx
    if ref["degenerate"]:
        assert_fixed_degenerate(res, rows, cols)
        return ref
    assert res.seed == ref["seed"], ctx
    assert torch.equal(res.eigenvector, torch.from_numpy(ref["x"].reshape(rows, cols))), ctx
    assert res.bipartition.numpy().ravel().tolist() == ref["fg"].tolist(), ctx
    assert np.array_equal(res.mask.numpy(), ref["mask"]), ctx
    assert res.box == ref["box"], ctx
    return ref


STAT_KEYS = (
    "cases",
    "degenerate",
    "flipped",
    "zero_split_differs",
    "median_split_differs",
    "8_connectivity_differs",
    "seed_near_tie",
    "multi_component",
)


def _new_stats() -> dict[str, int]:
    return dict.fromkeys(STAT_KEYS, 0)


def _tally(stats: dict, ref: dict) -> None:
    """Count which conventions a case tells apart (see the variants of the reference)."""
    if ref["degenerate"]:
        stats["degenerate"] += 1
        return
    stats["cases"] += 1
    stats["flipped"] += ref["flipped"]
    stats["zero_split_differs"] += not np.array_equal(ref["zero_split"], ref["fg"])
    stats["median_split_differs"] += not np.array_equal(ref["median_split"], ref["fg"])
    stats["8_connectivity_differs"] += not np.array_equal(ref["mask8"], ref["mask"])
    stats["seed_near_tie"] += ref["near_tie"]
    stats["multi_component"] += int(ref["fg"].sum()) > int(ref["mask"].sum())


def test_scipy_path_equals_reference_on_structured_graphs() -> None:
    rng = np.random.default_rng(1234)
    stats = _new_stats()
    for i in range(36):
        rows, cols = int(rng.integers(6, 15)), int(rng.integers(6, 17))
        tau = float(rng.choice([0.2, 0.2, 0.1, 0.3]))
        feats = structured_features(rng, rows, cols)
        _tally(
            stats,
            _check_against_reference(
                feats, rows, cols, tau, f"structured {i}: {rows}x{cols} tau={tau}"
            ),
        )
    # The cases must exercise each convention (else a wrong rule could pass unnoticed).
    assert (
        stats["cases"] >= 30 and stats["flipped"] >= 5 and stats["cases"] - stats["flipped"] >= 5
    ), stats
    assert stats["zero_split_differs"] >= 3 and stats["median_split_differs"] >= 3, stats
    assert stats["seed_near_tie"] >= 3 and stats["multi_component"] >= 3, stats
    assert stats["8_connectivity_differs"] >= 1, stats


def test_scipy_path_equals_reference_on_random_graphs() -> None:
    rng = np.random.default_rng(99)
    stats = _new_stats()
    for i in range(40):
        rows, cols = int(rng.integers(2, 9)), int(rng.integers(2, 9))
        if rows * cols < 3:
            continue
        tau = float(rng.choice([-0.3, 0.0, 0.2, 0.5]))
        feats = random_features(rng, rows, cols)
        _tally(
            stats,
            _check_against_reference(
                feats, rows, cols, tau, f"random {i}: {rows}x{cols} tau={tau}"
            ),
        )
    assert stats["cases"] >= 25, stats
    assert stats["zero_split_differs"] >= 3 and stats["median_split_differs"] >= 3, stats
    assert stats["8_connectivity_differs"] >= 3 and stats["multi_component"] >= 5, stats


# ------------------------------------------ torch solvers against the scipy path


def test_torch_solvers_agree_with_scipy_on_structured_graphs() -> None:
    """Boxes: torch64 on all non-degenerate cases (bar proven seed near-ties), torch32 on most."""
    rng = np.random.default_rng(7)
    grids = [(10, 12), (12, 16), (14, 18), (16, 20)]
    counts = {"cases": 0, "box64": 0, "box32": 0, "fg64": 0, "fg32": 0, "tie_exempt64": 0}
    for b in range(8):
        rows, cols = grids[b % len(grids)]
        feats = torch.from_numpy(np.stack([structured_features(rng, rows, cols) for _ in range(8)]))
        ref = tokencut_batch(feats, (rows, cols), eig="scipy")
        t64 = tokencut_batch(feats, (rows, cols), eig="torch64")
        t32 = tokencut_batch(feats, (rows, cols), eig="torch32")
        for i, (s, r64, r32) in enumerate(zip(ref, t64, t32)):
            ctx = f"batch {b} image {i} ({rows}x{cols}), eigenvalues {s.eigenvalues}"
            assert not s.degenerate, ctx  # the generator makes distinct objects
            assert not r64.degenerate and not r32.degenerate, ctx
            counts["cases"] += 1
            np.testing.assert_allclose(
                r64.eigenvalues, s.eigenvalues, rtol=1e-9, atol=1e-13, err_msg=ctx
            )
            # Rayleigh-Ritz values: raw float32 eigenvalues would be off by ~1e-3 relative here.
            np.testing.assert_allclose(
                r32.eigenvalues, s.eigenvalues, rtol=1e-5, atol=0, err_msg=ctx
            )
            counts["fg64"] += bool(torch.equal(r64.bipartition, s.bipartition))
            counts["fg32"] += bool(torch.equal(r32.bipartition, s.bipartition))
            counts["box32"] += r32.box == s.box
            if r64.box == s.box:
                counts["box64"] += 1
                # Same side chosen: the D-normalised vectors agree, sign included.
                torch.testing.assert_close(r64.eigenvector, s.eigenvector, rtol=0, atol=1e-7)
            else:
                # Only excusable by a seed near-tie across components (spec 5.2).
                mags = s.eigenvector.abs().reshape(-1)
                near = mags >= (1 - 1e-6) * mags.max()
                assert bool((near & ~s.mask.reshape(-1)).any()), ctx
                counts["tie_exempt64"] += 1
    n = counts["cases"]
    assert n == 64
    assert counts["box64"] + counts["tie_exempt64"] == n and counts["tie_exempt64"] <= 1, counts
    assert counts["fg64"] >= n - 1, counts
    assert counts["box32"] >= 0.9 * n, counts


@pytest.mark.parametrize("eig", EIG_SOLVERS)
def test_batch_equals_single_image(eig: str) -> None:
    rng = np.random.default_rng(5)
    rows, cols = 9, 13
    batch = [structured_features(rng, rows, cols) for _ in range(5)]
    batch.append(
        np.tile(rng.standard_normal((1, 384)), (rows * cols, 1)).astype(np.float32)
    )  # degenerate
    zeros = structured_features(rng, rows, cols)
    zeros[[3, 40, 41]] = 0.0
    batch.append(zeros)
    feats = torch.from_numpy(np.stack(batch))
    results = tokencut_batch(feats, (rows, cols), eig=eig)
    assert len(results) == len(batch)
    assert [r.degenerate for r in results] == [False] * 5 + [True, False]
    for i, res in enumerate(results):
        assert_same_result(res, tokencut(feats[i], (rows, cols), eig=eig), f"{eig} image {i}")
    # Batch order: a permuted batch permutes the results.
    flipped = tokencut_batch(feats.flip(0), (rows, cols), eig=eig)
    for i, res in enumerate(reversed(flipped)):
        assert_same_result(res, results[i], f"{eig} reversed image {i}")


def test_empty_batch() -> None:
    assert tokencut_batch(torch.zeros(0, 12, 8), (3, 4)) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    # Written without a GPU at hand: cuBLAS / cuSOLVER round differently from MKL, so a
    # cosine at tau or a seed near-tie may legitimately change one box.
    rng = np.random.default_rng(11)
    grid = (12, 16)
    feats = torch.from_numpy(np.stack([structured_features(rng, *grid) for _ in range(6)]))
    cpu = tokencut_batch(feats, grid)
    gpu = tokencut_batch(feats.cuda(), grid)
    assert all(g.mask.device.type == "cpu" and g.eigenvector.device.type == "cpu" for g in gpu)
    assert sum(g.box == c.box for g, c in zip(gpu, cpu)) >= len(cpu) - 1
    for g, c in zip(gpu, cpu):
        if torch.equal(g.bipartition, c.bipartition):
            torch.testing.assert_close(g.eigenvector, c.eigenvector, rtol=0, atol=1e-6)
    for eig in EIG_SOLVERS:
        batch = tokencut_batch(feats.cuda(), grid, eig=eig)
        for i, res in enumerate(batch):
            assert res.box == tokencut(feats[i].cuda(), grid, eig=eig).box, (eig, i)


# ----------------------------------------------------------------- degenerate


@pytest.mark.parametrize("eig", EIG_SOLVERS)
def test_uniform_features_complete_graph_is_degenerate(eig: str) -> None:
    # Identical directions at different scales: every cosine is ~1 > tau.
    scale = torch.linspace(0.5, 3.0, 20)[:, None]
    feats = scale * torch.randn(1, 32, generator=torch.Generator().manual_seed(0))
    res = tokencut(feats, (4, 5), eig=eig)
    assert_fixed_degenerate(res, 4, 5)
    # Complete graph with self-loops: L_sym = I - 11ᵀ/N, so λ2 = λ3 = 1.
    np.testing.assert_allclose(res.eigenvalues, (1.0, 1.0), rtol=0, atol=1e-12)
    assert patch_box_to_pixels(res.box, 16, (60, 75)) == (0, 0, 75, 60)  # the full image


@pytest.mark.parametrize("eig", EIG_SOLVERS)
def test_nothing_similar_empty_graph_is_degenerate(eig: str) -> None:
    # Orthonormal rows: every off-diagonal cosine is ~0 < tau, only self-loops remain.
    q, _ = torch.linalg.qr(
        torch.randn(40, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    )
    res = tokencut(q[:30].float(), (5, 6), eig=eig)
    assert_fixed_degenerate(res, 5, 6)
    # W = eps 11ᵀ + (1 - eps) I: λ2 = λ3 = N eps / (1 + (N-1) eps) with the self-loops
    # kept; dropping them would give 1 + 1/(N-1).
    n, eps = 30, 1e-5
    expected = n * eps / (1 + (n - 1) * eps)
    np.testing.assert_allclose(res.eigenvalues, (expected, expected), rtol=1e-9)


@pytest.mark.parametrize("eig", EIG_SOLVERS)
def test_pure_noise_without_edges_is_degenerate(eig: str) -> None:
    # High-dimensional Gaussian noise: cosines ~ N(0, 1/4096), none above tau = 0.2.
    feats = torch.randn(6 * 7, 4096, generator=torch.Generator().manual_seed(2))
    unit = F.normalize(feats, dim=1)
    assert float((unit @ unit.T).fill_diagonal_(0).max()) < 0.2
    assert_fixed_degenerate(tokencut(feats, (6, 7), eig=eig), 6, 7)


@pytest.mark.parametrize("eig", EIG_SOLVERS)
def test_all_zero_features_are_degenerate(eig: str) -> None:
    # Zero vectors normalise to 0: S = 0 everywhere, so no edge for tau >= 0 (empty
    # graph, self-loops eps) and every pair an edge for tau < 0 (complete graph).
    for tau in (0.2, 0.0, -0.1):
        res = tokencut(torch.zeros(12, 8), (3, 4), tau=tau, eig=eig)
        assert_fixed_degenerate(res, 3, 4)
        np.testing.assert_allclose(res.eigenvalues, (1.0, 1.0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("eig", EIG_SOLVERS)
def test_symmetric_spectrum_is_flagged_by_the_gap(eig: str) -> None:
    # Three equal 4-patch cliques (rows of E1, E2, E3, mutually orthogonal): edges exist,
    # so only the gap test can flag it; by symmetry λ2 = λ3 exactly.
    feats = exact_grid(3, 4, {(r, c): (E1, E2, E3)[r] for r in range(3) for c in range(4)})
    res = tokencut(feats, (3, 4), eig=eig)
    assert_fixed_degenerate(res, 3, 4)
    lam2, lam3 = res.eigenvalues
    assert lam3 - lam2 <= DEGENERATE_RTOL * lam3 and lam2 > 1e-6
    # Control: unequal cliques (6, 4 and 2 patches) have a clear gap and an object.
    cells = {(r, c): E1 for r in range(3) for c in range(4)}
    cells.update({(2, 0): E2, (2, 1): E2, (2, 2): E2, (2, 3): E2, (0, 0): E3, (0, 1): E3})
    control = tokencut(exact_grid(3, 4, cells), (3, 4), eig=eig)
    assert not control.degenerate
    assert control.box in ((0, 2, 4, 3), (0, 0, 2, 1))  # one of the two small cliques


@pytest.mark.parametrize("eig", EIG_SOLVERS)
def test_empty_graph_is_degenerate_even_with_a_spectral_gap(eig: str) -> None:
    # Two orthogonal patches and ten zero vectors: no pair is similar (empty graph), but
    # the self-loops differ (1 vs eps), so λ2 < λ3 clearly and only the structure rule
    # flags the image.
    feats = torch.zeros(12, 4)
    feats[3, 0] = feats[8, 1] = 1.0
    res = tokencut(feats, (3, 4), eig=eig)
    lam2, lam3 = res.eigenvalues
    assert lam3 - lam2 > 1e-3 * lam3
    assert_fixed_degenerate(res, 3, 4)


def test_structure_rule() -> None:
    n = 5
    eye = torch.eye(n, dtype=torch.bool)
    complete_no_loops = ~eye
    one_pair = eye.clone()
    one_pair[1, 3] = True
    all_but_one = torch.ones(n, n, dtype=torch.bool)
    all_but_one[2, 0] = False
    cases = torch.stack(
        [
            eye,
            ~eye,
            complete_no_loops | eye,
            torch.zeros(n, n, dtype=torch.bool),
            one_pair,
            all_but_one,
        ]
    )
    assert _structureless(cases).tolist() == [True, True, True, True, False, False]


def test_gap_rule_boundary() -> None:
    # lam3 picked so that lam3 - lam2 equals the threshold exactly in float64.
    lam3 = 1.4210854715202004e-08
    lam2 = lam3 - DEGENERATE_RTOL * lam3
    assert lam3 - lam2 == DEGENERATE_RTOL * lam3
    assert _gap_degenerate(lam2, lam3)  # "<=": the boundary is degenerate
    assert not _gap_degenerate(float(np.nextafter(lam2, 0.0)), lam3)
    assert _gap_degenerate(1.0, 1.0)
    assert _gap_degenerate(0.5, 0.5 + DEGENERATE_RTOL * 0.25)  # well inside
    assert not _gap_degenerate(0.5, 0.5 + 2 * DEGENERATE_RTOL * 0.5)
    assert _gap_degenerate(0.0, 1e-19)  # the 1e-12 floor on λ3
    assert not _gap_degenerate(0.0, 1e-17)


@pytest.mark.parametrize("eig", EIG_SOLVERS)
def test_zero_vectors_among_structure_are_solvable(eig: str) -> None:
    rng = np.random.default_rng(3)
    feats = structured_features(rng, 8, 9)
    feats[[0, 10, 11]] = 0.0
    res = tokencut(torch.from_numpy(feats), (8, 9), eig=eig)
    assert not res.degenerate
    assert bool(torch.isfinite(res.eigenvector).all())
    ref = reference_tokencut(feats, 8, 9)
    assert res.box == ref["box"] and np.array_equal(res.mask.numpy(), ref["mask"])
    if eig == "scipy":
        assert res.seed == ref["seed"]  # torch solvers may pick another near-tied seed


# -------------------------------------------------------------- conventions


@pytest.mark.parametrize("eig", EIG_SOLVERS)
def test_threshold_is_strict(eig: str) -> None:
    # Object E1 on a 2x2 block, background A; cos(A, E1) is exactly 0.5.
    block = {(1, 2): E1, (1, 3): E1, (2, 2): E1, (2, 3): E1}
    feats = exact_grid(4, 5, block)
    at = tokencut(feats, (4, 5), tau=0.5, eig=eig)  # 0.5 > 0.5 is false: two cliques
    assert not at.degenerate
    assert at.box == (2, 1, 4, 3)  # max exclusive: cols 2-3, rows 1-2
    assert at.mask.sum() == 4 and at.seed_rc in block
    below = tokencut(feats, (4, 5), tau=0.4999, eig=eig)  # every pair is an edge
    assert_fixed_degenerate(below, 4, 5)
    # tau is compared in float32, like the reference's float32 array against a Python
    # float: 0.49999999 rounds to 0.5, so cos == 0.5 is still no edge.
    assert np.float32(0.49999999) == np.float32(0.5)
    rounded = tokencut(feats, (4, 5), tau=0.49999999, eig=eig)
    assert not rounded.degenerate and rounded.box == at.box
    # The same at the self-cosine: with tau = 1.0 not even self-loops are edges.
    ones = tokencut(exact_grid(4, 5, {}), (4, 5), tau=1.0, eig=eig)
    assert_fixed_degenerate(ones, 4, 5)


@pytest.mark.parametrize("eig", EIG_SOLVERS)
def test_four_connectivity_and_box(eig: str) -> None:
    # Two E1 patches touching only diagonally: one bipartition, two components.
    feats = exact_grid(4, 5, {(1, 1): E1, (2, 2): E1})
    res = tokencut(feats, (4, 5), tau=0.5, eig=eig)
    assert not res.degenerate
    assert (
        res.bipartition.sum() == 2 and bool(res.bipartition[1, 1]) and bool(res.bipartition[2, 2])
    )
    assert res.mask.sum() == 1 and res.seed_rc in ((1, 1), (2, 2))
    r, c = res.seed_rc
    assert res.box == (c, r, c + 1, r + 1)  # 8-connectivity would give a 2x2 box


def test_row_major_grid() -> None:
    # E1 at flat indices 3 and 4: on 3x3 that is (1, 0), (1, 1); on a 1x9 strip (0, 3), (0, 4).
    feats = torch.tensor([A, A, A, E1, E1, A, A, A, A], dtype=torch.float32)
    square = tokencut(feats, (3, 3), tau=0.5)
    strip = tokencut(feats, (1, 9), tau=0.5)
    assert square.box == (0, 1, 2, 2) and square.seed in (3, 4)
    assert strip.box == (3, 0, 5, 1)
    assert tuple(square.mask.shape) == (3, 3) and tuple(strip.mask.shape) == (1, 9)


def test_split_invert_rule_with_exact_ties_at_the_mean() -> None:
    # Means are exactly 0. Row 0: seed 0 (x = -6) lies below the mean, so the mask is
    # inverted and index 1 (x == mean) joins the foreground; "-x > -mean" would leave it
    # out. Row 1: no flip, the tie stays background. Row 2: |x| tie between indices 0
    # and 2: the first one is the seed.
    x = np.array(
        [[-6.0, 0.0, 2.0, 2.0, 2.0], [6.0, 0.0, -2.0, -2.0, -2.0], [-5.0, 1.0, 5.0, -1.0, 0.0]]
    )
    expected = [
        ([6.0, 0.0, -2.0, -2.0, -2.0], [True, True, False, False, False], 0),
        ([6.0, 0.0, -2.0, -2.0, -2.0], [True, False, False, False, False], 0),
        ([5.0, -1.0, -5.0, 1.0, 0.0], [True, False, False, True, True], 0),
    ]
    xs, fgs, seeds = _split_batch(torch.from_numpy(x))
    for i, (ex, efg, eseed) in enumerate(expected):
        rx, rfg, rseed = _split_reference(x[i])
        assert rx.tolist() == ex and rfg.tolist() == efg and rseed == eseed, i
        assert xs[i].tolist() == ex and fgs[i].tolist() == efg and int(seeds[i]) == eseed, i


def test_mean_split_is_arithmetic_not_zero_or_median() -> None:
    x = np.array([10.0, 1.0, 1.5, -0.5, -1.0, -1.0])  # mean 10/6, median 0.25
    _, fg, seed = _split_reference(x)
    assert seed == 0 and fg.tolist() == [True, False, False, False, False, False]
    _, fgb, _ = _split_batch(torch.from_numpy(x)[None])
    assert fgb[0].tolist() == fg.tolist()


# ---------------------------------------------------------------- the result


@pytest.mark.parametrize("eig", EIG_SOLVERS)
def test_result_types_and_invariants(eig: str) -> None:
    rng = np.random.default_rng(8)
    rows, cols = 7, 11
    feats = structured_features(rng, rows, cols)
    res = tokencut(torch.from_numpy(feats), (rows, cols), eig=eig)
    assert isinstance(res, TokenCutResult)
    assert type(res.seed) is int and type(res.degenerate) is bool
    assert isinstance(res.box, tuple) and all(type(v) is int for v in res.box)
    assert isinstance(res.eigenvalues, tuple) and all(type(v) is float for v in res.eigenvalues)
    assert res.mask.dtype == torch.bool and tuple(res.mask.shape) == (rows, cols)
    assert res.bipartition.dtype == torch.bool and tuple(res.bipartition.shape) == (rows, cols)
    assert res.eigenvector.dtype == torch.float64 and tuple(res.eigenvector.shape) == (rows, cols)
    assert all(t.device.type == "cpu" for t in (res.mask, res.bipartition, res.eigenvector))
    assert res.seed_rc == divmod(res.seed, cols) and all(type(v) is int for v in res.seed_rc)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.seed = 0  # type: ignore[misc]
    # Seed: in the mask, largest |x|; mask within the bipartition; box = mask extent.
    x = res.eigenvector.reshape(-1)
    assert bool(res.mask.reshape(-1)[res.seed])
    assert float(x.abs()[res.seed]) == float(x.abs().max())
    assert not bool((res.mask & ~res.bipartition).any())
    rr, cc = torch.nonzero(res.mask, as_tuple=True)
    assert res.box == (int(cc.min()), int(rr.min()), int(cc.max()) + 1, int(rr.max()) + 1)
    # Sign: the foreground is the side above the mean of the flipped vector.
    above = x > x.mean()
    assert bool((res.bipartition.reshape(-1) | ~above).all())
    # D-normalised: xᵀ D x = 1 with the degrees of the binary graph.
    unit = F.normalize(torch.from_numpy(feats), dim=1)
    with strict_fp32():
        cos = unit @ unit.T
    degree = torch.where(cos > 0.2, 1.0, 1e-5).double().sum(1)
    assert abs(float((x * x * degree).sum()) - 1.0) < 1e-6
    assert res.eigenvalues[0] <= res.eigenvalues[1]


def test_float64_and_numpy_inputs_match_float32() -> None:
    rng = np.random.default_rng(4)
    feats = structured_features(rng, 6, 8)
    ref = tokencut(torch.from_numpy(feats), (6, 8))
    strided = torch.from_numpy(np.ascontiguousarray(feats.T)).T  # non-contiguous view
    grad = torch.from_numpy(feats).requires_grad_(True)
    for other in (torch.from_numpy(feats).double(), feats, strided, grad):
        assert_same_result(tokencut(other, (6, 8)), ref)
    assert_same_result(tokencut_batch(feats[None], (6, 8))[0], ref)


def test_precision_flags_restored() -> None:
    matmul = torch.backends.cuda.matmul
    attr = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    before = getattr(matmul, attr)
    tokencut(torch.randn(12, 4), (3, 4))
    assert getattr(matmul, attr) == before


# --------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("features", "grid", "kwargs", "match"),
    [
        (torch.ones(12), (3, 4), {}, "2-D"),
        (torch.ones(1, 12, 3), (3, 4), {}, "2-D"),
        (torch.ones(12, 0), (3, 4), {}, "channel"),
        (torch.ones(12, 3), (3, 3), {}, "rows"),
        (torch.ones(12, 3), (0, 12), {}, "positive"),
        (torch.ones(12, 3), (3.5, 4), {}, "positive"),
        (torch.ones(12, 3), (3, 4, 1), {}, "grid_hw"),
        (torch.ones(2, 3), (1, 2), {}, "at least 3"),
        (torch.tensor([[1.0, float("nan")]] * 12), (3, 4), {}, "NaN"),
        (torch.tensor([[1.0, float("inf")]] * 12), (3, 4), {}, "infinite"),
        (torch.full((12, 2), 1e300, dtype=torch.float64), (3, 4), {}, "infinite"),
        (torch.ones(12, 3, dtype=torch.bool), (3, 4), {}, "real"),
        (torch.ones(12, 3, dtype=torch.complex64), (3, 4), {}, "real"),
        (torch.ones(12, 3), (3, 4), {"tau": float("nan")}, "tau"),
        (torch.ones(12, 3), (3, 4), {"tau": float("inf")}, "tau"),
        (torch.ones(12, 3), (3, 4), {"tau": "0.2"}, "tau"),
        (torch.ones(12, 3), (3, 4), {"tau": True}, "tau"),
        (torch.ones(12, 3), (3, 4), {"eps": 0.0}, "eps"),
        (torch.ones(12, 3), (3, 4), {"eps": -1e-5}, "eps"),
        (torch.ones(12, 3), (3, 4), {"eps": float("nan")}, "eps"),
        (torch.ones(12, 3), (3, 4), {"eig": "lobpcg"}, "eig"),
        (torch.ones(12, 3), (3, 4), {"eig": "TORCH64"}, "eig"),
        (torch.ones(12, 3), (3, 4), {"eig": None}, "eig"),
    ],
)
def test_invalid_inputs_raise(
    features: torch.Tensor, grid: tuple, kwargs: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        tokencut(features, grid_hw=grid, **kwargs)


@pytest.mark.parametrize(
    ("features", "grid", "match"),
    [
        (torch.ones(12, 3), (3, 4), "3-D"),
        (torch.ones(2, 12, 3), (4, 4), "rows"),
        (torch.tensor([[[0.0, float("nan")]] * 12] * 2), (3, 4), "NaN"),
    ],
)
def test_invalid_batch_inputs_raise(features: torch.Tensor, grid: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tokencut_batch(features, grid_hw=grid)


def test_non_tensor_raises_type_error() -> None:
    with pytest.raises(TypeError):
        tokencut([[1.0, 0.0]] * 4, grid_hw=(2, 2))  # type: ignore[arg-type]
