"""Peak extra memory and time of LOST against the number of patches.

Compares the tiled ``lostreg.lost.lost`` (bounded memory) with the previous full-Gram
algorithm (kept below as the baseline, steps 1-10 of spec section 3 on one ``F @ F.T``).
Every measurement runs in a fresh subprocess so that its peak is its own:

* CPU: peak resident memory (``ru_maxrss``) after the call minus the peak before it, with
  the features already allocated and LOST warmed up on a small input.
* CUDA: ``torch.cuda.max_memory_allocated`` during the call minus the memory allocated
  before it (the features).

Example::

    python benchmarks/lost_memory.py --threads 1
    python benchmarks/lost_memory.py --device cuda --sizes 1000 10000 60000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

DEFAULT_SIZES = (1_000, 5_000, 10_000, 20_000, 30_000, 50_000, 60_000)


def grid_for(n: int) -> tuple[int, int]:
    """A ``rows x cols`` grid with exactly ``n`` patches, as square as ``n`` allows."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return rows, n // rows


def full_gram_lost(features, grid_hw, k_patches=100, gram_bias=0.0):  # noqa: ANN001, ANN201
    """The pre-tiling algorithm: the whole Gram matrix, a copy for the degrees."""
    import numpy as np
    import scipy.ndimage
    import torch

    from lostreg.precision import strict_fp32

    rows, cols = grid_hw
    with strict_fp32():
        gram = features @ features.T
    if gram_bias != 0:
        gram = gram + float(gram_bias)
    off_diag = gram.clone()
    off_diag.fill_diagonal_(0)
    degree = (off_diag > 0).sum(dim=1)
    del off_diag
    order = torch.sort(degree, stable=True).indices
    seed = int(order[0])
    potentials = order[: min(int(k_patches), rows * cols)]
    similars = potentials[gram[seed, potentials] > 0]
    expansion = gram[similars].sum(dim=0).reshape(rows, cols)
    labels, _ = scipy.ndimage.label((expansion > 0).cpu().numpy())
    r, c = divmod(seed, cols)
    mask = labels == labels[r, c] if labels[r, c] else np.zeros((rows, cols), dtype=bool)
    mask[r, c] = True
    mr, mc = np.nonzero(mask)
    return seed, (int(mc.min()), int(mr.min()), int(mc.max()) + 1, int(mr.max()) + 1)


def child(path: str, n: int, dim: int, device: str, chunk: int | None) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    from lostreg.lost import lost

    rows, cols = grid_for(n)
    gen = torch.Generator().manual_seed(n)
    feats = (torch.randn(n, dim, generator=gen) + 0.1).to(device)
    warm = torch.randn(64, dim).to(device)
    if path == "tiled":
        run = lambda f, g: (lambda r: (r.seed, r.box))(lost(f, g, chunk_size=chunk))  # noqa: E731
    else:
        run = full_gram_lost
    run(warm, (8, 8))
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    seed, box = run(feats, (rows, cols))
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if device == "cuda":
        extra = torch.cuda.max_memory_allocated() - base
    else:
        extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # KiB on Linux
    return {"path": path, "n": n, "grid": [rows, cols], "extra_bytes": extra, "seconds": seconds,
            "seed": seed, "box": list(box)}


def measure(path: str, n: int, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--child", path, str(n), str(args.dim), args.device,
           str(args.chunk_size or 0)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"path": path, "n": n, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                        help="numbers of patches N (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=384, help="feature dimension d (default: 384)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="chunk_size for the tiled path (default: chosen from free memory)")
    parser.add_argument("--old-max-gib", type=float, default=8.0,
                        help="run the full-Gram path only where it needs at most this much "
                             "(about 17 N^2 bytes on CPU; default: 8)")
    parser.add_argument("--threads", type=int, default=0,
                        help="OMP/MKL threads in the measuring processes (default: torch's own)")
    parser.add_argument("--json", help="also write the raw measurements to this file")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        path, n, dim, device, chunk = args.child
        print(json.dumps(child(path, int(n), int(dim), device, int(chunk) or None)))
        return

    import platform

    import torch

    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, device {args.device}, d={args.dim}, "
          f"threads {args.threads or torch.get_num_threads()}, chunk_size {args.chunk_size or 'auto'}")
    print("| N | grid | N x N fp32 | full Gram: extra | time | tiled: extra | time | same seed & box |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    records = []
    for n in args.sizes:
        tiled = measure("tiled", n, args)
        old = None
        # Gram, its copy, the bool signs and the int64 copy torch makes to sum them.
        if 17 * n * n <= args.old_max_gib * 2**30:
            old = measure("full", n, args)
        records += [r for r in (tiled, old) if r]

        def cell(r: dict | None) -> str:
            if r is None:
                return "skipped | -"
            if "error" in r:
                return f"failed: {' '.join(r['error'])[:40]} | -"
            return f"{r['extra_bytes'] / 2**20:,.0f} MiB | {r['seconds']:.2f} s"

        same = "-" if not old or "error" in old or "error" in tiled else (
            "yes" if (old["seed"], old["box"]) == (tiled["seed"], tiled["box"]) else "NO")
        rows, cols = grid_for(n)
        print(f"| {n:,} | {rows}x{cols} | {4 * n * n / 2**30:.2f} GiB | {cell(old)} | {cell(tiled)} | {same} |",
              flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(records, fh, indent=1)


if __name__ == "__main__":
    main()
