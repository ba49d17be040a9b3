"""The command line: ``cnnjax --config=NAME|FILE[:variant] [--config.a.b=v ...] --workdir=W``.

Trains (or resumes) the experiment of a config, evaluates, predicts or draws a trained run, or
sweeps a grid of overrides. ``cnnjax.entry`` is the entry point (``cnnjax``, ``python
launch.py``, ``python -m cnnjax``); it routes signals before anything here is imported.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable

import ml_collections
from absl import app, flags, logging

from cnnjax import errors, experiment_files, overrides, signals
from cnnjax.errors import EXIT_CONFIG, ConfigError

USAGE = """cnnjax: trains convolutional networks in JAX/Flax, checkpointed and exactly resumable.

  cnnjax [--config=NAME|FILE[:variant]] [--config.<section>.<field>=VALUE ...] [--workdir=W]
  cnnjax --print_config [--config=...] [--config.<section>.<field>=VALUE ...]
  cnnjax --print_config --config.<section>      a section's fields: value and meaning
  cnnjax --sweep='optimizer.learning_rate=0.1,0.03 seed=0,1' --workdir=W
  cnnjax --mode=eval|predict|visualize|explain|export --workdir=W   (or: cnnjax export --workdir=W)
  cnnjax weights list | download NAME | verify [NAME]   (for --config.init.pretrained=NAME)

