"""Launches an experiment from a clone: ``python launch.py --config=default --workdir=W``.

The same as the installed ``cnnjax`` command (``cnnjax.entry``, then ``cnnjax.cli``);
``--help`` says more.
"""

from cnnjax.entry import main

if __name__ == "__main__":
    main()
