"""Preemption: finish the current step, save, and exit on SIGTERM or SIGINT.

Orbax's own preemption sync point only fires under ``jax.distributed``, so the signal is
caught here, in every run. Under ``launch.py`` the signal reaches ``cnnjax.signals``; in a
notebook or a script (nothing installed) the guard sets its own handlers for the loop. With
several processes, each asks the others at every step (one tiny all-gather), so all of them
stop at the same step and save together.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

from cnnjax import signals


class PreemptionGuard:
    """Within ``with PreemptionGuard() as g``, a SIGTERM/SIGINT only sets a flag that
    ``g.requested()`` reports; a second SIGINT interrupts at once, as usual."""

    def __init__(self):
        self._flag = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self._flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._flag = True
        if jax.process_index() == 0:
            name = signal.Signals(signum).name
            print(f"received {name}: finishing this step, then saving", flush=True)

    def __enter__(self) -> PreemptionGuard:
        if not signals.installed() and threading.current_thread() is threading.main_thread():
            for s in signals.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def requested(self) -> bool:
        """Whether any process received a signal (all processes get the same answer)."""
        flag = self._flag or signals.requested() is not None
        if jax.process_count() == 1:
            return flag
        flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
        return bool(np.any(flags))