Configs by name: {names} (default: default), or the path of any config file (Python, run as
code: launch only files you trust). Relaunching with the same workdir resumes it.
Config sections: {sections}; any field can be overridden from the command line.
"""



# The libraries' logs without --verbose: none. Their errors are cnnjax's to report, in one line
# (Orbax logs a failed save at ERROR from each of its threads before cnnjax learns of it).
QUIET = logging.FATAL

def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_CONFIG)


def _on_run(mode: str) -> None:
    """What every mode on a trained run checks first: --workdir names one."""
    signals.set_stage(signals.STARTING, f"before --mode={mode} wrote anything")
    if not _WORKDIR.value:
        _fail(f"--mode={mode} needs --workdir=W, the workdir of a trained run")


def _eval(_config: ml_collections.ConfigDict) -> None:
    from cnnjax import run

    _on_run("eval")
    run.run_eval(_WORKDIR.value, _CHECKPOINT.value, _EMA.value)


def _predict(_config: ml_collections.ConfigDict) -> None:
    from cnnjax import run

    _on_run("predict")
    if not _INPUTS.value:
        _fail("--mode=predict needs --inputs=a.png,b.png or --inputs=x.npz")
    run.run_predict(_WORKDIR.value, _INPUTS.value, _CHECKPOINT.value, _EMA.value)


def _visualize(_config: ml_collections.ConfigDict) -> None:
    from cnnjax import run

    _on_run("visualize")
    run.run_visualize(_WORKDIR.value, _CHECKPOINT.value, _EMA.value)


def _explain(_config: ml_collections.ConfigDict) -> None:
    from cnnjax import run

    _on_run("explain")
    run.run_explain(_WORKDIR.value, _INPUTS.value, _CHECKPOINT.value, _EMA.value)


def _export(_config: ml_collections.ConfigDict) -> None:
    from cnnjax import run

    _on_run("export")
    run.run_export(_WORKDIR.value, _FORMAT.value, _CHECKPOINT.value, _EMA.value, _TOLERANCE.value)


def _train(config: ml_collections.ConfigDict) -> None:
    from cnnjax import training

    workdir = _WORKDIR.value or default_workdir(_CONFIG.value)
    allow = {"allow_config_change": _ALLOW_CHANGE.value,
             "allow_data_change": _ALLOW_DATA_CHANGE.value}
    if (points := _sweep_points(config, workdir)) is not None:
        from cnnjax import search, sweep

        if isinstance(points, search.Search):
            search.run(points, **allow)
        else:
            sweep.run(points, workdir, _SWEEP_INDEX.value, **allow)
    else:
        training.run(config, workdir, **allow)


# What each --mode runs, train first (the default): a new mode is one entry here.
MODES: dict[str, Callable[[ml_collections.ConfigDict], None]] = {
    "train": _train,
    "eval": _eval,
    "predict": _predict,
    "visualize": _visualize,
    "explain": _explain,
    "export": _export,
}
_OVERRIDES: dict[str, str | None] = {}  # --config.a.b=v, split out of argv by _parse_flags
_CONFIG = flags.DEFINE_string(
    "config", "default", "A packaged config's name (default, mnist_cnn, ...; see --help) or the "
    "path of a config file; ':variant' is passed to its get_config().")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print the resolved config (with the overrides, as the run would "
    "record it in config.json) and exit, creating nothing; with a bare --config.<section>, "
    "that section's fields and what each means.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config, metrics and checkpoints (default: workdirs/<config>)."
)
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir whose recorded config differs from this one."
)
_ALLOW_DATA_CHANGE = flags.DEFINE_bool(
    "allow_data_change", False, "Resume a workdir whose recorded data (run.json) differs from "
    "the data now; the change is recorded in its history.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show tracebacks and library logs.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "Multi-host: host:port of process 0. Without it, SLURM and Cloud TPU are auto-detected.",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_MODE = flags.DEFINE_enum(
    "mode", "train", list(MODES),
    "train (or resume); or, for the run in --workdir: eval (eval.json), predict "
    "(predictions.csv for --inputs), visualize (PNGs in W/plots), explain (Grad-CAM and "
    "saliency PNGs in W/plots), export (W/export/step<N>.<format>, checked against the model). "
    "Also as a word: cnnjax export --workdir=W.",
)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "latest", "eval/predict/visualize/explain/export: 'latest', 'best' or a step "
    "number."
)
_EMA = flags.DEFINE_bool(
    "ema", False, "eval/predict/visualize/explain/export: the checkpoint's average of the "
    "weights (train.ema_decay) instead of the weights.")
_INPUTS = flags.DEFINE_string(
    "inputs", None, "predict, explain: image files a.png,b.png or one x.npz (explain: default, "
    "the first 8 test images).")
flags.DEFINE_alias("images", "inputs")
_FORMAT = flags.DEFINE_string("format", "stablehlo", "export: one of cnnjax.export.FORMATS: "
                              "stablehlo (jax.export) or onnx (the [export] extra).")
_TOLERANCE = flags.DEFINE_float(
    "tolerance", 1e-5, "export: the largest difference of the exported logits from the "
    "model's, relative to the largest logit, on 32 test images; over it nothing is written.")
_SWEEP = flags.DEFINE_string(
    "sweep", None, "A grid of overrides, e.g. 'optimizer.learning_rate=0.1,0.01 seed=0,1,2'; "
    "each point trains in <workdir>/<its overrides>. Default: get_sweep() of the config file.",
)
_SWEEP_INDEX = flags.DEFINE_integer(
    "sweep_index", None, "Run only this point of the sweep (0-based; e.g. $SLURM_ARRAY_TASK_ID)."
)
_SWEEP_TRIALS = flags.DEFINE_integer(
    "sweep_trials", None, "A search over ranges (--sweep='key=loguniform(a,b) ...'; also "
    "uniform, int, intlog): how many trials the study samples in all, over every launch.")
_SWEEP_METHOD = flags.DEFINE_string(
    "sweep_method", None, "grid (comma lists), or for ranges random, quasirandom (default) or "
    "tpe; seeded from the config's seed.")
_SWEEP_OBJECTIVE = flags.DEFINE_string(
    "sweep_objective", "eval_accuracy", "A search's objective: an evaluation metric; *_loss is "
    "minimised, the others maximised (see --sweep_direction).")
_SWEEP_DIRECTION = flags.DEFINE_string(
    "sweep_direction", None, "maximize or minimize the objective (default: from its name).")
_SWEEP_PRUNER = flags.DEFINE_string(
    "sweep_pruner", None, "Stops weak trials after an evaluation: none (default), median, "
    "successive_halving or hyperband.")
_SWEEP_STORAGE = flags.DEFINE_string(
    "sweep_storage", None, "A search's study in any storage URL Optuna opens (postgresql://..., "
    "sqlite:///...) instead of <workdir>/study.journal.")
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR", "~/.cache/cnnjax/jax"),
    "JAX's persistent compilation cache: relaunches and sweep points reuse compiled programs. "
    "'' disables it.",
)

def default_workdir(config_arg: str) -> str:
    path, _, variant = config_arg.partition(":")
    name = os.path.splitext(os.path.basename(path))[0] + (f"_{variant}" if variant else "")
    return os.path.join("workdirs", name)


def _load_config() -> tuple[ml_collections.ConfigDict, list[str]]:
    """The config with the ``--config.a.b=v`` overrides, and the sections named bare
    (``--config.optimizer``, for ``--print_config``)."""
    config = experiment_files.load(_CONFIG.value)
    given = dict(_OVERRIDES)
    sections = [key for key, value in given.items() if value is None and _is_section(config, key)]
    for key in sections:
        given.pop(key)
    if sections and not _PRINT_CONFIG.value:
        raise ConfigError(f"{overrides.FLAG}{sections[0]} is a section of the config; "
                          f"show its fields with --print_config {overrides.FLAG}{sections[0]}, "
                          f"or override one, e.g. {overrides.FLAG}{sections[0]}."
                          f"{next(iter(_section(config, sections[0])))}=...")
    return overrides.apply(config, given, where=overrides.FLAG)[0], sections


def _section(config: ml_collections.ConfigDict, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _is_section(config: ml_collections.ConfigDict, key: str) -> bool:
    try:
        return isinstance(_section(config, key), ml_collections.ConfigDict)
    except (KeyError, AttributeError, TypeError):
        return False


def _print_config(config: ml_collections.ConfigDict, sections: list[str]) -> None:
    """The resolved config as ``config.json`` records it; or the named sections' fields."""
    from cnnjax import config as config_lib

    config_lib.validate(config)
    if not sections:
        print(config_lib.to_json(config))
        return
    for key in sections:
        print("\n".join(config_lib.describe(config, key)))


