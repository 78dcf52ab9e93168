"""Peak memory and time of a backbone forward against the number of patches (not a test).

Each size runs in a fresh subprocess: peak extra resident memory (``ru_maxrss`` after minus
before, the model built and warmed up) on the CPU, ``torch.cuda.max_memory_allocated`` minus
what was allocated before on CUDA. The forward is lostreg's (``Backbone.extract``, fp32, TF32
off): timm's fused attention (``F.scaled_dot_product_attention``) never forms the T x T
attention matrix, so memory grows linearly with the patches while time grows quadratically.

    python benchmarks/backbone_memory.py --backbone dino_vits16 --patches 1000 5000 10000 20000
    python benchmarks/backbone_memory.py --device cuda --patches 1000 10000 30000 60000
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

_CHILD = """
import json, resource, sys, time, warnings
import torch
warnings.simplefilter("ignore")
from lostreg.backbones import build_backbone
name, device, patches, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if threads:
    torch.set_num_threads(threads)
backbone = build_backbone(name, weights="random", device=device)
p = backbone.patch_size
rows = int(patches ** 0.5)
cols = -(-patches // rows)
backbone.extract(torch.randn(1, 3, 4 * p, 4 * p))  # warm-up
x = torch.randn(1, 3, rows * p, cols * p)
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
backbone.extract(x)
if device == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
if device == "cuda":
    extra = torch.cuda.max_memory_allocated() - base
heads = backbone.model.blocks[0].attn.num_heads
print(json.dumps({"patches": rows * cols, "grid": [rows, cols], "seconds": seconds, "extra_bytes": extra,
                  "attention_matrix_bytes": heads * (rows * cols) ** 2 * 4,
                  "fused_attention": bool(getattr(backbone.model.blocks[0].attn, "fused_attn", False))}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="dino_vits16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--patches", type=int, nargs="+", default=[1000, 5000, 10000, 20000])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    rows = []
    print("| patches | grid | forward s | extra memory | a T x T attention matrix would be |")
    print("|---:|---|---:|---:|---:|")
    for n in args.patches:
        proc = subprocess.run([sys.executable, "-c", _CHILD, args.backbone, args.device, str(n), str(args.threads)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"| {n} | - | failed: {proc.stderr.strip().splitlines()[-1]} | | |")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"| {row['patches']:,} | {row['grid'][0]}x{row['grid'][1]} | {row['seconds']:.1f} | "
              f"{row['extra_bytes'] / 2**20:,.0f} MiB | {row['attention_matrix_bytes'] / 2**20:,.0f} MiB |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backbone": args.backbone, "device": args.device, "rows": rows}, f, indent=2)
    return 0 if rows and not math.isnan(rows[0]["seconds"]) else 1


if __name__ == "__main__":
    sys.exit(main())
