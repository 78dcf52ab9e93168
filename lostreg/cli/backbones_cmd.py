"""``lostreg backbones``: the registry as a table."""

from __future__ import annotations

import argparse

from lostreg.backbones import ALIASES, FAMILY_NOTES, list_backbones, resolve_backbone


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")


def run(args: argparse.Namespace) -> int:
    aliases = {target: alias for alias, target in ALIASES.items()}
    rows = [("name", "alias", "timm id", "patch", "registers", "pos-embed resize")]
    for name in list_backbones(include_aliases=False):
        spec = resolve_backbone(name)
        rows.append((
            name, aliases.get(name, ""), spec.timm_name or "(no weights)", str(spec.patch_size),
            str(spec.num_registers), spec.pos_embed_interp.value if spec.timm_name else "-",
        ))
    if args.markdown:
        print("| " + " | ".join(rows[0]) + " |")
        print("|" + "---|" * len(rows[0]))
        for row in rows[1:]:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print()
    for note in FAMILY_NOTES.values():
        print(note)
    print("Any other timm VisionTransformer name also works (e.g. vit_base_patch16_224.augreg_in21k).")
    return 0
