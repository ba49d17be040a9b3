"""The configuration schema: defaults, validation, and the resolved config a run records.

An experiment file (``experiments/*.py``) defines ``get_config()`` returning
``defaults()`` with some fields changed. Every field can then be overridden from the command
line (``--config.optimizer.learning_rate=0.05``). ``validate`` rejects, with a one-line
``ConfigError``, anything that would only fail later: unknown keys, wrong types, values out of
range, unknown names, and a batch that the devices cannot share evenly.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from typing import Any

import ml_collections
import numpy as np

from cnnjax import metrics, models, optim
from cnnjax.errors import ConfigError

__all__ = ["ConfigError", "complete", "defaults", "diff", "model_config", "to_dict", "validate"]

OPTIMIZERS = tuple(optim.OPTIMIZERS)  # the tables in optim.py are the one place to add one
LOADERS = ("auto", "memory", "streaming")
SCHEDULES = tuple(optim.SCHEDULES)
BEST_METRICS = ("eval_accuracy", "eval_top5_accuracy", "eval_loss", "eval_ema_accuracy",
                "eval_ema_top5_accuracy", "eval_ema_loss", "")
NAN_POLICIES = ("stop", "skip")


def defaults() -> ml_collections.ConfigDict:
    """Every field a run reads, with its default and the reason for it."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # fixes init, data order and per-step randomness: same seed, same run

    # Model: `name` picks a registered module; the other fields are that module's own
    # (see `model_config`), so each can be overridden from the command line.
    c.model = model_config("cnn")

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # built in and offline; any prepared TFDS dataset works too
    c.data.data_dir = ""  # "" = TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.data.batch_size = 64  # global: split evenly over all devices of all processes
    c.data.eval_batch_size = 256  # global; the last eval batch is padded and masked
    c.data.crop_padding = 0  # random crop after this much zero padding (train only)
    c.data.flip = False  # random left-right flips (train only; wrong for digits and text)
    # Soft-label mixing on device (0 = off). Both on: each example takes one, half the time.
    c.data.mixup_alpha = 0.0  # mixup (Zhang et al. 2018): Beta(alpha, alpha) blend weights
    c.data.cutmix_alpha = 0.0  # cutmix (Yun et al. 2019): Beta(alpha, alpha) kept-area share
    c.data.image_size = 0  # training/eval height = width; 0 = the dataset's (data/catalog.py)
    # "memory" decodes both splits into host memory once; "streaming" reads with Grain worker
    # processes; "auto" takes memory when the decoded splits fit under max_memory_mb.
    c.data.loader = "auto"
    c.data.max_memory_mb = 4096
    c.data.workers = 4  # streaming: Grain worker processes (0 = in this process)
    c.data.skip_corrupt = False  # folder: skip undecodable images with a warning, not stop

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"  # one of OPTIMIZERS
    c.optimizer.learning_rate = 0.1  # peak learning rate
    c.optimizer.momentum = 0.9  # sgd only
    c.optimizer.nesterov = False  # sgd only
    c.optimizer.b1 = 0.9  # adam/adamw
    c.optimizer.b2 = 0.999  # adam/adamw
    c.optimizer.eps = 1e-8  # adam/adamw
    # Decays kernels only: biases and norm scales/offsets are left alone, as is standard.
    # sgd/adam add it to the gradient (L2); adamw decouples it (Loshchilov & Hutter).
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "cosine"  # one of SCHEDULES
    c.optimizer.warmup_epochs = 0.0  # linear warm-up from 0, before any schedule
    c.optimizer.boundaries_epochs = (30.0, 60.0, 80.0)  # piecewise: where the rate drops
    c.optimizer.decay_factor = 0.1  # piecewise: multiplier at each boundary
    c.optimizer.grad_clip_norm = 0.0  # clip the global gradient norm; 0 disables it
    # Transfer learning: `head` is a regex of the classifier's parameter paths ("head" in
    # every registered model). freeze_backbone trains the head alone (a linear probe; the
    # backbone's BatchNorm statistics are frozen too); backbone_lr_scale < 1 fine-tunes the
    # backbone with a smaller learning rate.
    c.optimizer.head = "^head/"
    c.optimizer.freeze_backbone = False
    c.optimizer.backbone_lr_scale = 1.0

    # Start from pretrained weights: a directory written by `python -m
    # cnnjax.models.pretrained`, or an earlier run's workdir. "" starts from scratch.
    c.init = ml_collections.ConfigDict()
    c.init.checkpoint = ""
    c.init.exclude = ""  # regex of paths never copied (matching shapes are copied otherwise)

    c.train = ml_collections.ConfigDict()
    c.train.num_epochs = 10.0  # training length in epochs (fractions allowed)...
    c.train.num_steps = -1  # ...or in steps when >= 0 (takes precedence)
    c.train.label_smoothing = 0.0
    # An exponential moving average of the weights (params and BatchNorm statistics), updated
    # after every step with this decay (0 = none; 0.9998 or so for ImageNet recipes). It is
    # checkpointed with the state, evaluated beside the raw weights (eval_ema_* metrics) and
    # chosen for --mode=eval/predict/visualize with --ema.
    c.train.ema_decay = 0.0
    # What a non-finite loss or gradient does: "stop" (error naming the step; the state is
    # never checkpointed) or "skip" (drop that update, count it in metrics.jsonl).
    c.train.nan_policy = "stop"
    c.train.log_every_steps = 50  # a train-metrics line in metrics.jsonl
    c.train.eval_every_steps = -1  # -1 = at the end of every epoch; 0 = only at the end
    c.train.checkpoint_every_steps = 500  # and always at the end of the run
    c.train.keep_checkpoints = 3  # the newest K are kept
    # The state with the best value of this eval metric is kept in W/best_checkpoint
    # (--checkpoint=best); "" keeps no best checkpoint. One of BEST_METRICS.
    c.train.best_metric = "eval_accuracy"
    c.train.best_mode = "max"  # "max" or "min" (use "min" for eval_loss)
    c.train.plots = True  # PNGs in W/plots at the end of training (about a second)
    # Where the metrics go: names from cnnjax.metrics.WRITERS, comma-separated. "jsonl"
    # (metrics.jsonl) is the run's record and always kept; "progress" is the terminal.
    c.train.writers = "jsonl,tensorboard,progress"
    return c


