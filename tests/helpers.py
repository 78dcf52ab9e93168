"""Small helpers several test files share: running a lostreg command, reading a run's predictions.

The generated datasets themselves are fixtures of ``tests/conftest.py`` (written by
``tests/synthetic.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lostreg.cli.main import main


def run_command(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """``lostreg ARGV...`` in this process (each argument as ``str``): exit code, stdout, stderr."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def eval_pixels(root: Path, run_dir: Path, *overrides: str, dataset: str = "voc07") -> Path:
    """``lostreg eval`` with the pixels backbone (no weights) on ``dataset`` at ``root``; must succeed."""
    assert main(["eval", "--no-progress", "backbone=pixels", f"dataset={dataset}", f"dataset.root={root}",
                 "num_workers=0", f"run_dir={run_dir}", *overrides]) == 0
    return run_dir


def sorted_pred_lines(run_dir: Path) -> list[str]:
    """A run's ``preds.jsonl`` lines, sorted: equal for two runs that predicted the same."""
    return sorted((run_dir / "preds.jsonl").read_text().splitlines())


def preds_by_id(run_dir: Path) -> dict[str, dict[str, Any]]:
    """A run's predictions keyed by image id."""
    lines = (run_dir / "preds.jsonl").read_text().splitlines()
    return {str(p["image_id"]): p for p in map(json.loads, lines)}
