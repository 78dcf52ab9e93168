"""The errors a user can fix, apart from bugs.

lostreg tells two kinds of failure apart:

* **User errors** derive from :class:`LostregError`: a bad command-line value or config key, a
  dataset folder of the wrong layout, weights that do not load, an unreadable image, a run
  directory of another configuration. The command line prints them as one line
  (``lostreg: error: ...``) and exits with code 2; ``--debug`` (or ``LOSTREG_DEBUG=1``) adds the
  traceback. Their messages name the file, key or flag and what is wrong.
* **Everything else is a bug** (in lostreg, torch, timm, a CUDA driver): it is never caught as
  "bad input". A dataset run saves what it has computed and stops with the traceback and exit
  code 1, so that the bug is seen (and a resume continues after the fix).

Most user errors also derive from the builtin they used to be (``ValueError``, ``RuntimeError``),
so code that catches those keeps working. This module imports nothing.
"""

from __future__ import annotations

__all__ = ["ConfigError", "LostregError", "UnknownNameError", "debug_enabled"]


class LostregError(Exception):
    """Base of the errors caused by the command line, a config or the files it names (not bugs)."""


class ConfigError(LostregError, ValueError):
    """A setting that does not apply: an unknown key or option, a wrong type or range, a device this
    machine lacks. ``str(err)`` is one line naming the setting (as the user wrote it) and what is allowed."""


class UnknownNameError(ConfigError, KeyError):
    """A name looked up in one of lostreg's registries (a dataset, a method) that is not there."""

    __str__ = Exception.__str__  # KeyError's would quote the message


def debug_enabled() -> bool:
    """Whether ``LOSTREG_DEBUG`` asks for tracebacks of user errors too (set by ``--debug``)."""
    import os

    return os.environ.get("LOSTREG_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
