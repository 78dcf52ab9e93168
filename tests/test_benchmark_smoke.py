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
                   "--precision", "--skip", "--check-identity", "--json"):
        assert option in done.stdout


def test_only_fp32_is_accepted_for_now(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _benchmark().build_parser()
    assert parser.parse_args(["--precision", "fp32"]).precision == "fp32"
    with pytest.raises(SystemExit) as refused:
        parser.parse_args(["--precision", "bf16"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "--precision" in err and "'bf16' is not supported yet" in err and "fp32" in err


@pytest.mark.parametrize("argv", [["--skip", "a,d"], ["--device", "tpu"], ["--images", "0"]])
def test_bad_values_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        _benchmark().build_parser().parse_args(argv)
    assert refused.value.code == 2
