"""Launches an experiment: ``python launch.py --config=experiments/X.py --workdir=W``.

Any config field can be overridden: ``--config.optimizer.learning_rate=0.05``. Relaunching
with the same workdir resumes from its newest checkpoint.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(_HERE, "experiments", "default.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "Experiment config file (Python, run as code).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config, metrics and checkpoints (default: workdirs/<config>)."
)
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir whose recorded config differs from this one."
)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show tracebacks for configuration errors.")


def default_workdir(config_arg: str) -> str:
    path, _, variant = config_arg.partition(":")
    name = os.path.splitext(os.path.basename(path))[0] + (f"_{variant}" if variant else "")
    return os.path.join("workdirs", name)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _VERBOSE.value:  # Orbax and TFDS log every step of their work at INFO
        logging.set_verbosity(logging.WARNING)
    from cnnjax import train
    from cnnjax.config import ConfigError

    workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
    try:
        train.run(_CONFIG.value, workdir, allow_config_change=_ALLOW_CHANGE.value)
    except ConfigError as e:
        if _VERBOSE.value:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    app.run(main)
