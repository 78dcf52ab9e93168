"""The throughput benchmark's command line only (the benchmark itself measures; it is not a test)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


def _benchmark() -> ModuleType:
    # benchmarks/ is no package: load the script by path (its module level is standard library only).
    spec = importlib.util.spec_from_file_location("lostreg_benchmark_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def test_help_lists_every_option() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for option in ("--device", "--images", "--data", "--backbone", "--batch-size", "--num-workers", "--repeat",
                   "--precision", "--method", "--skip", "--check-identity", "--json"):
        assert option in done.stdout


def test_precisions_and_methods_are_the_librarys() -> None:
    # The script keeps its own copies (its module level must not import lostreg): they must not drift.
    from lostreg.precision import PRECISIONS
    from lostreg.protocol import METHODS

    bench = _benchmark()
    assert bench.PRECISIONS == tuple(PRECISIONS)
    assert bench.METHODS == tuple(METHODS)
    parser = bench.build_parser()
    for precision in PRECISIONS:
        assert parser.parse_args(["--precision", precision]).precision == precision
    assert parser.parse_args([]).precision == "fp32" and parser.parse_args([]).method == "lost"


def test_eval_overrides_carry_precision_and_method(tmp_path: Path) -> None:
    bench = _benchmark()
    opts = bench.build_parser().parse_args(["--precision", "bf16", "--method", "tokencut", "--num-workers", "1",
                                            "--data", str(tmp_path / "data dir")])
    overrides = bench.eval_overrides(opts, "bench_8", "cpu", 4, tmp_path / "run")
    assert "precision=bf16" in overrides and "method=tokencut" in overrides
    assert f"dataset.root='{tmp_path / 'data dir'}'" in overrides  # quoted: the path has a space
    # Hydra accepts them: the composed config has the values the benchmark asked for.
    from lostreg.config import compose_config

    cfg = compose_config(overrides)
    assert cfg.precision == "bf16" and cfg.method == "tokencut" and cfg.batch_size == 4


@pytest.mark.parametrize("argv", [["--skip", "a,d"], ["--device", "tpu"], ["--images", "0"],
                                  ["--precision", "fp16"], ["--method", "ncut"]])
def test_bad_values_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        _benchmark().build_parser().parse_args(argv)
    assert refused.value.code == 2
