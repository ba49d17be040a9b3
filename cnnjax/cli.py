"""The ``cnnjax`` command (and ``python launch.py``, ``python -m cnnjax``): the signal
handlers first, so that Ctrl-C at any moment is one line and a clean exit, then the rest."""

from __future__ import annotations


def main() -> None:
    from cnnjax import signals  # the standard library only

    signals.install()
    from cnnjax import launch

    launch.run()
