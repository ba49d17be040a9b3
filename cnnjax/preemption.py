"""Preemption: finish the current step, save, and exit on SIGTERM or SIGINT.

Orbax's own preemption sync point only fires under ``jax.distributed``, so the signal is
caught here, in every run. With several processes, each asks the others at every step
(one tiny all-gather), so all of them stop at the same step and save together.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def requested(self) -> bool:
        """Whether any process received a signal (all processes get the same answer)."""
        if jax.process_count() == 1:
            return self._flag
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self._flag, np.int32))
        return bool(np.any(flags))
