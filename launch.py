"""Launches an experiment: ``python launch.py --config=experiments/X.py --workdir=W``.

Any config field can be overridden: ``--config.optimizer.learning_rate=0.05``. Relaunching
with the same workdir resumes from its newest checkpoint. Config files are Python and run
as code: launch only config files you trust.

    --sweep='optimizer.learning_rate=0.1,0.03 seed=0,1,2'   a grid, one sub-workdir per point
    --mode=eval|predict|visualize --workdir=W              use a trained run's checkpoints
"""

from __future__ import annotations

from cnnjax import signals  # the standard library only: in place before any slow import

signals.install()  # SIGINT/SIGTERM from here on: one line and a clean exit, at any moment

import importlib.util  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cnnjax import overrides  # noqa: E402
from cnnjax.errors import ConfigError  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(_HERE, "experiments", "default.py")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# ``--config.a.b=v`` overrides are applied by cnnjax.overrides, the path sweeps take too, once
# the config file has run; ml_collections sees only ``--config=FILE``.
try:
    sys.argv[1:], _OVERRIDES = overrides.from_argv(sys.argv[1:])
except ConfigError as e:
    _fail(str(e))
_CONFIG = config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "Experiment config file (Python, run as code).",
    lock_config=True,
)
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
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval", "predict", "visualize"],
    "train (or resume); or, for the run in --workdir: eval (eval.json), predict "
    "(predictions.csv for --inputs), visualize (PNGs in W/plots).",
)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "latest", "eval/predict/visualize: 'latest', 'best' or a step number."
)
_EMA = flags.DEFINE_bool(
    "ema", False, "eval/predict/visualize: the checkpoint's average of the weights "
    "(train.ema_decay) instead of the weights.")
_INPUTS = flags.DEFINE_string("inputs", None, "predict: image files a.png,b.png or one x.npz.")
_SWEEP = flags.DEFINE_string(
    "sweep", None, "A grid of overrides, e.g. 'optimizer.learning_rate=0.1,0.01 seed=0,1,2'; "
    "each point trains in <workdir>/<its overrides>. Default: get_sweep() of the config file.",
)
_SWEEP_INDEX = flags.DEFINE_integer(
    "sweep_index", None, "Run only this point of the sweep (0-based; e.g. $SLURM_ARRAY_TASK_ID)."
)
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR", "~/.cache/cnnjax/jax"),
    "JAX's persistent compilation cache: relaunches and sweep points reuse compiled programs. "
    "'' disables it.",
)

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
    _check_config_path(path)
    try:
        config = _CONFIG.value
    except Exception as e:  # the file ran and failed: say which file and why, in one line
        if _VERBOSE.value:
            raise
        if returned := _returned_type(path, config_arg.partition(":")[2]):
            _fail(_not_a_config(path, returned))
        cause = e.__cause__ or e.__context__ or e
        _fail(_config_failure(config_arg, f"{type(cause).__name__}: {cause}"))
    if not isinstance(config, ml_collections.ConfigDict):
        _fail(_not_a_config(path, type(config).__name__))
    try:
        return overrides.apply(config, _OVERRIDES, where=overrides.FLAG)[0]
    except ConfigError as e:
        _fail(str(e))


def _sweep_points(config):
    """The sweep's points (``--sweep`` or the config file's ``get_sweep()``), or None."""
    from cnnjax import sweep

    path = flags.FLAGS["config"].config_filename.partition(":")[0]
    points = sweep.parse_spec(_SWEEP.value) if _SWEEP.value is not None else None
    points = sweep.grid(points) if points else sweep.from_config_file(path)
    if points is None:
        if _SWEEP_INDEX.value is not None:
            _fail("--sweep_index needs --sweep or a config file with get_sweep()")
        return None
    import jax

    return sweep.expand(config, points, jax.device_count())


def _use_run(mode: str) -> None:
    """--mode=eval/predict/visualize on the run in --workdir."""
    from cnnjax import evaluate, probe

    signals.set_stage(signals.STARTING, f"before --mode={mode} wrote anything")
    if not _WORKDIR.value:
        _fail(f"--mode={mode} needs --workdir=W, the workdir of a trained run")
    if mode == "eval":
        evaluate.run_eval(_WORKDIR.value, _CHECKPOINT.value, _EMA.value)
    elif mode == "predict":
        if not _INPUTS.value:
            _fail("--mode=predict needs --inputs=a.png,b.png or --inputs=x.npz")
        evaluate.run_predict(_WORKDIR.value, _INPUTS.value, _CHECKPOINT.value, _EMA.value)
    else:
        probe.visualize(_WORKDIR.value, _CHECKPOINT.value, _EMA.value)


