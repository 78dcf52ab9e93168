"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file lostreg writes whole (run-directory JSON and YAML, exported labels, the HTML report,
the COCO20k subset cache) goes through here. The file gets the permissions any file the user
writes gets (``0666`` less the umask), not ``mkstemp``'s private ``0600``, and its bytes are on
disk (fsync) before it replaces the old one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "current_umask"]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the OS tells (Linux), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


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
            # mkstemp makes the file 0600; the umask decides, as for any file the user writes.
            if hasattr(os, "fchmod"):  # not on Windows
                os.fchmod(f.fileno(), 0o666 & ~current_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
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
