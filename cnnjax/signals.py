"""SIGINT and SIGTERM at any moment of a launch: a clean exit, never a traceback or a crash.

``install()`` is the first thing the command (``cnnjax.entry``) does, before any slow import.
From then on a signal never raises ``KeyboardInterrupt`` in the main thread, where it could
land inside JAX's compiler, an import or an Orbax save and end in a traceback or a segfault.
The signal is written to a pipe by CPython's C-level handler (``signal.set_wakeup_fd``) and a
watcher thread acts on it at once, even while the main thread is busy in native code. What it
does depends on the launch's stage:

* ``starting`` (imports, data preparation, compilation, until the first training step has
  run; and all of an eval, predict or visualize run): print one line, exit 130 (SIGINT) or
  143 (SIGTERM). Everything a launch writes before its first step is written atomically, so
  the next launch accepts the workdir.
* ``training``: remember the signal; the loop finishes its step, saves, and exits 75
  (``preemption.PreemptionGuard``).
* ``finishing`` (plots and summary, after the last checkpoint is committed): print one line,
  exit 75; a relaunch writes the plots and the summary.

A second signal exits at once and quietly, with 130 or 143. Whatever a save had in flight is
in Orbax's temporary directories, which the next launch removes.

This module imports the standard library only (and ``cnnjax.errors``, which does too), so that
it can be installed before JAX.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator

from cnnjax.errors import EXIT_PREEMPTED

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as shells report

STARTING, TRAINING, FINISHING = "starting", "training", "finishing"


class _State:
    def __init__(self) -> None:
        self.installed = False
        self.stage = STARTING
        self.note = "during start-up; nothing was written"
        self.received: list[int] = []


_state = _State()


def installed() -> bool:
    """Whether ``install()`` has run in this process (the command); a notebook has not."""
    return _state.installed


def install() -> None:
    """Routes SIGINT and SIGTERM to the watcher thread (main thread only; idempotent)."""
    if _state.installed or threading.current_thread() is not threading.main_thread():
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for s in SIGNALS:
        # A Python-level handler must be set for the wakeup fd to be written; this one does
        # nothing, so no exception is ever raised in the main thread.
        signal.signal(s, _ignore)
    threading.Thread(target=_watch, args=(read_fd,), name="cnnjax-signals", daemon=True).start()
    _state.installed = True


def _ignore(signum, frame) -> None:
    del signum, frame


def _watch(read_fd: int) -> None:
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        for signum in data:
            _on_signal(signum)


def _say(line: str) -> None:
    # os.write: no lock that the main thread might hold in the middle of a print. On a
    # terminal, a new line first: the progress bar may be half-way along the current one.
    with contextlib.suppress(OSError, ValueError):
        start = "\n" if sys.stdout.isatty() else ""
        os.write(sys.stderr.fileno(), (start + line + "\n").encode())


def _exit(status: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    # Worker processes (the streaming loader's) would outlive an os._exit: end them first.
    with contextlib.suppress(Exception):
        for child in multiprocessing.active_children():
            child.kill()
    os._exit(status)


def _on_signal(signum: int) -> None:
    name = signal.Signals(signum).name
    _state.received.append(signum)
    if len(_state.received) > 1:  # a second signal: at once, quietly
        _exit(EXIT_STATUS.get(signum, 128 + signum))
    if _state.stage == TRAINING:
        _say(f"received {name}: finishing this step, then saving (send it again to stop at "
             "once)")
    elif _state.stage == FINISHING:
        _say(f"stopped by {name} after the last checkpoint was committed; {_state.note}")
        _exit(EXIT_PREEMPTED)
    else:
        _say(f"stopped by {name} {_state.note}")
        _exit(EXIT_STATUS.get(signum, 128 + signum))


def requested() -> int | None:
    """The signal received in the ``training`` stage, if any (None: none received)."""
    return _state.received[0] if _state.received else None


@contextlib.contextmanager
def stage(name: str, note: str) -> Iterator[None]:
    """Within the block, a first signal is handled as stage ``name`` describes (see the
    module docstring); ``note`` ends its one-line message (what was kept, what to do)."""
    before = _state.stage, _state.note
    _state.stage, _state.note = name, note
    try:
        yield
    finally:
        _state.stage, _state.note = before


def set_stage(name: str, note: str) -> None:
    """Moves to stage ``name`` until the enclosing ``stage`` block ends."""
    _state.stage, _state.note = name, note