def model_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The model section for registered model ``name``: every field, defaults filled in.

    ``num_classes`` is left out: the run takes it from the dataset.
    """
    fields = models.model_fields(name)
    models.check_kwargs(name, overrides)
    fields.update(overrides)
    section = {"name": name}
    for key, value in fields.items():
        if key == "num_classes":
            continue
        if key == "dtype":
            value = _dtype_name(value)
        elif isinstance(value, list):
            value = tuple(value)
        section[key] = value
    return ml_collections.ConfigDict(section)


def _dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name if not isinstance(dtype, str) else dtype


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as plain JSON-compatible Python (tuples become lists)."""
    return json.loads(config.to_json())


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def complete(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the fields it predates filled in with their defaults.

    A run recorded before cnnjax gained a field ran as that field's default has it (new fields
    keep the old behaviour by default), so resuming it is no change of config.
    """
    base = to_dict(defaults())
    name = stored.get("model", {}).get("name")
    try:
        base["model"] = to_dict(model_config(name)) if name else {}
    except (KeyError, ValueError):  # a model no longer registered: its stored fields only
        base["model"] = {}

    def merge(into: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(into)
        for k, v in over.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    return merge(base, stored)


def diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The fields that differ between two config dicts, as ``key: old -> new`` text."""
    a, b = _flat(old), _flat(new)
    changed = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
               if a.get(k) != b.get(k)]
    return ", ".join(changed)


