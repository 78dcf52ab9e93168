"""How a run identity names a file or folder: by its resolved location, or by its content.

Two spellings of one place (``./data``, ``~/data``, ``/home/u/data``, a symlink) must give one
identity, or a resumed run would be refused as another configuration. Nothing here imports
more than the standard library.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = ["file_fingerprint", "real_path"]


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
