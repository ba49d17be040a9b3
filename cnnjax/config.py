"""The configuration schema: defaults, validation, and the resolved config a run records.

An experiment file (``experiments/*.py``) defines ``get_config()`` returning
``defaults()`` with some fields changed. Every field can then be overridden from the command
line (``--config.optimizer.learning_rate=0.05``). ``validate`` rejects, with a one-line
``ConfigError``, anything that would only fail later: unknown keys, wrong types, values out of
range, unknown names, and a batch that the devices cannot share evenly.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from typing import Any

import ml_collections
import numpy as np

from cnnjax import data as data_lib
from cnnjax import losses, metrics, models, optim, trackers, weights
from cnnjax.errors import ConfigError
from cnnjax.models import layers

__all__ = ["ConfigError", "complete", "defaults", "diff", "model_config", "to_dict", "validate"]

OPTIMIZERS = tuple(optim.OPTIMIZERS)  # the tables in optim.py are the one place to add one
LOADERS = data_lib.LOADERS  # the table is the data package's
CONV_IMPLS = layers.CONV_IMPLS
SCHEDULES = tuple(optim.SCHEDULES)
BEST_METRICS = ("eval_accuracy", "eval_top5_accuracy", "eval_loss", "eval_ema_accuracy",
                "eval_ema_top5_accuracy", "eval_ema_loss", "")
NAN_POLICIES = ("stop", "skip")


# Every field a run reads outside the model section: (default, what it means, in one line).
# The model section is the chosen model's own fields (`model_config`), whose meanings are
# the model's docstring (`models.field_help`). `--print_config --config.<section>` shows them.
FIELDS: dict[str, tuple[Any, str]] = {
    "seed": (0, "fixes init, data order and per-step randomness: same seed, same run"),
    "data.name": ("digits", "the dataset: digits (built in, offline), a prepared TFDS name, "
                  "npz:FILE or folder:DIR"),
    "data.data_dir": ("", "TFDS's data directory; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets"),
    "data.batch_size": (64, "global batch size, split evenly over all devices of all processes"),
    "data.eval_batch_size": (256, "global; the last eval batch is padded and masked"),
    "data.crop_padding": (0, "random crops after this much zero padding (train only; 0 = none)"),
    "data.flip": (False, "random left-right flips (train only; wrong for digits and text)"),
    "data.mixup_alpha": (0.0, "mixup's Beta(alpha, alpha) blend weights (0 = off; with cutmix "
                         "each example takes one, half the time)"),
    "data.cutmix_alpha": (0.0, "cutmix's Beta(alpha, alpha) kept-area share (0 = off)"),
    "data.augment": ("", "device augmentation ops applied in order, e.g. 'crop(padding=4) flip "
                     "randaugment(num_ops=2,magnitude=9) erasing(p=0.25)' (cnnjax.data.augment."
                     "OPS; preferred to its shorthands crop_padding, flip, mixup_alpha, "
                     "cutmix_alpha)"),
    "data.image_size": (0, "training/eval height = width; 0 = the dataset's "
                        "(cnnjax/data/catalog.py)"),
    "data.loader": ("auto", "memory (decoded into host memory once), streaming (Grain worker "
                    "processes), dali (NVIDIA DALI; pip install cnnjax[dali]) or auto "
                    "(memory when it fits under max_memory_mb)"),
    "data.max_memory_mb": (4096, "the most host memory the in-memory loader may take"),
    "data.workers": (4, "streaming: Grain worker processes (0 = in this process); dali: "
                     "its CPU threads"),
    "data.skip_corrupt": (False, "folder: skip undecodable images with a warning instead of "
                          "stopping"),
    "data.fingerprint": ("manifest", "folder: how a resume checks that the images did not "
                         "change: manifest (paths, sizes, modification times) or content "
                         "(hashes every file)"),
    "optimizer.name": ("sgd", "the optimizer (cnnjax.optim.OPTIMIZERS)"),
    "optimizer.learning_rate": (0.1, "peak learning rate"),
    "optimizer.momentum": (0.9, "sgd/lars/rmsprop momentum (0 = none), muon's beta, "
                           "schedule_free_sgd's b1"),
    "optimizer.nesterov": (False, "sgd/lars/rmsprop/muon: Nesterov momentum"),
    "optimizer.b1": (0.9, "adam/adamw/lamb/lion/schedule_free_adamw (and muon's Adam "
                     "fallback): first-moment decay"),
    "optimizer.b2": (0.999, "the same: second-moment decay (Lion's paper uses 0.99)"),
    "optimizer.eps": (1e-8, "adam/adamw/lamb/rmsprop/muon/schedule_free_adamw: denominator "
                      "epsilon"),
    "optimizer.weight_decay": (0.0, "on kernels only; sgd/adam add it to the gradient (L2), "
                               "adamw decouples it"),
    "optimizer.schedule": ("cosine", "the learning-rate schedule (cnnjax.optim.SCHEDULES)"),
    "optimizer.warmup_epochs": (0.0, "linear warm-up from 0, before the schedule"),
    "optimizer.boundaries_epochs": ((30.0, 60.0, 80.0), "piecewise: the epochs where the rate "
                                    "drops"),
    "optimizer.decay_factor": (0.1, "piecewise: the multiplier at each boundary"),
    "optimizer.grad_clip_norm": (0.0, "clip the global gradient norm to this (0 = off)"),
    "optimizer.head": ("^head/", "regex of the classifier's parameter paths (transfer learning)"),
    "optimizer.freeze_backbone": (False, "train the head alone: a linear probe (the backbone's "
                                  "BatchNorm statistics are frozen too)"),
    "optimizer.backbone_lr_scale": (1.0, "the backbone's learning rate relative to the head's"),
    "optimizer.layer_decay": (1.0, "layer-wise rate decay for fine-tuning: a backbone block d "
                              "blocks below the head learns at layer_decay**d of its rate "
                              "(cnnjax.optim.layer_depths; 1 = off)"),
    "optimizer.warmup_steps": (0, "linear warm-up from 0 over this many training steps (instead "
                               "of warmup_epochs; 0 = use warmup_epochs)"),
    "optimizer.final_lr_fraction": (0.0, "linear/polynomial/cosine_restarts: the rate at the "
                                    "end of the decay, as a fraction of the peak"),
    "optimizer.power": (2.0, "polynomial: the exponent of the decay (1 = linear)"),
    "optimizer.decay_epochs": (1.0, "exponential: the rate is multiplied by decay_factor every "
                               "this many epochs"),
    "optimizer.staircase": (False, "exponential: drop in steps at each decay_epochs instead of "
                            "continuously"),
    "optimizer.pct_start": (0.3, "onecycle: the share of the run spent rising to the peak"),
    "optimizer.div_factor": (25.0, "onecycle: the start rate is the peak / div_factor"),
    "optimizer.final_div_factor": (1e4, "onecycle: the end rate is the start rate / this"),
    "optimizer.restart_epochs": (10.0, "cosine_restarts: the first cosine period, in epochs"),
    "optimizer.restart_mult": (1.0, "cosine_restarts: each period is this times the one "
                               "before"),
    "optimizer.trust_coefficient": (0.001, "lars: the trust-ratio coefficient"),
    "optimizer.rms_decay": (0.9, "rmsprop: decay of the mean square"),
    "optimizer.rms_initial_scale": (0.0, "rmsprop: the mean square's start value (1.0 as "
                                    "TensorFlow's, for EfficientNet's recipe)"),
    "optimizer.eps_in_sqrt": (True, "rmsprop: eps inside the square root (TensorFlow's; "
                              "False = added after it)"),
    "optimizer.centered": (False, "rmsprop: divide by the centred (variance) estimate"),
    "optimizer.sam_rho": (0.0, "SAM around the optimizer: the gradient is taken at "
                          "params + sam_rho * g/||g|| (0 = off; costs a second pass)"),
    "optimizer.accumulate_steps": (1, "average the gradients of this many steps into one "
                                   "update (optax.MultiSteps): batch_size * k per update"),
    "init.checkpoint": ("", "start from these weights: a directory of python -m "
                        "cnnjax.models.pretrained, or an earlier run's workdir; '' = scratch"),
    "init.exclude": ("", "regex of parameter paths never copied from init.checkpoint"),
    "init.pretrained": ("", "start from a model's ImageNet weights by name (cnnjax weights list): "
                        "downloaded, verified, converted and cached once; '' = none"),
    "train.num_epochs": (10.0, "training length in epochs (fractions allowed)"),
    "train.num_steps": (-1, "training length in steps when >= 0 (takes precedence)"),
    "train.label_smoothing": (0.0, "label smoothing of the loss's targets"),
    "train.loss": ("cross_entropy", "the training loss (cnnjax.losses.LOSSES): cross_entropy, "
                   "or bce (per-class sigmoid, 'ResNet strikes back'); eval_loss is always "
                   "the cross-entropy"),
    "train.bce_target_thresh": (0.0, "bce only: targets above this become 1, the rest 0 "
                                "(0 = off; 'ResNet strikes back': 0.2)"),
    "train.ema_decay": (0.0, "decay of a moving average of the weights, evaluated beside them "
                        "(eval_ema_*; 0 = none)"),
    "train.nan_policy": ("stop", "a non-finite loss or gradient: stop (naming the step, the state "
                         "never saved) or skip (drop the update, count it)"),
    "train.log_every_steps": (50, "a train-metrics record every this many steps"),
    "train.eval_every_steps": (-1, "evaluate every this many steps; -1 = every epoch, 0 = only "
                               "at the end"),
    "train.checkpoint_every_steps": (500, "checkpoint every this many steps, and at the end"),
    "train.keep_checkpoints": (3, "the newest this many checkpoints are kept"),
    "train.best_metric": ("eval_accuracy", "the eval metric whose best state is kept in "
                          "W/best_checkpoint ('' = none)"),
    "train.best_mode": ("max", "max or min: which way best_metric improves"),
    "train.plots": (True, "PNGs in W/plots at the end of training (about a second)"),
    "train.writers": ("jsonl,tensorboard,progress", "where the metrics go "
                      "(cnnjax.metrics.WRITERS, comma-separated; jsonl is always kept)"),
    "logging.wandb.project": ("", "a Weights & Biases project to log to ('' = off; pip install "
                              "cnnjax[wandb])"),
    "logging.wandb.entity": ("", "the W&B entity (team or user); '' = your default"),
    "logging.wandb.mode": ("", "online, offline or disabled; '' = wandb's own ($WANDB_MODE)"),
    "logging.mlflow.experiment": ("", "an MLflow experiment to log to ('' = off; pip install "
                                  "cnnjax[mlflow])"),
    "logging.mlflow.tracking_uri": ("", "the MLflow tracking URI; '' = MLflow's own "
                                    "($MLFLOW_TRACKING_URI, else ./mlruns)"),
    "performance.conv_impl": (layers.Performance.conv_impl, "auto: depthwise, grouped and "
                              "tiny-output convolutions computed faster on CPU; xla: lax's"),
    "performance.materialize_on_cpu": (layers.Performance.materialize_on_cpu, "ResNets: each "
                                       "block convolution's input into memory first on CPU"),
    "performance.space_to_depth_stem": (layers.Performance.space_to_depth_stem,
                                        "ResNet: the 7x7/2 stem on 2x2 pixel blocks"),
    "performance.fused_max_pool": (layers.Performance.fused_max_pool,
                                   "ResNet's and the CNN's max-pools as fused strided "
                                   "slices"),
}
SECTIONS = ("seed", "model", "data", "optimizer", "init", "train", "logging", "performance")
# How a run computes, not what: a change of these is no change of the run, so a resume with
# another value goes ahead (cnnjax.models.layers.Performance; the same parameters and function).
RUN_LEVEL = ("performance",)
PERFORMANCE_FIELDS = tuple(f.name for f in dataclasses.fields(layers.Performance))


def defaults() -> ml_collections.ConfigDict:
    """Every field a run reads, with its default (``FIELDS``; the model section is the
    default model's)."""
    c = ml_collections.ConfigDict()
    c.model = model_config("cnn")
    for key, (value, _) in FIELDS.items():
        node = c
        *parents, leaf = key.split(".")
        for part in parents:
            if part not in node:
                node[part] = ml_collections.ConfigDict()
            node = node[part]
        node[leaf] = value
    return c


def describe(config: ml_collections.ConfigDict, section: str) -> list[str]:
    """Lines ``key = value  # meaning`` for the fields of ``section`` (``"optimizer"``,
    ``"logging.wandb"``, ``"model"``) with their values in ``config``."""
    flat = _flat(to_dict(config))
    keys = [k for k in flat if k.startswith(section + ".")]
    meaning = {k: h for k, (_, h) in FIELDS.items()}
    if section.split(".")[0] == "model":
        fields = models.field_help(config.model.name)
        meaning.update({f"model.{k}": v for k, v in fields.items()})
        meaning["model.name"] = ("the registered model (cnnjax.models.names()); naming another "
                                 "brings its own fields")
    rows = [(f"{k} = {flat[k]!r}", meaning.get(k, "")) for k in sorted(keys)]
    width = max((len(a) for a, _ in rows), default=0)
    return [f"{a:<{width}}  # {b}" if b else a for a, b in rows]


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


def to_json(config: ml_collections.ConfigDict) -> str:
    """The config as a run records it in ``config.json`` (and ``--print_config`` shows it)."""
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


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

    return merge(base, _moved_to_performance(stored))


def _moved_to_performance(stored: dict[str, Any]) -> dict[str, Any]:
    # Runs recorded before the speed switches left the model fields have them in the model
    # section; they ran as those values, so they become the performance section's.
    model = dict(stored.get("model") or {})
    moved = {k: model.pop(k) for k in list(model) if k in PERFORMANCE_FIELDS}
    if not moved:
        return stored
    return {**stored, "model": model, "performance": {**moved, **stored.get("performance", {})}}


def diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The fields that differ between two config dicts, as ``key: old -> new`` text; the
    ``RUN_LEVEL`` sections (how a run computes) are no difference."""
    a, b = _flat(_identity(old)), _flat(_identity(new))
    changed = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
               if a.get(k) != b.get(k)]
    return ", ".join(changed)


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RUN_LEVEL}


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
    "optimizer.layer_decay": (lambda v: 0 < v <= 1, "in (0, 1] (1 = off)"),
    "optimizer.warmup_steps": (lambda v: v >= 0, ">= 0"),
    "optimizer.final_lr_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "optimizer.power": (lambda v: v > 0, "> 0"),
    "optimizer.decay_epochs": (lambda v: v > 0, "> 0"),
    "optimizer.pct_start": (lambda v: 0 < v < 1, "in (0, 1)"),
    "optimizer.div_factor": (lambda v: v >= 1, ">= 1"),
    "optimizer.final_div_factor": (lambda v: v >= 1, ">= 1"),
    "optimizer.restart_epochs": (lambda v: v > 0, "> 0"),
    "optimizer.restart_mult": (lambda v: v >= 1, ">= 1"),
    "optimizer.trust_coefficient": (lambda v: v > 0, "> 0"),
    "optimizer.rms_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optimizer.rms_initial_scale": (lambda v: v >= 0, ">= 0"),
    "optimizer.sam_rho": (lambda v: v >= 0, ">= 0 (0 disables it)"),
    "optimizer.accumulate_steps": (lambda v: 1 <= v <= 2**20, "in [1, 2**20] (1 = none)"),
    "train.num_epochs": (lambda v: v >= 0, ">= 0"),
    "train.num_steps": (lambda v: v == -1 or v > 0, "> 0, or -1 to count in num_epochs"),
    "train.label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.bce_target_thresh": (lambda v: 0 <= v < 1, "in [0, 1) (0 = no threshold)"),
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
    "train.loss": losses.LOSSES,
    "train.best_metric": BEST_METRICS,
    "train.best_mode": ("max", "min"),
    "data.loader": LOADERS,
    "data.fingerprint": ("manifest", "content"),
    "performance.conv_impl": CONV_IMPLS,
}
_CHOICE_WORDS = {"optimizer.name": "optimizer", "optimizer.schedule": "schedule",
                 "train.loss": "loss"}


def _check_values(flat: dict[str, Any], config: dict[str, Any]) -> None:
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
    _check_optimizer(flat)
    if flat["init.pretrained"]:
        weights.source_of(flat["init.pretrained"])
    _check_writers(flat["train.writers"], config)
    trackers.check_installed(trackers.configured(config))
    if flat["train.num_steps"] == -1 and flat["train.num_epochs"] == 0:
        raise ConfigError("train.num_epochs=0 trains for no step; pass "
                          "--config.train.num_epochs > 0 (or --config.train.num_steps > 0)")


def _check_optimizer(flat: dict[str, Any]) -> None:
    """The optimizer fields that contradict each other (cnnjax.optim)."""
    name = flat["optimizer.name"]
    if flat["optimizer.warmup_steps"] and flat["optimizer.warmup_epochs"]:
        raise ConfigError(
            f"optimizer.warmup_steps={flat['optimizer.warmup_steps']} and "
            f"optimizer.warmup_epochs={flat['optimizer.warmup_epochs']} both set the warm-up; "
            "pass one of them (the other 0)")
    if flat["optimizer.sam_rho"] and name in optim.SCHEDULE_FREE:
        raise ConfigError(
            f"optimizer.sam_rho={flat['optimizer.sam_rho']} cannot wrap {name}: its gradient "
            "point is an interpolation its averaged weights rely on; use another optimizer "
            "or --config.optimizer.sam_rho=0")
    if name == "lars" and not flat["optimizer.momentum"]:
        raise ConfigError("optimizer.name=lars needs momentum (its trust-ratio step is "
                          "momentum SGD); pass --config.optimizer.momentum=0.9")
    if name == "schedule_free_sgd" and not flat["optimizer.momentum"]:
        raise ConfigError("optimizer.name=schedule_free_sgd needs its interpolation "
                          "optimizer.momentum > 0 (b1; 0.9 in the paper); pass "
                          "--config.optimizer.momentum=0.9")
    if name == "schedule_free_adamw" and not flat["optimizer.b1"]:
        raise ConfigError("optimizer.name=schedule_free_adamw needs optimizer.b1 > 0 (its "
                          "interpolation; 0.9 in the paper)")
    if name in optim.SCHEDULE_FREE and (flat["optimizer.layer_decay"] != 1
                                        or flat["optimizer.backbone_lr_scale"] != 1):
        raise ConfigError(
            f"optimizer.name={name} averages its own iterates, which a rate scaled per layer "
            "after it would break; leave optimizer.layer_decay and "
            "optimizer.backbone_lr_scale at 1 (or freeze the backbone)")
    if flat["optimizer.layer_decay"] != 1 and flat["optimizer.freeze_backbone"]:
        raise ConfigError("optimizer.layer_decay scales the rates of a backbone that "
                          "optimizer.freeze_backbone freezes; pass one of them")


def _check_writers(spec: str, config: dict[str, Any]) -> None:
    names = metrics.writer_names(spec)
    on = trackers.configured(config)
    for name in names:
        if name in trackers.EXTRAS and name not in on:
            key = trackers.EXTRAS[name][1]
            raise ConfigError(f"train.writers names {name!r}, which needs --config.{key}=NAME "
                              "(which alone turns it on)")
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
    data_lib.augment.chain(data)  # the ops of data.augment and the shorthand fields, checked
    if data["loader"] == "dali":
        from cnnjax.data import dali

        if not dali.available():
            raise ConfigError(f"data.loader=dali needs NVIDIA DALI, which is not installed; "
                              f"{dali.EXTRA}, or use --config.data.loader=streaming")


def validate(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    """Raises ``ConfigError`` (one line: the value and the fix) for a config that cannot run."""
    d = to_dict(config)
    _check_keys(d)
    model = dict(d["model"])
    name = model.pop("name", None)
    if moved := [k for k in model if k in PERFORMANCE_FIELDS]:
        raise ConfigError(f"model.{moved[0]} is now performance.{moved[0]} (how a run computes, "
                          f"not the model); pass --config.performance.{moved[0]}=...")
    try:
        models.check_kwargs(name, model)
        models.check_fields(name, model)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check_values({k: v for k, v in _flat(d).items() if not k.startswith("model.")}, d)
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
