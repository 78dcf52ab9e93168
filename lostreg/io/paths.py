"""Paths: how a run identity names a file or folder, and whether an output can be written there.

Two spellings of one place (``./data``, ``~/data``, ``/home/u/data``, a symlink) must give one
identity, or a resumed run would be refused as another configuration (:func:`real_path`,
:func:`file_fingerprint`). An output path is checked before any work (:func:`check_output_file`,
:func:`check_output_folder`), so that hours of computing never end in "is a directory". Nothing
here imports more than the standard library (and lostreg's error types).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from lostreg.errors import ConfigError

__all__ = ["check_output_file", "check_output_folder", "file_fingerprint", "real_path"]


def real_path(value: Any) -> str | None:
    """``value`` (a path as written) expanded and resolved, symlinks followed; None stays None."""
    return None if value is None else os.path.realpath(os.path.expanduser(str(value)))


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a small file's bytes (a COCO20k list, a register-neuron file), or
    ``unreadable:<resolved path>`` when it cannot be read, so that a missing file is still an identity."""
    try:
        return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
    except OSError:
        return f"unreadable:{real_path(path)}"


def _named(setting: str, path: Path) -> str:
    """``--output /x`` or ``out=/x``: the path as the user set it."""
    return f"{setting}{path}" if setting.endswith("=") else f"{setting} {path}"


def _first_existing_parent(path: Path, setting: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{_named(setting, path)}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{_named(setting, path)}: cannot write in {parent} (no permission)")
            return


def check_output_file(path: str | os.PathLike[str], setting: str) -> Path:
    """Check, writing nothing, that a file can be written at ``path`` (it may exist; it may not be a folder).

    Args:
        setting: how the user named it (``--output``, ``out=``), quoted in the message.

    Raises:
        ConfigError: one line: ``path`` is a folder, or a folder on the way is a file or not writable.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{_named(setting, path)}: is a folder; give a file name")
    _first_existing_parent(path, setting)
    return path


def check_output_folder(path: str | os.PathLike[str], setting: str) -> Path:
    """Check, writing nothing, that ``path`` is or can become a folder.

    Raises:
        ConfigError: one line: ``path`` is a file, or a folder on the way is a file or not writable.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{_named(setting, path)}: is a file, not a folder")
    if not path.exists():
        _first_existing_parent(path, setting)
    return path
