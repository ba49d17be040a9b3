"""Config -> Optax: the learning-rate schedule and the optimizer chain.

Everything is composed from Optax's own pieces: ``warmup_cosine_decay_schedule``,
``piecewise_constant_schedule``, ``join_schedules``, ``add_decayed_weights`` with a mask,
``clip_by_global_norm``, ``sgd``/``adam``/``adamw``.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax


def decay_mask(params: Any) -> Any:
    """True for kernels (ndim > 1); biases and norm scales/offsets are not decayed."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_schedule(
    cfg: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """The learning rate at each step, from the ``optimizer`` section of a config."""
    lr = cfg.learning_rate
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
    elif cfg.schedule == "piecewise":
        main = optax.piecewise_constant_schedule(
            lr,
            {int(round(b * steps_per_epoch)) - warmup: cfg.decay_factor
             for b in cfg.boundaries_epochs},
        )
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


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
    from cnnjax.transfer import is_head

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
    parts = []
    if cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    if cfg.name == "adamw":
        parts.append(
            optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay, mask=decay_mask)
        )
        return optax.chain(*parts)
    if cfg.weight_decay > 0:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    if cfg.name == "sgd":
        parts.append(optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    elif cfg.name == "adam":
        parts.append(optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    else:
        raise ValueError(f"unknown optimizer {cfg.name!r}")
    return optax.chain(*parts)