def _sweep_points(config, workdir: str | None = None):
    """The sweep's points (``--sweep`` or the config file's ``get_sweep()``), a search over
    ranges (``cnnjax.search.Search``), or None."""
    from cnnjax import search, sweep

    path = experiment_files.resolve(_CONFIG.value).partition(":")[0]
    points = sweep.parse_spec(_SWEEP.value) if _SWEEP.value is not None else None
    given = {f.name[len("sweep_"):]: f.value for f in (
        _SWEEP_TRIALS, _SWEEP_METHOD, _SWEEP_OBJECTIVE, _SWEEP_DIRECTION, _SWEEP_PRUNER,
        _SWEEP_STORAGE) if f.present}
    axes = points if points is not None else sweep.from_config_file(path, raw=True)
    if search.ranged(config, axes) or any((k, v) != ("method", "grid") for k, v in given.items()):
        if _SWEEP_INDEX.value is not None:
            _fail("--sweep_index is for grids; a search's workers share one study: launch the "
                  "same command once per array task")
        import jax

        command = ["python", "launch.py", f"--config={_CONFIG.value}",
                   *(f"{overrides.FLAG}{k}" + ("" if v is None else f"={v}")
                     for k, v in _OVERRIDES.items())]
        workdir = workdir or _WORKDIR.value or default_workdir(_CONFIG.value)
        return search.plan(config, axes, workdir, command=command,
                           device_count=jax.device_count(), **given)
    points = sweep.grid({k: list(v) for k, v in axes.items()}) if isinstance(axes, dict) else axes
    if points is None:
        if _SWEEP_INDEX.value is not None:
            _fail("--sweep_index needs --sweep or a config file with get_sweep()")
        return None
    import jax

    return sweep.expand(config, points, jax.device_count())


