"""Launches an experiment from a clone: ``python launch.py --config=default --workdir=W``.

The same as the installed ``cnnjax`` command (``cnnjax.cli``); ``--help`` says more.
"""

from cnnjax.cli import main

if __name__ == "__main__":
    main()
