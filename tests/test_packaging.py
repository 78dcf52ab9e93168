"""Packaging: every sub-package is installed, and the hydra configs ship with the package."""

from __future__ import annotations

from pathlib import Path

import pytest

import lostreg
from lostreg.backbones import list_backbones
from lostreg.config import compose_config

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    package_dir = Path(lostreg.__file__).parent
    found = {"lostreg"} | {
        "lostreg." + ".".join(p.parent.relative_to(package_dir).parts)
        for p in package_dir.rglob("__init__.py")
        if p.parent != package_dir
    }
    # Data-only folders (the report's CSS and JS) ship as packages too.
    found |= {
        "lostreg." + ".".join(d.relative_to(package_dir).parts)
        for d in package_dir.rglob("*")
        if d.is_dir() and d.name != "__pycache__" and not (d / "__init__.py").exists()
    }
    # configs/ (installed as lostreg.configs) and its config-group folders hold only yaml.
    configs = {"lostreg.configs"} | {
        f"lostreg.configs.{p.name}" for p in (ROOT / "configs").iterdir() if p.is_dir() and p.name != "__pycache__"
    }
    assert found | configs == listed


def test_every_backbone_has_a_config_option() -> None:
    options = {p.stem for p in (ROOT / "configs" / "backbone").glob("*.yaml")}
    assert options == set(list_backbones())
    for name in list_backbones():
        assert compose_config([f"backbone={name}"]).backbone.name in list_backbones(include_aliases=False)