def did_you_mean(key: str, valid: list[str]) -> str:
    """The hint ``; did you mean 'X'?`` for the closest of ``valid`` to ``key`` ("" if none)."""
    close = difflib.get_close_matches(key, valid, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_keys(config: dict[str, Any]) -> None:
    schema = _flat(to_dict(defaults()))
    schema = {k: v for k, v in schema.items() if not k.startswith("model.")}
    for key, value in _flat(config).items():
        if key.startswith("model."):
            continue
        if key not in schema:
            raise ConfigError(f"unknown config key {key!r}{did_you_mean(key, list(schema))}")
        expected = schema[key]
        if isinstance(expected, bool) != isinstance(value, bool) or (
            isinstance(expected, (int, float)) and not isinstance(value, (int, float))
        ) or (isinstance(expected, str) and not isinstance(value, str)) or (
            isinstance(expected, list) and not isinstance(value, list)
        ):
            raise ConfigError(
                f"config key {key!r} must be a {type(expected).__name__}, got {value!r}"
            )


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# The range of every number a run reads: (test, what the value must be). Checked after types
# (`_check_keys`) and for being finite, so that nothing out of range reaches a compile.
MAX_IMAGE_SIZE = 4096
MAX_WORKERS = 256
RANGES: dict[str, tuple[Any, str]] = {
    "seed": (lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    "optimizer.learning_rate": (lambda v: v > 0, "> 0"),
    "optimizer.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optimizer.b1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optimizer.b2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optimizer.eps": (lambda v: v > 0, "> 0"),
    "optimizer.weight_decay": (lambda v: v >= 0, ">= 0"),
    "optimizer.warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "optimizer.decay_factor": (lambda v: v >= 0, ">= 0"),
    "optimizer.grad_clip_norm": (lambda v: v >= 0, ">= 0 (0 disables it)"),
    "optimizer.backbone_lr_scale": (lambda v: v >= 0, ">= 0"),
    "train.num_epochs": (lambda v: v >= 0, ">= 0"),
    "train.num_steps": (lambda v: v == -1 or v > 0, "> 0, or -1 to count in num_epochs"),
    "train.label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.ema_decay": (lambda v: 0 <= v < 1, "in [0, 1) (0 keeps no average)"),
    "train.log_every_steps": (lambda v: v > 0, "> 0"),
    "train.eval_every_steps": (lambda v: v >= -1,
                               "> 0, or -1 (every epoch), or 0 (only at the end)"),
    "train.checkpoint_every_steps": (lambda v: v > 0, "> 0"),
    "train.keep_checkpoints": (lambda v: v > 0, "> 0"),
    "data.batch_size": (lambda v: v > 0, "> 0"),
    "data.eval_batch_size": (lambda v: v > 0, "> 0"),
    "data.crop_padding": (lambda v: v >= 0, ">= 0"),
    "data.mixup_alpha": (lambda v: v >= 0, ">= 0 (0 disables it)"),
    "data.cutmix_alpha": (lambda v: v >= 0, ">= 0 (0 disables it)"),
    "data.image_size": (lambda v: 0 <= v <= MAX_IMAGE_SIZE,
                        f"in [0, {MAX_IMAGE_SIZE}] (0 = the dataset's)"),
    "data.max_memory_mb": (lambda v: v > 0, "> 0"),
    "data.workers": (lambda v: 0 <= v <= MAX_WORKERS, f"in [0, {MAX_WORKERS}]"),
}
CHOICES: dict[str, Any] = {
    "optimizer.name": optim.OPTIMIZERS,  # the tables themselves: an entry added at run time
    "optimizer.schedule": optim.SCHEDULES,  # (from a config file, say) is a valid choice
    "train.nan_policy": NAN_POLICIES,
    "train.best_metric": BEST_METRICS,
    "train.best_mode": ("max", "min"),
    "data.loader": LOADERS,
}
_CHOICE_WORDS = {"optimizer.name": "optimizer", "optimizer.schedule": "schedule"}


def _check_values(flat: dict[str, Any]) -> None:
    for key, value in flat.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
        if key in RANGES and not RANGES[key][0](value):
            raise ConfigError(f"{key} must be {RANGES[key][1]}, got {value!r}")
        if key in CHOICES and value not in CHOICES[key]:
            name = _CHOICE_WORDS.get(key, key)
            raise ConfigError(f"unknown {name} {value!r}; choose one of: "
                              + ", ".join(map(repr if "" in CHOICES[key] else str, CHOICES[key])))
    boundaries = flat["optimizer.boundaries_epochs"]
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b)
               and b >= 0 for b in boundaries) or list(boundaries) != sorted(boundaries):
        raise ConfigError(
            "optimizer.boundaries_epochs must be epochs >= 0 in increasing order, e.g. "
            f"(30,60,80), got {tuple(boundaries)!r}")
    for key in ("optimizer.head", "init.exclude"):
        try:
            re.compile(flat[key])
        except re.error as e:
            raise ConfigError(f"{key}={flat[key]!r} is not a regular expression ({e})") from None
    metric, mode = flat["train.best_metric"], flat["train.best_mode"]
    if metric.startswith("eval_ema_") and not flat["train.ema_decay"]:
        raise ConfigError(f"train.best_metric={metric!r} needs the average of the weights: "
                          "pass --config.train.ema_decay=0.999 (say), or another best_metric")
    if metric and (mode == "max") != (not metric.endswith("_loss")):
        better = "min" if metric.endswith("_loss") else "max"
        raise ConfigError(f"train.best_metric={metric!r} with train.best_mode={mode!r} keeps "
                          f"the worst checkpoint; pass --config.train.best_mode={better}")
    _check_writers(flat["train.writers"])
    if flat["train.num_steps"] == -1 and flat["train.num_epochs"] == 0:
        raise ConfigError("train.num_epochs=0 trains for no step; pass "
                          "--config.train.num_epochs > 0 (or --config.train.num_steps > 0)")


