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