def _help() -> str:
    from cnnjax import config as config_lib

    sections = ", ".join(config_lib.SECTIONS)
    text = USAGE.format(names=", ".join(experiment_files.names()), sections=sections)
    return f"{text}\nflags:\n{flags.FLAGS.module_help(__name__)}\n"


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flags, less the ``--config.a.b=v`` overrides (kept in ``_OVERRIDES``); a bad
    flag is one line and exit status 2, like every other bad input."""
    if "--verbose" not in argv:
        logging.set_verbosity(QUIET)
    try:
        rest, found = overrides.from_argv(argv[1:])
    except ConfigError as e:
        _fail(str(e))
    _OVERRIDES.clear()
    _OVERRIDES.update(found)
    if {"--help", "-h", "-?", "--helpshort"} & set(rest):
        print(_help(), end="")
        sys.exit(0)
    try:
        return flags.FLAGS([argv[0], *rest])
    except flags.Error as e:
        _fail(f"{errors.first_line(e)}; see --help")


def main(argv: list[str]) -> int:
    try:
        return _main(argv)
    except Exception as e:  # the one handler: each error class carries its exit status
        failure = errors.report(e)
        if failure is None or (_VERBOSE.value and failure[1].startswith("error: ")):
            raise
        print(failure[1], file=sys.stderr, flush=True)
        return failure[0]


def _main(argv: list[str]) -> int:
    words = argv[1:]
    if words and words[0] == "weights":  # cnnjax weights list|download|verify: no run, no config
        from cnnjax import weights

        return weights.command(words[1:])
    words, on_a_run = argv[1:], tuple(MODES)[1:]
    if words and words[0] in on_a_run and (not _MODE.present or _MODE.value == words[0]):
        flags.FLAGS.mode, words = words[0], words[1:]  # cnnjax export --workdir=W
    elif words and words[0] in on_a_run:
        _fail(f"{words[0]} and --mode={_MODE.value} ask for two things; give one")
    if words:
        _fail(f"unexpected arguments: {' '.join(words)}; flags take the form --name=value "
              f"(a mode may come first as a word: {', '.join(on_a_run)})")
    for flag, modes in (("inputs", ("predict", "explain")), ("checkpoint", on_a_run),
                        ("ema", on_a_run), ("format", ("export",)), ("tolerance", ("export",))):
        if flags.FLAGS[flag].present and _MODE.value not in modes:
            _fail(f"--{flag} is for --mode={'/'.join(modes)}; --mode={_MODE.value} does not "
                  "read it")
    if not _VERBOSE.value:  # cnnjax's own lines only; --verbose shows the libraries' too
        logging.set_verbosity(QUIET)
        # Exceptions raised where nothing can catch them: in a library's callbacks (tensorstore
        # finishing a write after Orbax gave up on a full disk), or at exit; --verbose shows them.
        sys.unraisablehook = lambda unraisable: None
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("default", module=r"cnnjax\b")
        # Inherited by multiprocessing's resource tracker, which would otherwise report the
        # loader workers' shared memory it frees after a stop.
        os.environ.setdefault("PYTHONWARNINGS",
                              "ignore::UserWarning:multiprocessing.resource_tracker")
    config, sections = _load_config()
    if _PRINT_CONFIG.value:
        _print_config(config, sections)
        return 0
    from cnnjax import parallel

    try:
        parallel.initialize_distributed(
            _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    parallel.enable_compilation_cache(_CACHE_DIR.value)
    MODES[_MODE.value](config)
    return 0


def run() -> None:
    """Parses the command line and runs it; exits with the status of ``main``."""
    app.run(main, flags_parser=_parse_flags)
