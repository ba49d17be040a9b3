"""Fault injection, in one place: the entry scripts (tests/driver.py kills, tests/interrupt.py
signals, tests/diskfull.py fills the disk) each name their moments and reach the running
code only through these patches, so that a renamed function breaks one table, loudly.

    around(owner, name, before=..., after=...)   run something at a function's entry or exit
    replace(owner, name, make)                   ``make(original)`` gives the new function
    nth(n, action)                               an action that fires on its n-th call only
"""

from __future__ import annotations

import builtins
import errno
import functools
import os
import runpy
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def replace(owner: Any, name: str, make: Callable[[Callable], Callable]) -> None:
    """``owner.name = make(original)``; a name ``owner`` lacks is a failure, not a no-op."""
    original = getattr(owner, name) if name != "open" else getattr(owner, name, builtins.open)
    setattr(owner, name, make(original))


def around(owner: Any, name: str, before: Callable | None = None,
           after: Callable | None = None) -> None:
    """Calls ``before(*args)`` and ``after(*args)`` around every call of ``owner.name``."""

    def make(original):
        @functools.wraps(original)
        def wrapped(*args, **kwargs):
            if before:
                before(*args, **kwargs)
            out = original(*args, **kwargs)
            if after:
                after(*args, **kwargs)
            return out

        return wrapped

    replace(owner, name, make)


def nth(n: int, action: Callable[..., Any]) -> Callable[..., None]:
    """A callback that passes its arguments to ``action`` on its ``n``-th call (counting from
    1), only then."""
    calls = [0]

    def callback(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            action(*args, **kwargs)

    return callback


def die(*_args, **_kwargs) -> None:
    """SIGKILL: no handler, no cleanup, as a machine that loses power."""
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def send(signals: list[int], delay: float = 0.0) -> None:
    """Sends ``signals`` to this process from a helper thread, ``delay`` s from now and 0.2 s
    apart, while the main thread goes on into the moment."""

    def run():
        time.sleep(delay)
        for i, s in enumerate(signals):
            if i:
                time.sleep(0.2)
            os.kill(os.getpid(), s)

    threading.Thread(target=run, daemon=True).start()


def no_space(path: str | None = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([path] if path else []))


class HalfWritten:
    """A file whose next write puts half of what it is given on disk, then fails: a full
    disk."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise no_space()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def fail_open(module: Any, matches: Callable[[str, str], bool]) -> None:
    """``open`` in ``module``: a file for which ``matches(path, mode)`` is true is
    ``HalfWritten``."""

    def make(original):
        def patched(path, mode="r", *args, **kwargs):
            f = original(path, mode, *args, **kwargs)
            return HalfWritten(f) if matches(str(path), mode) else f

        return patched

    replace(module, "open", make)


def launch(install: Callable[[dict[str, str]], None]) -> None:
    """``script --opt=v ... -- <launch.py flags>``: ``install(options)``, then launch.py."""
    args = sys.argv[1:]
    split = args.index("--")
    options = dict(a.lstrip("-").split("=", 1) for a in args[:split])
    sys.path.insert(0, ROOT)  # this checkout's cnnjax, whatever else is installed
    install(options)
    sys.argv = [os.path.join(ROOT, "launch.py"), *args[split + 1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
