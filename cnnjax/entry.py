"""The entry point of the ``cnnjax`` command (and of ``python launch.py``, ``python -m
cnnjax``): the signal handlers first, so that Ctrl-C at any moment is one line and a clean
exit, then the command line itself, ``cnnjax.cli``, with everything it imports."""

from __future__ import annotations


def main() -> None:
    from cnnjax import signals  # the standard library only: no JAX, no absl

    signals.install()
    from cnnjax import cli

    cli.run()
