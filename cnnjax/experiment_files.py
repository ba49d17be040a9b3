"""Experiment config files, found by name: ``--config=mnist_cnn``,
``experiment_files.load("default:mlp")``. (``cnnjax.config`` holds what a config contains:
its defaults and their validation.)

The files of ``experiments/`` ship inside the package (as ``cnnjax/experiments``), so a name
finds them both in a clone and in an installed wheel; a path to any config file works too.
``name:variant`` passes ``variant`` to the file's ``get_config``, as ml_collections does.
Config files are Python and run as code: load only files you trust.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from pathlib import Path

import ml_collections

from cnnjax.errors import ConfigError

_HERE = Path(__file__).resolve().parent
# An installed wheel has the files in the package; a clone has them beside it.
_PLACES = (_HERE / "experiments", _HERE.parent / "experiments")


def directory() -> Path:
    """Where the packaged experiment configs are."""
    for place in _PLACES:
        if (place / "default.py").is_file():
            return place
    raise ConfigError(f"cnnjax's experiment configs are missing (looked in "
                      f"{', '.join(map(str, _PLACES))}); reinstall cnnjax")


def names() -> list[str]:
    """The packaged configs' names: ``["cifar10_resnet20", "default", ...]``."""
    return sorted(p.stem for p in directory().glob("*.py") if not p.stem.startswith("_"))


def resolve(arg: str) -> str:
    """``name[:variant]`` or ``path[:variant]`` -> ``path[:variant]``, the path of a file that
    exists; a one-line ``ConfigError`` names the valid names otherwise. A path that does not
    exist under ``experiments/`` (run from another directory than a clone's) finds the
    packaged file of that name."""
    path, sep, variant = arg.partition(":")
    if os.path.isfile(path):
        return arg
    if os.path.isdir(path):
        raise ConfigError(f"config file {path!r} is a directory; pass a Python file with "
                          "get_config() or the name of a packaged config, e.g. --config=default")
    is_name = not ("/" in path or os.sep in path or path.endswith(".py"))
    if is_name or Path(path).parent.name == "experiments":
        name, known = Path(path).stem, names()
        if name in known:
            return str(directory() / f"{name}.py") + sep + variant
        if is_name:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"no config named {name!r}; {hint}choose one of: "
                              f"{', '.join(known)} (or pass the path of a config file)")
    raise ConfigError(f"config file {path!r} not found; pass the path of a config file or the "
                      f"name of a packaged one: {', '.join(names())}")


def load(arg: str) -> ml_collections.ConfigDict:
    """Runs the config file that ``arg`` (``name[:variant]`` or ``path[:variant]``) names and
    returns its ``get_config([variant])``; a one-line ``ConfigError`` says why it could not
    (the file's own exception is its cause)."""
    path, _, variant = resolve(arg).partition(":")
    try:
        spec = importlib.util.spec_from_file_location(f"_config_{Path(path).stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ConfigError(f"config file {arg!r} has no get_config(); define get_config() "
                              "returning an ml_collections.ConfigDict, as "
                              "experiments/default.py does")
        config = module.get_config(*([variant] if variant else []))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 -- the file's own failure, in one line
        raise ConfigError(f"config file {arg!r} failed to load: {type(e).__name__}: "
                          f"{_last_line(str(e))}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() in {arg.partition(':')[0]!r} returned "
                          f"a {type(config).__name__}, not an ml_collections.ConfigDict; "
                          "return cnnjax.config.defaults() with your changes")
    return config


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
