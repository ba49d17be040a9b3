"""Transfer learning: start from pretrained weights, swap the head, freeze what should stay.

``init.checkpoint`` names either a directory written by
``python -m cnnjax.models.pretrained`` (converted torchvision weights) or the workdir of an
earlier cnnjax run (its newest checkpoint). Every parameter and BatchNorm statistic whose
path and shape match is copied; the rest keep their fresh initialisation and are listed, so
a 1000-class ImageNet head simply gives way to a new 10-class head.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from cnnjax import checkpoint, optim
from cnnjax.errors import ConfigError, first_line
from cnnjax.models.pretrained import load_pretrained

_SOURCES = ("give a directory written by `python -m cnnjax.models.pretrained` or the workdir "
            "of an earlier run")
_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA")


def check_source(path: str) -> None:
    """Raises ``ConfigError`` before any work for an ``init.checkpoint`` that holds no weights
    (``""``, starting from scratch, passes)."""
    if not path:
        return
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(full):
        raise ConfigError(f"init.checkpoint {full} does not exist; {_SOURCES}")
    if os.path.isdir(os.path.join(full, "checkpoints")):
        if not checkpoint.complete_steps(os.path.join(full, "checkpoints")):
            raise ConfigError(f"init.checkpoint {full} is a workdir with no complete "
                              f"checkpoint; train it first, or {_SOURCES}")
        return
    if not os.path.isdir(full) or not any(
            os.path.exists(os.path.join(full, m)) for m in _ORBAX_MARKERS):
        for up in (os.path.dirname(full), os.path.dirname(os.path.dirname(full))):
            if os.path.isdir(os.path.join(up, "checkpoints")) and up != full:
                raise ConfigError(f"init.checkpoint {full} is inside the workdir {up}; pass "
                                  f"--config.init.checkpoint={up} (its newest checkpoint)")
        raise ConfigError(f"init.checkpoint {full} is neither converted weights nor a "
                          f"workdir; {_SOURCES}")


def load_variables(path: str) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` from a pretrained directory or a cnnjax workdir."""
    check_source(path)
    path = os.path.abspath(os.path.expanduser(path))
    try:
        if os.path.isdir(os.path.join(path, "checkpoints")):
            directory = os.path.join(path, "checkpoints")
            newest = checkpoint.complete_steps(directory)[-1]
            state, _ = checkpoint.read_step(directory, newest)
            # A schedule-free run's weights are its averaged ones (what it evaluated).
            return {"params": optim.eval_params(state.get("opt_state"), state["params"]),
                    "batch_stats": state.get("batch_stats") or {}}
        variables = load_pretrained(path)
    except Exception as e:  # noqa: BLE001 -- any unreadable file: one line naming the path
        reason = first_line(e)
        raise ConfigError(f"init.checkpoint {path} is unreadable ({reason}); convert or train "
                          "it again") from None
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats") or {}}


def merge(fresh: Any, loaded: Any, exclude: str = "") -> tuple[Any, list[str]]:
    """Copies the leaves of ``loaded`` into ``fresh`` where path and shape match.

    Args:
      fresh: the freshly initialised tree (its structure is kept).
      loaded: the pretrained tree.
      exclude: a regex; leaves whose ``/``-joined path matches it are never copied.

    Returns:
      the merged tree and a list of notes on every leaf that was not copied, and why.
    """
    flat_fresh = traverse_util.flatten_dict(fresh, sep="/") if fresh else {}
    flat_loaded = traverse_util.flatten_dict(loaded, sep="/") if loaded else {}
    merged, notes = {}, []
    for path, value in flat_fresh.items():
        source = flat_loaded.get(path)
        if exclude and re.search(exclude, path):
            notes.append(f"{path} re-initialised (excluded)")
        elif source is None:
            notes.append(f"{path} re-initialised (not in the checkpoint)")
        elif tuple(source.shape) != tuple(value.shape):
            notes.append(
                f"{path} re-initialised (shape {tuple(source.shape)} -> {tuple(value.shape)})"
            )
        else:
            value = np.asarray(source, dtype=value.dtype)
        merged[path] = value
    unused = sorted(set(flat_loaded) - set(flat_fresh))
    if unused:
        notes.append(f"unused in the checkpoint: {', '.join(unused)}")
    return traverse_util.unflatten_dict(merged, sep="/"), notes


def initialize_from(state, path: str, exclude: str, tx, sharding) -> tuple[Any, list[str]]:
    """The train state with pretrained params and batch stats copied in (fresh optimizer)."""
    loaded = load_variables(path)
    params, notes = merge(jax.device_get(state.params), loaded["params"], exclude)
    stats, stat_notes = merge(jax.device_get(state.batch_stats), loaded["batch_stats"], exclude)
    params = jax.device_put(params, sharding)
    state = state.replace(
        params=params,
        batch_stats=jax.device_put(stats, sharding),
        opt_state=jax.jit(tx.init, out_shardings=sharding)(params),
    )
    return state, notes + [f"batch_stats: {n}" for n in stat_notes]
