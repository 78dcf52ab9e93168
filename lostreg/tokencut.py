"""TokenCut: normalised-cut object discovery on one image's patch features.

Pure and I/O-free, like :mod:`lostreg.lost`: features in, patch-unit box out. Converting
the box to pixels of the original image is :func:`lostreg.boxes.patch_box_to_pixels`
(multiply by the patch size, clip x2 / y2 to the unpadded width / height), exactly as the
reference does.

Behaviour (lostreg TokenCut specification, sections 1.3-1.6; reference:
YangtaoWANG95/TokenCut, ``object_discovery.ncut``), for one image with ``N = rows*cols``
patch features ``F`` (prefix tokens already dropped, row-major):

1. L2-normalise every row of ``F`` (``x / max(||x||, 1e-12)``, float32), so an all-zero
   feature vector stays zero.
2. Cosine similarities ``S = F Fᵀ``, float32, TF32 disabled (:func:`strict_fp32`).
3. Binary graph ``W_ij = 1.0 if S_ij > tau else eps`` (strict), float64. The diagonal is
   kept: a normal patch has a self-loop of weight 1 (``S_ii = 1 > tau``), an all-zero one
   of weight ``eps``. ``tau`` is compared in float32, as in the reference (a float32
   array against a Python float rounds the float to float32 in numpy and in torch).
4. Degrees ``d = W.sum(1)``, self-loop and ``eps`` entries included; ``d >= N*eps > 0``,
   so the graph is connected and every degree is positive.
5. Second-smallest generalised eigenvector ``x`` of ``(D - W) x = λ D x``
   (D-normalised, ``xᵀ D x = 1``), and the eigenvalues ``λ2 <= λ3``.
6. Bipartition ``fg = x > mean(x)`` (strict, arithmetic mean). Seed = first index of
   ``max |x|``. If the seed is not in ``fg``, the boolean mask is inverted (so entries
   exactly equal to the mean join the foreground only in this branch) and ``x`` is negated.
7. The 4-connected component of ``fg`` containing the seed (``scipy.ndimage.label``
   default structure) is the mask; the box is ``(min col, min row, max col + 1,
   max row + 1)`` of the mask, max exclusive (the LOST box rule).

Eigen-solvers (``eig=``), and their measured box parity with the reference on the spec's
synthetic planted-object graphs (spec 5.2; non-degenerate cases):

* ``"scipy"``: the reference call ``scipy.linalg.eigh(D - W, D, subset_by_index=[1, 2])``
  (LAPACK ``dsygvx``) on the CPU in float64. Identical to the reference given the same
  LAPACK; the parity path. Images of a batch are solved one by one.
* ``"torch64"`` (default): ``torch.linalg.eigh`` of ``L_sym = I - D^-1/2 W D^-1/2`` in
  float64 on the features' device, ``x = D^-1/2 u2`` (also D-normalised). Bipartition
  identical in 310/310 cases, box identical in 629/630 = 99.8%. The one miss is a seed
  near-tie: ``|x|`` values within ~1e-6 relative of each other lying in two different
  components, which no solver other than the identical LAPACK call reproduces.
* ``"torch32"``: the same in float32 (opt-in speed mode). Bipartition identical in
  276/310 (89%), box in 621/630 = 98.6%: the graphs have tiny spectral gaps
  (``λ3 - λ2`` down to ~4e-6), and the float32 eigenvector error grows as ~1e-7 / gap,
  flipping patches close to the mean. ``L_sym`` is built in float64 and only the
  eigen-solve runs in float32; ``x``, the split and the reported eigenvalues are float64.

On this package's own test set (64 structured graphs of 120-320 patches,
``tests/test_tokencut.py``) torch64 gives the scipy box on 64/64 and torch32 on 63/64
(bipartition 56/64).

``torch.lobpcg`` is deliberately not offered: in float32 its default tolerance exceeds
``λ2`` and it converges to wrong vectors (spec 5.2).

Deviations from the reference (lostreg rules):

* **Degenerate spectra.** An image is ``degenerate`` when ``λ3 - λ2 <= 1e-6 *
  max(λ3, 1e-12)``, or when its graph has no structure: every off-diagonal ``W`` entry is
  1 (complete graph: all patches alike) or every one is ``eps`` (empty graph: no pair of
  patches similar). The Fiedler vector is then not unique and the reference's box
  depends on the LAPACK build. lostreg returns instead a fixed result: ``seed = 0``,
  ``mask`` and ``bipartition`` the whole grid, ``box = (0, 0, cols, rows)`` (the whole
  padded grid; :func:`~lostreg.boxes.patch_box_to_pixels` clips it to the full image
  ``[0, 0, W, H]``), and an all-zero ``eigenvector``. ``eigenvalues`` still holds the
  computed ``(λ2, λ3)``. The same rule applies to every solver. The structural test
  (the empty graph is a lostreg addition to the spec's complete-graph test) does not
  depend on eigenvalue precision; with a uniform diagonal both graphs have exactly
  ``λ2 = λ3`` and the gap test alone would catch them in exact arithmetic.
* **torch32 eigenvalues** are not the float32 eigenvalues, whose absolute error (~1e-7)
  exceeds the degeneracy threshold, but float64 Rayleigh-Ritz values of ``L_sym`` on the
  span of the exact null vector ``sqrt(d)`` and the first float32 eigenvectors (8 in
  all; cost ``O(N²)`` per vector). Their error is quadratic in the vectors' error, so the
  gap test flags the same images as in float64. The eigenvector itself stays the raw
  float32 one (upcast), as specified.
* **Prefix tokens**: the caller drops CLS *and* register tokens; the reference drops
  CLS only, inside ``ncut``.
* Only the default binary graph is implemented (the ``--no-binary-graph`` ablation is
  not), and TF32 is always off (the published runs may have had TF32 cosines; the spec
  measured no box change from that on 90/90 graphs).
* Seed near-ties keep the plain first-index ``argmax`` (the spec measured that a
  "lowest index among near-maxima" rule changes the reference's own boxes).

Confidence (lostreg extension): each result has a ``score``, ``max(0, 1 - λ2)``, one minus the
relaxed normalised-cut value of its split (0 for a degenerate image). ``λ2`` is the value of the
best relaxed cut (``xᵀ(D - W)x / xᵀDx`` at the Fiedler vector): near 0 when the graph falls
apart into two weakly linked groups of patches, near 1 when no cut is much cheaper than
another. Measured on generated scenes, ranking boxes by it gives a higher class-agnostic AP50
than image order (docs/methods.md).

Several objects (lostreg extension, :func:`tokencut_objects`, the MaskCut rule of CutLER,
Wang et al. 2023): the first object is the plain TokenCut result; after each object the
patches of its mask leave the graph and the normalised cut is solved again on the graph of
the remaining patches (their own degrees; the same ``tau``, ``eps`` and solver), with the split,
seed and flip rules above applied to the remaining patches (the mean over them, the seed
among them). It stops at ``objects`` objects, when fewer than 3 patches remain, or when the cut
is degenerate (the rule above, on the remaining graph); a degenerate first image keeps its
fixed whole-grid result and nothing more. With the torch solvers each round is one batched
eigen-solve: the remaining patches of every image are ordered first and the removed ones
take the place of the padding (``4·I``, decoupled). With ``scipy`` each round is the
reference's call on the remaining graph. MaskCut's other changes (the corner rule, argmax
after a flip, 480x480 resizing) are not applied.

Batching: :func:`tokencut_batch` builds the graphs and Laplacians of ``B`` same-grid
images and makes one batched ``torch.linalg.eigh`` call on the device; the split, seed
and flip are batched tensor ops, and one device-to-host copy per batch brings back the
eigenvectors, bipartitions, seeds, eigenvalues and flags. Only the connected components
(``scipy.ndimage.label``) run per image on the CPU. With ``eig="scipy"`` the cosine
matrices come to the CPU in one copy and each image is solved there.

Each image's result equals :func:`tokencut` on that image alone. On the CPU this holds
bit for bit (tested): :func:`tokencut` is the batch code with ``B = 1``, and because
MKL's eigen-solver rounds differently with a matrix's memory alignment, every Laplacian
is padded to ``M = N`` rounded up to a multiple of 8 nodes, the pad block being ``4·I``
(decoupled, eigenvalue 4 above ``L_sym``'s spectrum in ``[0, 2]``), so that each matrix
of a batch sits on the alignment of a lone one. On CUDA (not tested here: no GPU was
available), cuBLAS / cuSOLVER may pick batch-size dependent kernels, e.g. batched Jacobi
``syevj`` for ``N <= 32``, so bit equality is not guaranteed there.

Complexity per image: ``O(N² d)`` for the cosines and ``O(N³)`` for the eigen-solve
(``torch.linalg.eigh`` computes all ``N`` eigenpairs; scipy's subset driver only two).
Memory: a few ``N x N`` arrays per image, alive together: ``S`` (float32) and
``S > tau`` (bool), the padded ``W`` / ``L_sym`` (float64, ``M x M``, built in place) and
``torch.linalg.eigh``'s eigenvector matrix and workspace (float64, or float32 plus a
float32 copy of ``L_sym`` for ``"torch32"``). One float64 ``N x N`` is 13.5 MB at
``N = 1300``; budget about 5 of them per image, i.e. roughly 0.5 GB for a batch of 8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Mapping

import numpy as np
import scipy.linalg
import scipy.ndimage
import torch
import torch.nn.functional as F

from lostreg.boxes import mask_box
from lostreg.knobs import FeatureKey
from lostreg.methods.tokencut import EIG_SOLVERS, EigSolver, TokenCutConfig
from lostreg.precision import strict_fp32

__all__ = [
    "DEGENERATE_RTOL",
    "EIG_SOLVERS",
    "EigSolver",
    "TokenCutResult",
    "run_tokencut",
    "run_tokencut_objects",
    "tokencut",
    "tokencut_batch",
    "tokencut_objects",
]

#: Relative spectral gap ``(λ3 - λ2) / max(λ3, 1e-12)`` at or below which an image is
#: flagged degenerate (spec 5.3).
DEGENERATE_RTOL = 1e-6
_GAP_FLOOR = 1e-12
_NORMALIZE_EPS = 1e-12  # F.normalize's default, as in the reference
_PAD_MULTIPLE = 8  # Laplacians are padded to a multiple of 8 nodes (see _fiedler_torch)
_RITZ_SIZE = 8  # subspace size of the torch32 eigenvalue refinement


@dataclass(frozen=True, eq=False)
class TokenCutResult:
    """Output of :func:`tokencut` for one image. All tensors are on the CPU.

    Attributes:
        seed: Flat row-major index of the seed patch (first index of ``max |x|``), in
            ``[0, rows*cols)``; 0 when ``degenerate``.
        mask: (rows, cols) bool. The 4-connected component of ``bipartition`` that
            contains the seed; the whole grid when ``degenerate``.
        box: ``(x1, y1, x2, y2)`` in patch units: columns then rows, max exclusive, i.e.
            ``(min col, min row, max col + 1, max row + 1)`` of ``mask``;
            ``(0, 0, cols, rows)`` when ``degenerate``.
        eigenvector: (rows, cols) float64. The Fiedler vector ``x`` of
            ``(D - W) x = λ D x``, D-normalised (``xᵀ D x = 1``), sign-flipped as the
            reference does so that the seed's side (``x > mean``, or its complement) is
            the foreground. All zeros when ``degenerate``.
        bipartition: (rows, cols) bool. The whole foreground side of the split (all its
            components), before the seed's component is taken; the whole grid when
            ``degenerate``.
        degenerate: True when the Fiedler vector is not well defined (see the module
            docstring); the fixed result above is returned then.
        eigenvalues: ``(λ2, λ3)``, the 2nd and 3rd smallest eigenvalues of the
            normalised problem, ascending, as Python floats.
        score: TokenCut's confidence in this object, ``max(0, 1 - λ2)`` in [0, 1]; 0 when
            ``degenerate`` (see the module docstring).
    """

    seed: int
    mask: torch.Tensor
    box: tuple[int, int, int, int]
    eigenvector: torch.Tensor
    bipartition: torch.Tensor
    degenerate: bool
    eigenvalues: tuple[float, float]
    score: float = 0.0

    @property
    def seed_rc(self) -> tuple[int, int]:
        """The seed as ``(row, col)`` in the patch grid."""
        row, col = divmod(self.seed, int(self.mask.shape[1]))
        return int(row), int(col)


# ------------------------------------------------------------------------- inputs


def _real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def _check_options(tau: float, eps: float, eig: str) -> tuple[float, float, str]:
    """Validate ``tau``, ``eps`` and ``eig``; return them normalised."""
    tau = _real(tau, "tau")
    eps = _real(eps, "eps")
    if eps <= 0:
        # eps = 0 can disconnect the graph (λ1 = λ2 = 0, an arbitrary answer; spec 5.3).
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if not isinstance(eig, str) or eig not in EIG_SOLVERS:
        raise ValueError(f"eig must be one of {', '.join(EIG_SOLVERS)}, got {eig!r}")
    return tau, eps, eig


def _as_features(features: torch.Tensor, ndim: int) -> torch.Tensor:
    """Validate features of ``ndim`` dimensions; return them detached, in float32."""
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    features = features.detach()
    layout = "(rows*cols, d)" if ndim == 2 else "(B, rows*cols, d)"
    if features.dim() != ndim:
        raise ValueError(f"features must be {ndim}-D {layout}, got shape {tuple(features.shape)}")
    if features.dtype == torch.bool or features.is_complex():
        raise ValueError(f"features must be real numbers, got dtype {features.dtype}")
    if features.shape[-1] < 1:
        raise ValueError(
            f"features must have at least one channel, got shape {tuple(features.shape)}"
        )
    # Cast before the finiteness check: float64 values beyond fp32 range become inf.
    features = features.to(torch.float32)
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN or infinite values (in float32)")
    return features


def _check_grid(grid_hw: tuple[int, int], num_patches: int) -> tuple[int, int]:
    if len(grid_hw) != 2:
        raise ValueError(f"grid_hw must be (rows, cols), got {grid_hw!r}")
    rows, cols = (int(v) for v in grid_hw)
    if (rows, cols) != tuple(grid_hw) or rows < 1 or cols < 1:
        raise ValueError(f"grid_hw must be two positive integers, got {grid_hw!r}")
    if rows * cols != num_patches:
        raise ValueError(
            f"grid {rows}x{cols} has {rows * cols} patches but features has {num_patches} rows"
        )
    if num_patches < 3:
        # The reference asks for eigenpairs 1 and 2: a graph needs at least 3 nodes.
        raise ValueError(f"grid_hw must have at least 3 patches, got {grid_hw!r}")
    return rows, cols


# -------------------------------------------------------------------------- graph


def _cosine(features: torch.Tensor) -> torch.Tensor:
    """(B, N, d) float32 -> (B, N, N) float32 cosine similarities, in true fp32."""
    unit = F.normalize(features, p=2.0, dim=-1, eps=_NORMALIZE_EPS)
    with strict_fp32():
        return unit @ unit.transpose(-1, -2)


def _structureless(adjacency: torch.Tensor, nodes: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N, N) bool ``S > tau`` -> (B,) bool: every or no off-diagonal pair is an edge.

    ``nodes``: (B,) int64, the number of graph nodes per image when the adjacency holds only
    those (the other rows and columns all False); default all N.
    """
    n = adjacency.shape[-1] if nodes is None else nodes
    off_diagonal = adjacency.sum(dim=(-2, -1)) - adjacency.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    return (off_diagonal == 0) | (off_diagonal == n * (n - 1))


