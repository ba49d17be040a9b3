"""Launches an experiment: ``python launch.py --config=experiments/X.py --workdir=W``.

Any config field can be overridden: ``--config.optimizer.learning_rate=0.05``. Relaunching
with the same workdir resumes from its newest checkpoint. Config files are Python and run
as code: launch only config files you trust.
"""

from __future__ import annotations

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(_HERE, "experiments", "default.py")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _unknown_override(error: Exception) -> str:
    # ml_collections resolves --config.a.b overrides while the flag is defined and raises a
    # KeyError/AttributeError whose text holds the bad key and a suggestion.
    text = str(error).replace("\\'", "'").strip("'\"")
    key = re.match(r"'?([^'\n]+)'?", text).group(1) if text else "?"
    flag = next((a for a in sys.argv[1:] if a.startswith("--config.") and key in a), key)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    suggestion = f"; did you mean {hint.group(1)!r}?" if hint else ""
    return f"unknown config key {key!r} in {flag.split('=')[0]}{suggestion}"


try:
    _CONFIG = config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "Experiment config file (Python, run as code).",
        lock_config=True,
    )
except (KeyError, AttributeError) as e:
    _fail(_unknown_override(e))

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config, metrics and checkpoints (default: workdirs/<config>)."
)
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir whose recorded config differs from this one."
)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show tracebacks and library logs.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "Multi-host: host:port of process 0. Without it, SLURM and Cloud TPU are auto-detected.",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")

# Exit statuses a scheduler can act on.
EXIT_CONFIG = 2  # bad input: nothing ran, nothing changed
EXIT_NONFINITE = 3  # nan_policy=stop fired; the last good checkpoint is kept
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpoint committed, relaunch to resume


def default_workdir(config_arg: str) -> str:
    path, _, variant = config_arg.partition(":")
    name = os.path.splitext(os.path.basename(path))[0] + (f"_{variant}" if variant else "")
    return os.path.join("workdirs", name)


def _load_config():
    config_arg = flags.FLAGS["config"].config_filename
    path = config_arg.partition(":")[0]
    if not os.path.isfile(path):
        _fail(f"config file {path!r} not found; pass --config=experiments/<name>.py")
    try:
        return _CONFIG.value
    except Exception as e:  # the file ran and failed: say which file and why, in one line
        if _VERBOSE.value:
            raise
        cause = e.__cause__ or e.__context__ or e
        _fail(f"config file {config_arg!r} failed to load: {type(cause).__name__}: {cause}")


def _parse_flags(argv: list[str]) -> list[str]:
    # A malformed flag value is one line and exit status 2, like every other bad input.
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(f"{e}; see --helpfull")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}; flags take the form --name=value")
    if not _VERBOSE.value:  # Orbax and TFDS log every step of their work at INFO
        logging.set_verbosity(logging.WARNING)
    config = _load_config()
    from cnnjax import parallel, train
    from cnnjax.config import ConfigError

    try:
        parallel.initialize_distributed(
            _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
        )
    except ValueError as e:
        _fail(str(e))
    workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
    try:
        train.run(config, workdir, allow_config_change=_ALLOW_CHANGE.value)
    except ConfigError as e:
        if _VERBOSE.value:
            raise
        _fail(str(e))
    except train.Preempted as e:
        print(e, file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    except train.NonFiniteError as e:
        if _VERBOSE.value:
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_NONFINITE
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
