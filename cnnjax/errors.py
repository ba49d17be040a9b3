"""The errors a user can act on, at the bottom of the import graph (standard library only).

The command line (``cnnjax.cli``) prints each as one line, ``error: <message>``, and exits
with the error's ``exit_status`` (``report``): a ``ConfigError`` 2 (``EXIT_CONFIG``); a
``WriteError`` (a checkpoint, metrics, plots or any file of the workdir that could not be
written) 75 (``EXIT_PREEMPTED``) when freeing space is the fix, else 2. The message names the
value or path at fault and the fix. The exit statuses a scheduler can act on are defined here, once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
from collections.abc import Iterator

EXIT_CONFIG = 2  # bad input: nothing ran, nothing changed
EXIT_NONFINITE = 3  # nan_policy=stop fired; the last good checkpoint is kept
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: preempted, or the disk filled; relaunch to resume


class ConfigError(ValueError):
    """A config value, flag, file or workdir that cannot work; raised before any work."""

    exit_status = EXIT_CONFIG


class WorkdirLocked(ConfigError):
    """Another launch holds the workdir (``workdir.WorkdirLock``)."""


NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})  # freeing space fixes these: resumable

# How tensorstore (Orbax's array writer) reports an OS error inside a ValueError or
# RuntimeError: "RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']".
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def os_error_code(error: BaseException) -> int | None:
    """The ``errno`` behind ``error``: an ``OSError``'s, or the OS error that a library
    reports in the message of another exception; its causes are searched too. None: it is
    not an OS error."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e.errno
        text = str(e)
        if match := _OS_ERROR_CODE.search(text):
            return int(match.group(1))
        if "RESOURCE_EXHAUSTED" in text and "memory" not in text.lower():  # not a device OOM
            return errno.ENOSPC
        e = e.__cause__ or e.__context__
    return None


def free_space(path: str) -> str:
    """The space left on the filesystem of ``path`` (or of its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "free space unknown"
    if free >= 10e9:
        return f"{free / 1e9:.0f} GB free"
    return f"{free / 1e6:.0f} MB free" if free >= 10e6 else f"{free / 1e6:.1f} MB free"


class WriteError(OSError):
    """Writing ``what`` at ``path`` failed: a full disk or quota (``resumable``: free space
    and relaunch), or a path that cannot be written. ``then`` ends the message: what the
    same command does when relaunched (``training.run`` says where it resumes from)."""

    def __init__(self, what: str, path: str, code: int):
        super().__init__(code, os.strerror(code), path)
        self.what = what
        self.then = "relaunch the same command"

    @property
    def resumable(self) -> bool:
        return self.errno in NO_SPACE

    @property
    def exit_status(self) -> int:
        return EXIT_PREEMPTED if self.resumable else EXIT_CONFIG

    def __str__(self) -> str:
        if self.resumable:
            return (f"{self.strerror[:1].lower()}{self.strerror[1:]} writing {self.what} "
                    f"({free_space(self.filename)}); free space, then {self.then}")
        return (f"cannot write {self.what} ({self.strerror}); make {self.filename} writable "
                f"or pass another --workdir, then {self.then}")


@contextlib.contextmanager
def writing(what: str, path: str | None = None) -> Iterator[None]:
    """Within the block, a failure to write (an ``OSError``, or an OS error that a library
    wraps, as Orbax does a full disk) is raised as a ``WriteError`` naming ``what`` and
    ``path`` (default: ``what``, a file's path). Other exceptions pass unchanged."""
    try:
        yield
    except WriteError:
        raise
    except Exception as e:
        code = os_error_code(e)
        if code is None:
            raise
        raise WriteError(what, path or what, code) from e


def report(error: BaseException) -> tuple[int, str] | None:
    """``(exit status, the one line to print)`` for an error a user can act on: any error
    class with an ``exit_status`` (its line begins ``error: `` unless the class sets
    ``line_prefix``), or an ``OSError`` naming a path that is not what it should be. None: a
    bug, to be shown whole."""
    status = getattr(error, "exit_status", None)
    if status is not None:
        return status, f"{getattr(error, 'line_prefix', 'error: ')}{error}"
    if isinstance(error, OSError) and error.filename:
        return EXIT_CONFIG, (f"error: cannot use {error.filename} ({error.strerror}); make it "
                             "the file or folder cnnjax expects there, writable, or pass "
                             "another path")
    return None


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first non-blank line of ``error``'s message, cut to ``limit`` characters (a
    library's message can run to pages); the error's type name when the message is empty."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0].strip()[:limit] if lines else type(error).__name__


def warn(message: str) -> None:
    """A problem cnnjax works around (a skipped corrupt image, say): one line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