def _gap_degenerate(lam2: float, lam3: float) -> bool:
    """The spectral-gap half of the degeneracy rule, for one image."""
    return (lam3 - lam2) <= DEGENERATE_RTOL * max(lam3, _GAP_FLOOR)


def _split_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Bipartition, seed and sign of one Fiedler vector, in numpy as the reference does.

    Args:
        x: (N,) float64 eigenvector, any sign and scale.

    Returns:
        ``(x, fg, seed)``: ``x`` negated if the split was flipped, (N,) bool foreground,
        and the seed index (first index of ``max |x|``; always in ``fg``).
    """
    fg = x > x.mean()
    seed = int(np.argmax(np.abs(x)))
    if not fg[seed]:
        # Invert the mask rather than test -x > -mean: ties x == mean join fg here only.
        fg = np.logical_not(fg)
        x = -x
    return x, fg, seed


def _split_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched :func:`_split_reference` on the device.

    Args:
        x: (B, N) float64 eigenvectors.

    Returns:
        ``(x, fg, seed)``: (B, N) float64 sign-resolved vectors, (B, N) bool foregrounds,
        (B,) int64 seeds.
    """
    fg = x > x.mean(dim=-1, keepdim=True)
    seed = x.abs().argmax(dim=-1)  # first index of the maximum, like numpy
    keep = fg.gather(-1, seed[:, None])
    # Invert the mask rather than test -x > -mean: ties x == mean join fg here only.
    fg = torch.where(keep, fg, ~fg)
    x = torch.where(keep, x, -x)
    return x, fg, seed


