"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file lostreg writes whole (run-directory JSON and YAML, exported labels, the HTML report,
the COCO20k subset cache) goes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text"]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A reader sees the old file or the new one, never half of one; a failed write (an error,
    Ctrl-C) leaves no temporary file behind. Returns ``path``.

    Raises:
        OSError: of the errno's own subclass, naming ``path`` (never the temporary file, which
            means nothing to a user): ``path`` is a folder, the disk is full, ...
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc  # OSError() picks the subclass
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """:func:`atomic_write_text` of ``payload`` as indented JSON with a final newline."""
    return atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
