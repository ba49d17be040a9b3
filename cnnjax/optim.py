"""Config -> Optax: the learning-rate schedule and the optimizer chain.

Everything is composed from Optax's own pieces: ``warmup_cosine_decay_schedule``,
``piecewise_constant_schedule``, ``join_schedules``, ``add_decayed_weights`` with a mask,
``clip_by_global_norm``, ``sgd``/``adam``/``adamw``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax
from flax import traverse_util


def decay_mask(params: Any) -> Any:
    """True for kernels (ndim > 1); biases and norm scales/offsets are not decayed."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _constant(cfg, lr: float, steps_per_epoch: int, steps: int) -> optax.Schedule:
    return optax.constant_schedule(lr)


def _cosine(cfg, lr: float, steps_per_epoch: int, steps: int) -> optax.Schedule:
    return optax.cosine_decay_schedule(lr, max(steps, 1))


def _piecewise(cfg, lr: float, steps_per_epoch: int, steps: int) -> optax.Schedule:
    # Boundaries are epochs of the whole run; ``steps`` starts after the warm-up.
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    return optax.piecewise_constant_schedule(
        lr, {int(round(b * steps_per_epoch)) - warmup: cfg.decay_factor
             for b in cfg.boundaries_epochs})


# Learning-rate schedules by name: (optimizer section, peak rate, steps per epoch, steps after
# the warm-up) -> schedule. A new schedule is one entry here (and its fields, if it has new
# ones, in ``config.defaults``).
SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {
    "constant": _constant, "cosine": _cosine, "piecewise": _piecewise,
}


def _sgd(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov)


def _adam(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)


def _adamw(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay, mask=decay_mask)


# Optimizers by name: (optimizer section, schedule) -> transformation, and whether it applies
# ``weight_decay`` itself (decoupled, as AdamW does); for the others it is added to the
# gradient (L2). A new optimizer is one entry here (and its fields, if new, in config.defaults).
OPTIMIZERS: dict[str, tuple[Callable[..., optax.GradientTransformation], bool]] = {
    "sgd": (_sgd, False), "adam": (_adam, False), "adamw": (_adamw, True),
}


def make_schedule(
    cfg: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """The learning rate at each step, from the ``optimizer`` section of a config."""
    lr = cfg.learning_rate
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    main = SCHEDULES[cfg.schedule](cfg, lr, steps_per_epoch, total_steps - warmup)
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def is_head(head: str):
    """``params -> pytree of bool``: True for the parameters whose path matches ``head``."""

    def labels(params):
        flat = traverse_util.flatten_dict(params, sep="/")
        return traverse_util.unflatten_dict(
            {p: bool(re.search(head, p)) for p in flat}, sep="/"
        )

    return labels


def make_optimizer(
    cfg: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """The Optax chain for the ``optimizer`` section of a config.

    With ``freeze_backbone`` every parameter outside the head (``head`` regex) gets a zero
    update; with ``backbone_lr_scale`` != 1 its updates are scaled (a smaller learning rate
    for fine-tuning). Both use ``optax.multi_transform``.
    """
    tx = _base_optimizer(cfg, schedule)
    if not cfg.freeze_backbone and cfg.backbone_lr_scale == 1.0:
        return tx
    backbone = (
        optax.set_to_zero()
        if cfg.freeze_backbone
        else optax.chain(tx, optax.scale(cfg.backbone_lr_scale))
    )
    head_labels = is_head(cfg.head)
    return optax.multi_transform(
        {"head": tx, "backbone": backbone},
        lambda params: jax.tree.map(lambda h: "head" if h else "backbone", head_labels(params)),
    )


def _base_optimizer(
    cfg: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    factory, decoupled_decay = OPTIMIZERS[cfg.name]
    parts = []
    if cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    if cfg.weight_decay > 0 and not decoupled_decay:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    parts.append(factory(cfg, schedule))
    return optax.chain(*parts)