def _split_kept(x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_split_batch` on the patches that remain in each image's graph (several-object rounds).

    Args:
        x: (B, N) float64 eigenvectors, 0 on removed patches.
        keep: (B, N) bool, the patches still in the graph (at least one per image).

    Returns:
        ``(x, fg, seed)`` as :func:`_split_batch`; ``fg`` is False on removed patches and the
        seed is a kept patch (first index of the largest ``|x|`` among them).
    """
    mean = torch.where(keep, x, torch.zeros_like(x)).sum(dim=-1, keepdim=True) / keep.sum(dim=-1, keepdim=True)
    fg = (x > mean) & keep
    seed = torch.where(keep, x.abs(), torch.full_like(x, -1.0)).argmax(dim=-1)
    stays = fg.gather(-1, seed[:, None])
    # Invert within the kept patches: ties x == mean join fg in this branch only, as above.
    fg = torch.where(stays, fg, keep & ~fg)
    x = torch.where(stays, x, -x)
    return x, fg, seed


# ------------------------------------------------------------------------ solvers


def _fiedler_scipy(
    cosine: np.ndarray, tau: float, eps: float
) -> tuple[np.ndarray, tuple[float, float], bool]:
    """The reference graph and eigen-call for one image.

    Args:
        cosine: (N, N) float32 cosine similarities.

    Returns:
        ``(x, (λ2, λ3), structureless)`` with ``x`` the (N,) float64 D-normalised
        eigenvector of the 2nd smallest eigenvalue.
    """
    adjacency = cosine > tau  # numpy rounds the Python float tau to float32 here
    w = np.where(adjacency, 1.0, eps)
    d = np.diag(w.sum(axis=1))
    evals, evecs = scipy.linalg.eigh(d - w, d, subset_by_index=[1, 2])
    structureless = bool(_structureless(torch.from_numpy(adjacency)[None])[0])
    return evecs[:, 0], (float(evals[0]), float(evals[1])), structureless


def _fiedler_torch(
    adjacency: torch.Tensor, eps: float, solver: str, active: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched Fiedler vectors through the normalised Laplacian.

    Args:
        adjacency: (B, N, N) bool ``S > tau``.
        solver: ``"torch64"`` or ``"torch32"``.
        active: (B, N) bool, the nodes of each image's graph, all before the others (the
            removed patches of several-object TokenCut, ordered last); None: all N.
            Inactive nodes leave the graph: no edge, no degree, a ``4·I`` block like the pad.

    Returns:
        ``(x, lam)``: (B, N) float64 D-normalised eigenvectors ``x = D^-1/2 u2`` (0 on
        inactive nodes) and (B, 2) float64 ``(λ2, λ3)``, ascending.
    """
    batch, n = adjacency.shape[0], adjacency.shape[-1]
    # MKL's eigen-solver rounds differently depending on each matrix's 16-byte alignment,
    # and torch packs a batch as (B, n, n) contiguous. Rounding n up to a multiple of 8
    # puts every matrix of a batch on the alignment of a lone one (so a batch and a
    # single image give the same bits). The pad block is 4·I: decoupled from L_sym, with
    # eigenvalue 4 above L_sym's spectrum (within [0, 2]), so it never reaches index 1-2.
    n_pad = -(-n // _PAD_MULTIPLE) * _PAD_MULTIPLE
    lap = torch.zeros(batch, n_pad, n_pad, dtype=torch.float64, device=adjacency.device)
    w = lap[:, :n, :n]
    w.fill_(eps).masked_fill_(adjacency, 1.0)  # W = 1.0 where S > tau, else eps
    if active is None:
        r = w.sum(dim=-1).rsqrt()  # degrees are >= N*eps > 0
    else:
        w.mul_(active[:, :, None] & active[:, None, :])  # removed nodes leave the graph
        degrees = w.sum(dim=-1)  # >= n_active*eps > 0 on active nodes, 0 on the others
        r = torch.where(active, degrees.rsqrt(), torch.zeros_like(degrees))
    # L_sym = I - D^-1/2 W D^-1/2, built in place over W.
    w.mul_(r[..., :, None]).mul_(r[..., None, :]).neg_()
    diagonal = lap.diagonal(dim1=-2, dim2=-1)
    diagonal[:, :n].add_(1.0)
    diagonal[:, n:].fill_(4.0)
    if active is not None:
        diagonal[:, :n].masked_fill_(~active, 4.0)  # decoupled, like the pad
    if solver == "torch64":
        evals, evecs = torch.linalg.eigh(lap)
        u = evecs[..., :n, 1]
        lam = evals[..., 1:3]
    else:
        _, evecs = torch.linalg.eigh(lap.to(torch.float32))
        u = evecs[..., :n, 1].to(torch.float64)
        lam = _ritz_eigenvalues(lap, evecs, r)
    return r * u, lam


def _ritz_eigenvalues(lap: torch.Tensor, evecs32: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """float64 ``(λ2, λ3)`` from float32 eigenvectors, by Rayleigh-Ritz.

    float32 eigenvalues carry absolute errors near 1e-7, far above the degeneracy
    threshold. The float32 vectors also mix with the null vector (``λ1 = 0``, often only
    ~1e-5 below ``λ2``). So the subspace of the exact float64 null vector
    ``sqrt(d)`` and the next ``k - 1`` float32 eigenvectors is orthonormalised in float64
    and ``L_sym`` is projected onto it: the Ritz values' errors are quadratic in the
    vectors' components outside the subspace. Cost ``O(k N²)`` per image.

    Args:
        lap: (B, M, M) float64 padded ``L_sym`` (the graph's N nodes first).
        evecs32: (B, M, M) float32 eigenvectors of ``lap``, ascending eigenvalues.
        r: (B, N) float64 ``d^-1/2`` (0 on nodes removed from the graph).

    Returns:
        (B, 2) float64 ``(λ2, λ3)``, ascending.
    """
    n = r.shape[-1]
    k = min(_RITZ_SIZE, n)
    basis = evecs32[..., :, :k].to(torch.float64)
    null = torch.zeros_like(basis[..., 0])
    # sqrt(d): L_sym sqrt(d) = 0 exactly (0 on nodes removed from the graph, where r = 0).
    null[..., :n] = torch.where(r > 0, r.reciprocal(), torch.zeros_like(r))
    basis[..., 0] = null
    q, _ = torch.linalg.qr(basis)
    projected = q.transpose(-1, -2) @ (lap @ q)
    ritz = torch.linalg.eigvalsh((projected + projected.transpose(-1, -2)) / 2)
    return ritz[..., 1:3]


# ----------------------------------------------------------------------- assembly


def _assemble(
    x: np.ndarray,
    fg: np.ndarray,
    seed: int,
    eigenvalues: tuple[float, float],
    degenerate: bool,
    rows: int,
    cols: int,
) -> TokenCutResult:
    """Seed component, box and result object for one image, on the CPU."""
    if degenerate:
        full = torch.ones(rows, cols, dtype=torch.bool)
        return TokenCutResult(
            seed=0,
            mask=full,
            box=(0, 0, cols, rows),
            eigenvector=torch.zeros(rows, cols, dtype=torch.float64),
            bipartition=full.clone(),
            degenerate=True,
            eigenvalues=eigenvalues,
            score=0.0,
        )
    fg_grid = np.ascontiguousarray(fg.reshape(rows, cols), dtype=bool)
    seed_row, seed_col = divmod(seed, cols)
    # scipy's default structuring element in 2-D is the 4-neighbourhood cross.
    labels, _ = scipy.ndimage.label(fg_grid)
    component = labels == labels[seed_row, seed_col]  # the seed is always in fg
    box = mask_box(component)
    return TokenCutResult(
        seed=seed,
        mask=torch.from_numpy(component),
        box=box,
        eigenvector=torch.from_numpy(np.array(x, dtype=np.float64).reshape(rows, cols)),
        bipartition=torch.from_numpy(fg_grid),
        degenerate=False,
        eigenvalues=eigenvalues,
        score=cut_confidence(eigenvalues[0]),
    )


def cut_confidence(lam2: float) -> float:
    """TokenCut's confidence in a (non-degenerate) split: ``max(0, 1 - λ2)`` (module docstring)."""
    return max(0.0, 1.0 - float(lam2))


def _run(
    features: torch.Tensor, rows: int, cols: int, tau: float, eps: float, eig: str, objects: int = 1
) -> list[list[TokenCutResult]]:
    """TokenCut on validated (B, N, d) float32 features of one grid: per image, 1 to ``objects``
    results in discovery order (the first is the single-object result)."""
    cosine = _cosine(features)
    if eig == "scipy":
        found = []
        for cos in cosine.cpu().numpy():
            x, lam, structureless = _fiedler_scipy(cos, tau, eps)
            x, fg, seed = _split_reference(x)
            degenerate = structureless or _gap_degenerate(*lam)
            objs = [_assemble(x, fg, seed, lam, degenerate, rows, cols)]
            if objects > 1:
                objs += _scipy_rounds(cos, objs[0], tau, eps, objects - 1, rows, cols)
            found.append(objs)
        return found

    adjacency = cosine > tau  # float32 comparison, as in the reference
    del cosine
    structureless = _structureless(adjacency)
    x, lam = _fiedler_torch(adjacency, eps, eig)
    gap = lam[:, 1] - lam[:, 0]
    degenerate = structureless | (gap <= DEGENERATE_RTOL * lam[:, 1].clamp_min(_GAP_FLOOR))
    x, fg, seed = _split_batch(x)
    found = [[result] for result in _assemble_batch(x, fg, seed, lam, degenerate, rows, cols)]
    if objects > 1:
        _torch_rounds(adjacency, eps, eig, found, objects, rows, cols)
    return found


def _assemble_batch(x: torch.Tensor, fg: torch.Tensor, seed: torch.Tensor, lam: torch.Tensor,
                    degenerate: torch.Tensor, rows: int, cols: int) -> list[TokenCutResult]:
    """Results of a batch from its device tensors ((B, N) x and fg, (B,) seed, (B, 2) lam, (B,) degenerate)."""
    # One device-to-host copy for the batch; seeds (< 2**53) are exact in float64.
    n = x.shape[-1]
    host = (
        torch.cat(
            [
                x,
                fg.to(torch.float64),
                seed.to(torch.float64)[:, None],
                lam,
                degenerate.to(torch.float64)[:, None],
            ],
            dim=-1,
        )
        .cpu()
        .numpy()
    )
    results = []
    for row in host:
        results.append(
            _assemble(
                row[:n],
                row[n : 2 * n] != 0,
                int(row[2 * n]),
                (float(row[2 * n + 1]), float(row[2 * n + 2])),
                bool(row[2 * n + 3] != 0),
                rows,
                cols,
            )
        )
    return results


def _torch_rounds(adjacency: torch.Tensor, eps: float, eig: str, found: list[list[TokenCutResult]],
                  objects: int, rows: int, cols: int) -> None:
    """Further objects of a batch with the torch solvers (module docstring); appends to ``found``.

    Args:
        adjacency: (B, N, N) bool ``S > tau`` of the whole images, on the device.
        found: per image, the first result; further objects are appended in place.
    """
    batch, n = adjacency.shape[0], adjacency.shape[-1]
    device = adjacency.device
    taken = torch.stack([objs[0].mask.reshape(-1) for objs in found])
    # A degenerate first cut has the whole grid as its mask: nothing remains.
    active = [not objs[0].degenerate for objs in found]
    for _ in range(1, objects):
        keep_host = ~taken
        active = [a and int(keep_host[b].sum()) >= 3 for b, a in enumerate(active)]  # eigenpairs 1, 2
        idx = [b for b in range(batch) if active[b]]
        if not idx:
            return
        keep = keep_host[idx].to(device)
        # The remaining patches first (stable: grid order), the removed ones where the pad is.
        order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices
        sub = adjacency[idx]
        sub = sub.gather(1, order[:, :, None].expand(-1, -1, n)).gather(2, order[:, None, :].expand(-1, n, -1))
        count = keep.sum(dim=-1)
        nodes = torch.arange(n, device=device)[None, :] < count[:, None]
        sub &= nodes[:, :, None] & nodes[:, None, :]
        structureless = _structureless(sub, count)
        x_sorted, lam = _fiedler_torch(sub, eps, eig, nodes)
        del sub
        x = torch.zeros_like(x_sorted).scatter_(1, order, x_sorted)  # back to grid order
        gap = lam[:, 1] - lam[:, 0]
        degenerate = structureless | (gap <= DEGENERATE_RTOL * lam[:, 1].clamp_min(_GAP_FLOOR))
        x, fg, seed = _split_kept(x, keep)
        for b, result in zip(idx, _assemble_batch(x, fg, seed, lam, degenerate, rows, cols)):
            if result.degenerate:
                active[b] = False  # no distinct object left: stop
                continue
            found[b].append(result)
            taken[b] |= result.mask.reshape(-1)


def _scipy_rounds(cosine: np.ndarray, first: TokenCutResult, tau: float, eps: float, more: int,
                  rows: int, cols: int) -> list[TokenCutResult]:
    """Further objects of one image with the reference's solver on the remaining graph (module docstring).

    Args:
        cosine: (N, N) float32 cosine similarities of the whole image.
        first: its first result.
        more: the most further objects.
    """
    if first.degenerate:
        return []
    found: list[TokenCutResult] = []
    taken = first.mask.reshape(-1).numpy().copy()
    for _ in range(more):
        kept = np.flatnonzero(~taken)
        if kept.size < 3:
            break
        x_kept, lam, structureless = _fiedler_scipy(cosine[np.ix_(kept, kept)], tau, eps)
        if structureless or _gap_degenerate(*lam):
            break
        x_kept, fg_kept, seed_kept = _split_reference(x_kept)  # the reference's rules on the subgraph
        x = np.zeros(taken.size)
        fg = np.zeros(taken.size, dtype=bool)
        x[kept], fg[kept] = x_kept, fg_kept
        result = _assemble(x, fg, int(kept[seed_kept]), lam, False, rows, cols)
        found.append(result)
        taken |= result.mask.reshape(-1).numpy()
    return found


# ------------------------------------------------------------------------ public


def tokencut(
    features: torch.Tensor,
    grid_hw: tuple[int, int],
    tau: float = TokenCutConfig.tau,
    eps: float = TokenCutConfig.eps,
    eig: EigSolver = TokenCutConfig.eig,  # type: ignore[assignment]
) -> TokenCutResult:
    """Localise one object with TokenCut.

    Args:
        features: (rows*cols, d) real tensor of patch features in row-major grid order
            (prefix tokens, CLS and registers, already dropped). Any device: the graph
            and, for the torch solvers, the eigen-solve run there. A numpy array is
            accepted too. Cast to float32.
        grid_hw: ``(rows, cols)`` of the patch grid; at least 3 patches.
        tau: Cosine threshold: an edge of weight 1 where ``S_ij > tau`` (strict,
            compared in float32).
        eps: Weight of the non-edges, > 0.
        eig: ``"torch64"`` (float64 ``torch.linalg.eigh``, default), ``"torch32"``
            (float32, faster, less exact) or ``"scipy"`` (the reference's exact call,
            CPU float64). See the module docstring for their parity.

    Returns:
        A :class:`TokenCutResult`; ``box`` is in patch units, ``(x1, y1, x2, y2)``, max
        exclusive. Degenerate images get the fixed whole-grid result.

    Raises:
        TypeError: ``features`` is not a tensor or numpy array.
        ValueError: ``features`` is not 2-D, not real or not finite, ``grid_hw`` does not
            match it or has fewer than 3 patches, ``tau`` is not finite, ``eps <= 0``,
            or ``eig`` is unknown.
    """
    feats = _as_features(features, 2)
    rows, cols = _check_grid(grid_hw, feats.shape[0])
    tau, eps, eig = _check_options(tau, eps, eig)
    return _run(feats[None], rows, cols, tau, eps, eig)[0][0]


def tokencut_batch(
    features: torch.Tensor,
    grid_hw: tuple[int, int],
    tau: float = TokenCutConfig.tau,
    eps: float = TokenCutConfig.eps,
    eig: EigSolver = TokenCutConfig.eig,  # type: ignore[assignment]
) -> list[TokenCutResult]:
    """TokenCut on a batch of images that share one patch grid.

    The torch solvers make one batched eigen-solve and one device-to-host copy for the
    whole batch; ``"scipy"`` solves the images one by one on the CPU. Each result equals
    :func:`tokencut` on that image alone (see the module docstring for CUDA).

    Args:
        features: (B, rows*cols, d) real tensor (or numpy array) of patch features,
            row-major, prefix tokens dropped. ``B`` may be 0.
        grid_hw: ``(rows, cols)`` shared by all images; at least 3 patches.
        tau: As in :func:`tokencut`.
        eps: As in :func:`tokencut`.
        eig: As in :func:`tokencut`.

    Returns:
        ``B`` :class:`TokenCutResult` objects, in batch order.

    Raises:
        TypeError: ``features`` is not a tensor or numpy array.
        ValueError: as :func:`tokencut`, with ``features`` required to be 3-D.
    """
    feats = _as_features(features, 3)
    rows, cols = _check_grid(grid_hw, feats.shape[1])
    tau, eps, eig = _check_options(tau, eps, eig)
    if feats.shape[0] == 0:
        return []
    return [objs[0] for objs in _run(feats, rows, cols, tau, eps, eig)]


def tokencut_objects(
    features: torch.Tensor,
    grid_hw: tuple[int, int],
    tau: float = TokenCutConfig.tau,
    eps: float = TokenCutConfig.eps,
    eig: EigSolver = TokenCutConfig.eig,  # type: ignore[assignment]
    objects: int = 1,
) -> list[list[TokenCutResult]]:
    """Up to ``objects`` objects per image: TokenCut, then the MaskCut rule (module docstring).

    Args:
        features, grid_hw, tau, eps, eig: as in :func:`tokencut_batch`.
        objects: the most objects per image (>= 1).

    Returns:
        Per image, in batch order, 1 to ``objects`` :class:`TokenCutResult` in discovery order;
        the first is :func:`tokencut_batch`'s result, the masks are disjoint, boxes are in patch
        units ``(x1, y1, x2, y2)``, max exclusive. A further cut that is degenerate, or fewer than
        3 remaining patches, ends an image's list.

    Raises:
        TypeError, ValueError: as :func:`tokencut_batch`, or ``objects < 1``.
    """
    if isinstance(objects, bool) or int(objects) != objects or objects < 1:
        raise ValueError(f"objects must be an integer >= 1, got {objects!r}")
    feats = _as_features(features, 3)
    rows, cols = _check_grid(grid_hw, feats.shape[1])
    tau, eps, eig = _check_options(tau, eps, eig)
    if feats.shape[0] == 0:
        return []
    return _run(feats, rows, cols, tau, eps, eig, int(objects))


def run_tokencut(config: TokenCutConfig, features: torch.Tensor, grid_hw: tuple[int, int],
                 extras: Mapping[FeatureKey, torch.Tensor]) -> list[TokenCutResult]:
    """TokenCut as a registered method (:mod:`lostreg.methods.tokencut`): :func:`tokencut_batch` with ``config``.

    Args:
        config: tau, eps and the eigen-solver.
        features: (B, rows*cols, D) float patch features of same-grid images, row-major.
        grid_hw: ``(rows, cols)``.
        extras: unused (TokenCut needs no other feature set).
    """
    return tokencut_batch(features, grid_hw, tau=config.tau, eps=config.eps, eig=config.eig)  # type: ignore[arg-type]


def run_tokencut_objects(config: TokenCutConfig, features: torch.Tensor, grid_hw: tuple[int, int],
                         extras: Mapping[FeatureKey, torch.Tensor], objects: int) -> list[list[TokenCutResult]]:
    """Several-object TokenCut as a registered method: :func:`tokencut_objects` with ``config``.

    Args:
        config, features, grid_hw, extras: as :func:`run_tokencut`.
        objects: the most objects per image (>= 1).
    """
    return tokencut_objects(features, grid_hw, tau=config.tau, eps=config.eps, eig=config.eig,  # type: ignore[arg-type]
                            objects=objects)
