"""The errors a user can act on, at the bottom of the import graph (standard library only).

The command line (``cnnjax.cli``) prints each as one line, ``error: <message>``, and exits
with status 2 (``EXIT_CONFIG``); the message names the value at fault and the fix. The exit
statuses a scheduler can act on are defined here, once.
"""

from __future__ import annotations

import sys

EXIT_CONFIG = 2  # bad input: nothing ran, nothing changed
EXIT_NONFINITE = 3  # nan_policy=stop fired; the last good checkpoint is kept
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the checkpoint is committed; relaunch to resume


class ConfigError(ValueError):
    """A config value, flag, file or workdir that cannot work; raised before any work."""


class WorkdirLocked(ConfigError):
    """Another launch holds the workdir (``workdir.WorkdirLock``)."""


def warn(message: str) -> None:
    """A problem cnnjax works around (a skipped corrupt image, say): one line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
