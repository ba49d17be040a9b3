"""Sweeps: a grid of config overrides, each point trained in its own sub-directory.

    python launch.py --config=experiments/default.py --workdir=W \\
        --sweep='optimizer.learning_rate=0.1,0.03,0.01 seed=0,1,2'

Axes are separated by spaces, values by commas (commas inside brackets belong to the value:
``model.features=(8,16),(16,32)``). A config file may instead define ``get_sweep()``,
returning a grid ``{key: [values]}`` or a list of override dicts; ``--sweep`` wins over it.

Point ``k`` (grid order: the last axis varies fastest) trains in ``W/<name>``, its name made
of its overrides (``optimizer.learning_rate=0.1,seed=0``). A point is finished when its
``summary.json`` records the full step count: relaunching skips finished points and resumes
the others from their checkpoints. ``--sweep_index=K`` runs point K only (one per SLURM array
task). Whenever a point finishes, ``W/results.csv``, ``W/results.md`` and (with a ``seed``
axis) ``W/results_mean.csv`` are rewritten: every point's overrides and final and best test
metrics, and the mean and sample standard deviation over seeds of the points that differ
only in ``seed``. Every point's config is checked before any training starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import os
import re
import shlex
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from cnnjax import config as config_lib
from cnnjax import files, training
from cnnjax import overrides as overrides_lib
from cnnjax.errors import WorkdirLocked
from cnnjax.workdir import read_summary

METRICS = ("eval_accuracy", "eval_top5_accuracy", "eval_loss", "best_value")


@dataclasses.dataclass
class Point:
    index: int
    overrides: dict[str, Any]  # key -> value, typed as the config field
    name: str
    config: ml_collections.ConfigDict


# ------------------------------------------------------------------------------ expansion


def _split_values(text: str) -> list[str]:
    """``0.1,(8,16),x`` -> ``["0.1", "(8,16)", "x"]``: commas inside brackets are kept."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    return [v.strip() for v in [*values, current] if v.strip()]


def parse_spec(spec: str) -> dict[str, list[str]]:
    """``'a.b=1,2 c=x'`` -> ``{"a.b": ["1", "2"], "c": ["x"]}`` (values still text)."""
    axes: dict[str, list[str]] = {}
    try:
        words = shlex.split(spec)
    except ValueError as e:
        raise config_lib.ConfigError(
            f"--sweep={spec!r} cannot be split into axes ({e}); e.g. "
            "--sweep='optimizer.learning_rate=0.1,0.05 seed=0,1'") from None
    for axis in words:
        key, sep, values = axis.partition("=")
        if not sep or not key or not _split_values(values):
            raise config_lib.ConfigError(
                f"sweep axis {axis!r} must look like key=value1,value2,...")
        if key in axes:
            raise config_lib.ConfigError(f"sweep axis {key!r} is given twice")
        axes[key] = _split_values(values)
    if not axes:
        raise config_lib.ConfigError("--sweep is empty; e.g. --sweep='seed=0,1,2'")
    return axes


