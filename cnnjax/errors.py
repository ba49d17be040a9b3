"""The errors a user can act on, at the bottom of the import graph (standard library only).

``launch.py`` prints each as one line, ``error: <message>``, and exits with status 2; the
message names the value at fault and the fix.
"""

from __future__ import annotations

import sys


class ConfigError(ValueError):
    """A config value, flag, file or workdir that cannot work; raised before any work."""


class WorkdirLocked(ConfigError):
    """Another launch holds the workdir (``workdir.WorkdirLock``)."""


def warn(message: str) -> None:
    """A problem cnnjax works around (a skipped corrupt image, say): one line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