def _check_config_path(path: str) -> None:
    if os.path.isdir(path):
        _fail(f"config file {path!r} is a directory; pass a Python file with get_config(), "
              "e.g. --config=experiments/default.py")
    if not os.path.isfile(path):
        _fail(f"config file {path!r} not found; pass --config=experiments/<name>.py")


def _returned_type(path: str, variant: str) -> str | None:
    """What ``get_config`` of ``path`` returns when it is not a ConfigDict (else None)."""
    try:
        spec = importlib.util.spec_from_file_location("_config_file", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(*([variant] if variant else []))
    except Exception:  # noqa: BLE001 -- the file's own failure is reported as it is
        return None
    return None if isinstance(config, ml_collections.ConfigDict) else type(config).__name__


def _not_a_config(path: str, returned: str) -> str:
    return (f"get_config() in {path!r} returned a {returned}, not an ml_collections.ConfigDict; "
            "return cnnjax.config.defaults() with your changes")


def _config_failure(config_arg: str, text: str) -> str:
    """One line for a config file that raised: its exception's last line (ml_collections
    hands over the whole traceback as text)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "unknown error"
    if re.search(r"has no attribute '?get_config'?", last):
        return (f"config file {config_arg!r} has no get_config(); define get_config() returning "
                "an ml_collections.ConfigDict, as experiments/default.py does")
    return f"config file {config_arg!r} failed to load: {last}"


def _parse_flags(argv: list[str]) -> list[str]:
    # A malformed flag value is one line and exit status 2, like every other bad input.
    if "--verbose" not in argv:  # ml_collections logs while the config file loads
        logging.set_verbosity(logging.ERROR)
    given = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
    config_arg = given[-1] if given else DEFAULT_CONFIG
    path, _, variant = config_arg.partition(":")
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        text = str(e)
        if (m := re.match(r"flag --config=(.*?): Error whilst parsing config file", text)):
            _fail(_config_failure(m.group(1), text))
        if "value for flag config" in text and (returned := _returned_type(path, variant)):
            _fail(_not_a_config(path, returned))
        _fail(f"{text.splitlines()[0]}; see --helpfull")
    except Exception as e:  # only --config runs code while flags are parsed: that file raised
        if "--verbose" in argv:
            raise
        _check_config_path(path)
        if returned := _returned_type(path, variant):
            _fail(_not_a_config(path, returned))
        _fail(_config_failure(config_arg, f"{type(e).__name__}: {e}"))


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}; flags take the form --name=value")
    for flag, modes in (("inputs", ("predict",)), ("checkpoint", ("eval", "predict", "visualize")),
                        ("ema", ("eval", "predict", "visualize"))):
        if flags.FLAGS[flag].present and _MODE.value not in modes:
            _fail(f"--{flag} is for --mode={'/'.join(modes)}; --mode={_MODE.value} does not "
                  "read it")
    if not _VERBOSE.value:  # cnnjax's own lines only; --verbose shows the libraries' too
        logging.set_verbosity(logging.ERROR)
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("default", module=r"cnnjax\b")
        # Inherited by multiprocessing's resource tracker, which would otherwise report the
        # loader workers' shared memory it frees after a stop.
        os.environ.setdefault("PYTHONWARNINGS",
                              "ignore::UserWarning:multiprocessing.resource_tracker")
    config = _load_config()
    from cnnjax import parallel, train

    try:
        parallel.initialize_distributed(
            _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
        )
    except ValueError as e:
        _fail(str(e))
    parallel.enable_compilation_cache(_CACHE_DIR.value)
    workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
    try:
        if _MODE.value != "train":
            _use_run(_MODE.value)
        elif (points := _sweep_points(config)) is not None:
            from cnnjax import sweep

            sweep.run(points, workdir, _SWEEP_INDEX.value,
                      allow_config_change=_ALLOW_CHANGE.value)
        else:
            train.run(config, workdir, allow_config_change=_ALLOW_CHANGE.value)
    except ConfigError as e:
        if _VERBOSE.value:
            raise
        _fail(str(e))
    except OSError as e:  # a path of the workdir or the data that is not what it should be
        if _VERBOSE.value or not e.filename:
            raise
        _fail(f"cannot use {e.filename} ({e.strerror}); make it the file or folder cnnjax "
              "expects there, writable, or pass another path")
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