def grid(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, the last axis varying fastest."""
    keys = list(axes)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes.values())]


def from_config_file(path: str, raw: bool = False) -> list[dict[str, Any]] | None:
    """The points of ``get_sweep()`` in config file ``path`` (None if it has none); ``raw``:
    what it returned, a dict not yet expanded (a search's ranges, ``cnnjax.search``)."""
    spec = importlib.util.spec_from_file_location("_cnnjax_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        return None
    try:
        sweep = module.get_sweep()
    except Exception as e:  # noqa: BLE001 -- the user's function: say which and why, one line
        raise config_lib.ConfigError(
            f"get_sweep() in {path} failed: {type(e).__name__}: {e}") from None
    if isinstance(sweep, dict) and raw:
        return dict(sweep)
    if isinstance(sweep, dict):
        return grid({k: list(v) for k, v in sweep.items()})
    if isinstance(sweep, (list, tuple)) and all(isinstance(p, dict) for p in sweep):
        return [dict(p) for p in sweep]
    raise config_lib.ConfigError(
        f"get_sweep() in {path} must return {{key: [values]}} or a list of dicts")


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "-".join(_format(v) for v in value)
    return str(value)


def point_name(overrides: dict[str, Any]) -> str:
    """A filesystem-safe directory name: ``key=value,key=value`` (long names hashed)."""
    name = ",".join(f"{k}={_format(v)}" for k, v in overrides.items())
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name) or "default"
    if len(name) > 180:
        name = f"{name[:160]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


def expand(config: ml_collections.ConfigDict, points: list[dict[str, Any]],
           device_count: int | None = None) -> list[Point]:
    """Configs of every point, each validated (``ConfigError`` before any work)."""
    result, names = [], set()
    for i, overrides in enumerate(points):
        point_config, typed = overrides_lib.apply(config, overrides, where="sweep")
        try:
            config_lib.validate(point_config, device_count)
        except config_lib.ConfigError as e:
            raise config_lib.ConfigError(f"sweep point {point_name(typed)}: {e}") from None
        name = point_name(typed)
        if name in names:
            raise config_lib.ConfigError(f"sweep point {name} appears twice")
        names.add(name)
        result.append(Point(i, typed, name, point_config))
    return result


# ------------------------------------------------------------------------------ running


def is_finished(point_dir: str) -> bool:
    summary = read_summary(point_dir)
    return bool(summary) and summary.get("step", -1) >= summary.get("total_steps", 0)


def run(
    points: list[Point], workdir: str, index: int | None = None,
    train_fn: Callable[..., dict] | None = None, **train_kwargs: Any,
) -> None:
    """Trains every unfinished point (or only point ``index``), then writes the results."""
    if train_fn is None:
        train_fn = training.run
    if index is not None and not 0 <= index < len(points):
        raise config_lib.ConfigError(
            f"--sweep_index={index} is out of range: the sweep has {len(points)} points "
            f"(0..{len(points) - 1})")
    workdir = os.path.abspath(workdir)
    chosen = points if index is None else [points[index]]
    log = print if jax.process_index() == 0 else (lambda *a: None)
    for point in chosen:
        point_dir = os.path.join(workdir, point.name)
        if is_finished(point_dir):
            log(f"sweep point {point.index} of 0..{len(points) - 1}: {point.name} is finished; "
                "skipping")
            continue
        log(f"sweep point {point.index} of 0..{len(points) - 1}: {point.name}")
        try:
            train_fn(point.config, point_dir, **train_kwargs)
        except WorkdirLocked as e:  # another launch over the same grid trains it
            log(f"skipping it: {e}")
            continue
        if jax.process_index() == 0:
            write_results(workdir, points)
    if jax.process_index() == 0:
        paths = write_results(workdir, points)
        log(f"sweep results: {', '.join(paths)}")


# ------------------------------------------------------------------------------ results


def _rows(workdir: str, points: list[Point]) -> list[dict[str, Any]]:
    rows = []
    for p in points:
        summary = read_summary(os.path.join(workdir, p.name)) or {}
        finished = is_finished(os.path.join(workdir, p.name))
        row = {"point": p.name, **{k: _format(v) for k, v in p.overrides.items()},
               "status": "finished" if finished else "unfinished"}
        for key in ("step", *METRICS, "best_metric", "best_step", "wall_time_s"):
            row[key] = summary.get(key, "")
        rows.append(row)
    return rows


def _groups(points: list[Point], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict]] = {}
    for p, row in zip(points, rows, strict=True):
        if row["status"] == "finished":
            key = tuple((k, _format(v)) for k, v in p.overrides.items() if k != "seed")
            groups.setdefault(key, []).append(row)
    result = []
    for key, members in groups.items():
        out: dict[str, Any] = {**dict(key), "n": len(members)}
        for m in METRICS:
            values = np.asarray([r[m] for r in members if r[m] != ""], np.float64)
            out[f"{m}_mean"] = float(values.mean()) if len(values) else ""
            out[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else ""
        result.append(out)
    return result


def _cell(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return lines


def write_results(workdir: str, points: list[Point]) -> list[str]:
    """Rewrites results.csv, results.md (and results_mean.csv with a seed axis)."""
    rows = _rows(workdir, points)
    keys = list(dict.fromkeys(k for p in points for k in p.overrides))
    written = [os.path.join(workdir, "results.csv"), os.path.join(workdir, "results.md")]
    files.write_csv(written[0], rows, "point")
    done = sum(r["status"] == "finished" for r in rows)
    md = [f"# Sweep results: {workdir}", "", f"{done} of {len(rows)} points finished.", ""]
    md += _table(rows, [*keys, "status", "step", *METRICS, "best_step", "wall_time_s"])
    if "seed" in keys:
        groups = _groups(points, rows)
        written.append(os.path.join(workdir, "results_mean.csv"))
        files.write_csv(written[-1], groups, "point")
        for g in groups:
            for m in METRICS:
                mean, std = g.pop(f"{m}_mean"), g.pop(f"{m}_std")
                g[m] = "" if mean == "" else f"{mean:.4f}" + (f" ± {std:.4f}" if std != "" else "")
        md += ["", "## Mean ± standard deviation over seeds (finished points)", ""]
        md += _table(groups, [*(k for k in keys if k != "seed"), "n", *METRICS])
    files.write_atomic(written[1], "\n".join(md) + "\n")
    return written