def _check_writers(spec: str) -> None:
    names = metrics.writer_names(spec)
    for name in names:
        if name not in metrics.WRITERS:
            raise ConfigError(
                f"unknown metric writer {name!r} in train.writers; choose from: "
                f"{', '.join(metrics.WRITERS)} (or add your own to "
                "cnnjax.metrics.WRITERS in the config file)")
    if len(set(names)) != len(names):
        raise ConfigError(f"train.writers={spec!r} names a writer twice; name each once")
    if "jsonl" not in names:
        raise ConfigError(
            f"train.writers={spec!r} leaves out 'jsonl': metrics.jsonl is the run's record "
            "(resumes, plots and sweeps read it); keep it, e.g. "
            "--config.train.writers=jsonl,progress")


def _validate_data(data: dict[str, Any]) -> None:
    # A source's own checks (an npz path, say) come when it is opened: cnnjax.data.SOURCES.
    _require(bool(data["name"].strip()), "data.name must not be empty")


def validate(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    """Raises ``ConfigError`` (one line: the value and the fix) for a config that cannot run."""
    d = to_dict(config)
    _check_keys(d)
    model = dict(d["model"])
    name = model.pop("name", None)
    try:
        models.check_kwargs(name, model)
        models.check_fields(name, model)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check_values({k: v for k, v in _flat(d).items() if not k.startswith("model.")})
    data = d["data"]
    _validate_data(data)
    for key in ("batch_size", "eval_batch_size"):
        _require(data[key] > 0, f"data.{key} must be > 0, got {data[key]}")
        if device_count:
            fit = max(device_count, data[key] // device_count * device_count)
            _require(
                data[key] % device_count == 0,
                f"data.{key}={data[key]} is not divisible by the {device_count} devices; "
                f"use a multiple of {device_count}, e.g. "
                f"--config.data.{key}={fit}",
            )
