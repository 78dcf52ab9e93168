"""The ``lostreg`` front end: every sub-command parses and documents itself."""

from __future__ import annotations

import pytest

from lostreg.cli.main import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: lostreg " + command in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert all(name in err for name in ("discover", "eval", "compare", "export", "inspect", "report"))


def test_backbones_table_lists_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backbones", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| dinov2_vits14_reg | dinov2_reg | vit_small_patch14_reg4_dinov2.lvd142m | 14 | 4 |" in out
    assert "| pixels |  | (no weights) | 16 | 0 | - |" in out


_HEAVY = ("torch", "timm", "hydra", "matplotlib", "scipy")
_IMPORTS_AFTER_HELP = """
import sys
from lostreg.cli.main import COMMANDS, main
for argv in [["--help"]] + [[name, "--help"] for name in COMMANDS]:
    try:
        main(argv)
    except SystemExit:
        pass
print("IMPORTED=" + ",".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def test_help_imports_neither_torch_nor_timm() -> None:
    """`lostreg --help` and every `lostreg COMMAND --help` answer without the heavy libraries."""
    import subprocess
    import sys

    code = _IMPORTS_AFTER_HELP.format(heavy=_HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "IMPORTED=", proc.stdout.strip().splitlines()[-1]


def test_report_help_defaults_are_the_library_defaults() -> None:
    from lostreg.cli import report_cmd
    from lostreg.report.gallery import DEFAULT_THUMB_SIZE
    from lostreg.report.html import DEFAULT_MAX_IMAGES

    assert (report_cmd.DEFAULT_MAX_IMAGES, report_cmd.DEFAULT_THUMB_SIZE) == (DEFAULT_MAX_IMAGES, DEFAULT_THUMB_SIZE)


def test_protocol_flags_are_shared_by_every_discovering_command(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("discover", "inspect", "export"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert all(flag in out for flag in ("--which", "--layer", "--l2-normalize", "--k-patches", "--gram-bias",
                                            "--method")), command


def test_user_errors_are_one_line_and_debug_shows_their_traceback(
        tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LOSTREG_DEBUG", "0")  # restored (unset) after the test, though --debug sets it
    argv = ["discover", str(tmp_path / "x.jpg"), "--backbone", "pixels", "--batch-size", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == "lostreg: error: --batch-size must be >= 1, got 0"
    assert main(["--debug", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().endswith("--batch-size must be >= 1, got 0")


def test_only_lostreg_errors_are_user_errors() -> None:
    from lostreg.cli.common import user_errors
    from lostreg.errors import LostregError

    assert user_errors() == (LostregError,)
    assert not issubclass(ValueError, user_errors()) and not issubclass(KeyError, user_errors())
