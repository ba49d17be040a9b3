"""Overrides of a config's fields: the one path for the command line and for sweeps.

``apply(config, {"optimizer.learning_rate": "0.05"}, where="--config.")`` returns a copy of
``config`` with each value converted to its field's type (text from a command line, or a
Python value from ``get_sweep()``), or raises a one-line ``ConfigError``: an unknown key with
the closest known one, a value that is not of the field's type. ``model.name`` is applied
first: naming another model than the config's brings that model's own fields with their
defaults (the old model's fields would not apply to it), and the other ``model.*``
overrides then apply to them.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Mapping
from typing import Any

import ml_collections

from cnnjax import models
from cnnjax.config import did_you_mean, model_config
from cnnjax.errors import ConfigError

FLAG = "--config."  # ``where`` for command-line flags; any other text names the source
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             tuple: "a tuple such as (8,16)", list: "a tuple such as (8,16)"}
_TRUE, _FALSE = ("true", "t", "1"), ("false", "f", "0")


def apply(config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
          where: str = "sweep") -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """``(config with overrides, the overrides as typed values)``.

    ``where`` is ``FLAG`` for ``--config.a.b=v`` flags (``None`` as a value: the flag was
    given bare, which means true for a boolean field), or the name of the source for messages
    (``"sweep"``).
    """
    config = copy.deepcopy(config)
    typed: dict[str, Any] = {}
    with config.unlocked():
        if "model.name" in overrides:
            name = str(overrides["model.name"])
            if name not in models.names():
                place = f"{FLAG}model.name" if where == FLAG else where
                raise ConfigError(f"unknown model {name!r} in {place}; choose one of: "
                                  f"{', '.join(models.names())}")
            if name != config.model.name:  # the same name keeps the config's own fields
                config.model = model_config(name)
            typed["model.name"] = name
        for key, raw in overrides.items():
            if key == "model.name":
                continue
            parent, node = None, config
            for depth, part in enumerate(key.split(".")):
                if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                    raise ConfigError(_unknown(config, key, depth, node, where))
                parent, node = node, node[part]
            if isinstance(node, ml_collections.ConfigDict):
                example = f"{FLAG}{key}.{next(iter(node))}=..." if where == FLAG else \
                    f"{key}.{next(iter(node))}"
                raise ConfigError(f"{key} is a section of the config, not a field; override "
                                  f"its fields, e.g. {example}")
            parent[key.rsplit(".", 1)[-1]] = typed[key] = _coerce(key, raw, node, where)
    return config, typed


def _unknown(config: ml_collections.ConfigDict, key: str, depth: int, node: Any,
             where: str) -> str:
    """The message for an unknown ``key`` (its part ``depth`` is the first one missing)."""
    if where == FLAG:  # as a flag: the missing part, and the closest of its siblings
        part = key.split(".")[depth]
        siblings = list(node) if isinstance(node, ml_collections.ConfigDict) else []
        hint = did_you_mean(part, siblings)
        if not hint and key.startswith("model.") and depth == 1:
            hint = f"; model {config.model.name!r} has the fields: " + ", ".join(
                k for k in config.model if k != "name")
        return f"unknown config key {part!r} in {FLAG}{key}{hint}"
    flat = _flat_keys(config)
    return f"unknown config key {key!r} in {where}{did_you_mean(key, flat)}"


def _flat_keys(tree: Any, prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        keys += (_flat_keys(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict)
                 else [f"{prefix}{k}"])
    return keys


def _coerce(key: str, raw: Any, current: Any, where: str) -> Any:
    """``raw`` (text from a command line, or a Python value) as the type of ``current``."""
    text = isinstance(raw, str) and not isinstance(current, str)
    if raw is None and where == FLAG and not isinstance(current, bool):
        raise ConfigError(f"{FLAG}{key} needs a value: {FLAG}{key}=VALUE")
    try:
        if isinstance(current, bool):
            if raw is None and where == FLAG:  # a bare --config.a.b
                return True
            if text and raw.lower() in _TRUE + _FALSE:
                return raw.lower() in _TRUE
            if isinstance(raw, bool):
                return raw
        elif isinstance(current, int):
            value = int(raw) if text else raw
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif isinstance(current, float):
            value = float(raw) if text else raw
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif isinstance(current, (tuple, list)):
            value = ast.literal_eval(raw) if text else raw
            if isinstance(value, (tuple, list)):
                return tuple(value)
        elif isinstance(current, str):
            if isinstance(raw, str):
                return raw
        else:  # None or another type: a Python literal, or the text itself
            try:
                return ast.literal_eval(raw) if text else raw
            except (ValueError, SyntaxError):
                return raw
    except (ValueError, SyntaxError, TypeError):
        pass
    expected = _EXPECTED.get(type(current), type(current).__name__)
    if where == FLAG:
        raise ConfigError(f"value {raw!r} for {FLAG}{key} must be {expected}")
    raise ConfigError(f"{where} value {raw!r} for {key} must be {expected}")


def from_argv(argv: list[str]) -> tuple[list[str], dict[str, str | None]]:
    """Splits ``--config.a.b=v`` (and bare ``--config.a.b``, ``--noconfig.a.b``) out of a
    command line: ``(the other arguments, {"a.b": "v"})``; the last of a repeated key wins."""
    rest, found = [], {}
    for arg in argv:
        for prefix, bare in (("--config.", None), ("--noconfig.", "false")):
            if arg.startswith(prefix) and len(arg) > len(prefix):
                key, sep, value = arg[len(prefix):].partition("=")
                if prefix == "--noconfig." and sep:
                    raise ConfigError(f"{arg}: --noconfig.{key} takes no value; pass "
                                      f"--config.{key}={value}")
                found.pop(key, None)
                found[key] = value if sep else bare
                break
        else:
            rest.append(arg)
    return rest, found
