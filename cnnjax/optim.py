"""Config -> Optax: the learning-rate schedule and the optimizer chain.

Everything is composed from Optax's own pieces: its schedules (``cosine_decay_schedule``,
``polynomial_schedule``, ``exponential_decay``, ``cosine_onecycle_schedule``,
``sgdr_schedule``, ...) joined to a linear warm-up with ``join_schedules``; its optimizers
(``sgd``, ``adamw``, ``lamb``, ``lars``, ``lion``, ``rmsprop``, ``adafactor``,
``contrib.muon``, ``contrib.schedule_free_*``); ``add_decayed_weights`` with a mask,
``clip_by_global_norm``, ``multi_transform`` for per-group rates and ``MultiSteps`` for
gradient accumulation. No update rule is written here.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax
from flax import traverse_util
from optax import contrib


def decay_mask(params: Any) -> Any:
    """True for kernels (ndim > 1); biases and norm scales/offsets are not decayed."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _constant(cfg, lr: float, steps_per_epoch: float, steps: int) -> optax.Schedule:
    return optax.constant_schedule(lr)


def _cosine(cfg, lr: float, steps_per_epoch: float, steps: int) -> optax.Schedule:
    return optax.cosine_decay_schedule(lr, max(steps, 1))


def _piecewise(cfg, lr: float, steps_per_epoch: float, steps: int) -> optax.Schedule:
    # Boundaries are epochs of the whole run; ``steps`` starts after the warm-up.
    warmup = warmup_steps(cfg, steps_per_epoch)
    return optax.piecewise_constant_schedule(
        lr, {int(round(b * steps_per_epoch)) - warmup: cfg.decay_factor
             for b in cfg.boundaries_epochs})


def _linear(cfg, lr: float, steps_per_epoch: float, steps: int) -> optax.Schedule:
    return optax.linear_schedule(lr, lr * cfg.final_lr_fraction, max(steps, 1))


def _polynomial(cfg, lr: float, steps_per_epoch: float, steps: int) -> optax.Schedule:
    return optax.polynomial_schedule(lr, lr * cfg.final_lr_fraction, cfg.power, max(steps, 1))


def _exponential(cfg, lr: float, steps_per_epoch: float, steps: int) -> optax.Schedule:
    # ``decay_factor`` per ``decay_epochs`` (EfficientNet: 0.97 every 2.4 epochs, staircase).
    return optax.exponential_decay(lr, max(int(round(cfg.decay_epochs * steps_per_epoch)), 1),
                                   cfg.decay_factor, staircase=cfg.staircase)


def _onecycle(cfg, lr: float, steps_per_epoch: float, steps: int) -> optax.Schedule:
    return optax.cosine_onecycle_schedule(max(steps, 1), lr, cfg.pct_start, cfg.div_factor,
                                          cfg.final_div_factor)


def _cosine_restarts(cfg, lr: float, steps_per_epoch: float, steps: int) -> optax.Schedule:
    # SGDR: cosine periods of restart_epochs, each restart_mult times the one before, until
    # the run's steps are covered.
    period, periods, covered = max(cfg.restart_epochs * steps_per_epoch, 1.0), [], 0
    while covered < max(steps, 1):
        length = max(int(round(period)), 1)
        periods.append(dict(init_value=lr, peak_value=lr, decay_steps=length, warmup_steps=0,
                            end_value=lr * cfg.final_lr_fraction))
        covered, period = covered + length, period * cfg.restart_mult
    return optax.sgdr_schedule(periods)


# Learning-rate schedules by name: (optimizer section, peak rate, optimizer updates per epoch,
# updates after the warm-up) -> schedule. A new schedule is one entry here (and its fields,
# if it has new ones, in ``config.FIELDS``).
SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {
    "constant": _constant, "cosine": _cosine, "piecewise": _piecewise,
    "linear": _linear, "polynomial": _polynomial, "exponential": _exponential,
    "onecycle": _onecycle, "cosine_restarts": _cosine_restarts,
}


def _sgd(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov)


def _adam(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)


def _adamw(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay, mask=decay_mask)


def _lamb(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.lamb(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay, mask=decay_mask)


def _lars(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    # BatchNorm scales/offsets and biases keep plain momentum SGD: neither decayed nor
    # trust-ratio scaled (as in "Large Batch Training of Convolutional Networks" and MLPerf).
    return optax.lars(schedule, weight_decay=cfg.weight_decay, weight_decay_mask=decay_mask,
                      trust_coefficient=cfg.trust_coefficient, eps=0.0,
                      trust_ratio_mask=decay_mask, momentum=cfg.momentum,
                      nesterov=cfg.nesterov)


def _lion(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.lion(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                      mask=decay_mask)


def _rmsprop(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    # EfficientNet's TF recipe: rms_decay=0.9, eps=1e-3 inside the square root, momentum 0.9,
    # the mean square starting at 1 (rms_initial_scale=1.0).
    return optax.rmsprop(schedule, decay=cfg.rms_decay, eps=cfg.eps,
                         initial_scale=cfg.rms_initial_scale, eps_in_sqrt=cfg.eps_in_sqrt,
                         centered=cfg.centered, momentum=cfg.momentum or None,
                         nesterov=cfg.nesterov)


def _adafactor(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.adafactor(schedule, weight_decay_rate=cfg.weight_decay or None,
                           weight_decay_mask=decay_mask)


def muon_dimensions(head: str) -> Callable[[Any], Any]:
    """``params -> pytree`` of ``MuonDimensionNumbers`` (orthogonalised by Muon) or ``None``
    (left to its Adam fallback).

    Optax's default orthogonalises 2-D parameters only, which would leave every convolution to
    Adam. Here a conv kernel ``[h, w, in, out]`` is the ``[h*w*in, out]`` matrix it multiplies
    patches by (reduction axes 0-2, output axis 3), as the Muon authors flatten conv filters;
    dense kernels are ``[in, out]``. Biases, norm scales and the classifier (``head`` regex,
    which the Muon authors leave to Adam) take the fallback.
    """

    def dims(params):
        # A tree map (not a dict flattening): Muon also calls this on its masked trees.
        def one(path, x):
            name = "/".join(str(getattr(k, "key", k)) for k in path)
            if x.ndim >= 2 and not re.search(head, name):
                return contrib.MuonDimensionNumbers(tuple(range(x.ndim - 1)), x.ndim - 1)
            return None

        return jax.tree_util.tree_map_with_path(one, params)

    return dims


def _muon(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    return contrib.muon(schedule, beta=cfg.momentum, nesterov=cfg.nesterov,
                        weight_decay=cfg.weight_decay, weight_decay_mask=decay_mask,
                        adam_b1=cfg.b1, adam_b2=cfg.b2, eps=cfg.eps,
                        muon_weight_dimension_numbers=muon_dimensions(cfg.head))


def _schedule_free_adamw(cfg, schedule: optax.Schedule
                         ) -> optax.GradientTransformation:
    # Optax's recipe decays every parameter (it takes no mask).
    return contrib.schedule_free_adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                       weight_decay=cfg.weight_decay)


def _schedule_free_sgd(cfg, schedule: optax.Schedule
                       ) -> optax.GradientTransformation:
    # ``momentum`` is its interpolation b1 (0.9 in the paper); it must be > 0.
    return contrib.schedule_free_sgd(schedule, b1=cfg.momentum,
                                     weight_decay=cfg.weight_decay or None)


# Optimizers by name: (optimizer section, schedule) -> transformation, and whether it
# applies ``weight_decay`` itself (decoupled, as AdamW does); for the others it is added to
# the gradient (L2). A new optimizer is one entry here (and its fields, if new, in
# ``config.FIELDS``).
OPTIMIZERS: dict[str, tuple[Callable[..., optax.GradientTransformation], bool]] = {
    "sgd": (_sgd, False), "adam": (_adam, False), "adamw": (_adamw, True),
    "lamb": (_lamb, True), "lars": (_lars, True), "lion": (_lion, True),
    "rmsprop": (_rmsprop, False), "adafactor": (_adafactor, True), "muon": (_muon, True),
    "schedule_free_adamw": (_schedule_free_adamw, True),
    "schedule_free_sgd": (_schedule_free_sgd, True),
}
# The optimizers whose evaluated weights are not the trained ones (``eval_params``).
SCHEDULE_FREE = ("schedule_free_adamw", "schedule_free_sgd")


def warmup_steps(cfg: ml_collections.ConfigDict, steps_per_epoch: float) -> int:
    """The warm-up's length in optimizer updates: ``warmup_steps`` (training steps, divided by
    ``accumulate_steps``) or ``warmup_epochs`` of ``steps_per_epoch`` updates."""
    if cfg.warmup_steps:
        return int(round(cfg.warmup_steps / cfg.accumulate_steps))
    return int(round(cfg.warmup_epochs * steps_per_epoch))


def make_schedule(
    cfg: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """The learning rate at each optimizer update, from the ``optimizer`` section of a config.

    ``steps_per_epoch`` and ``total_steps`` count training steps (batches); with
    ``accumulate_steps`` = k the optimizer updates once every k of them, and the schedule
    counts those updates (``step_schedule`` reads it at a training step).
    """
    k = cfg.accumulate_steps
    per_epoch, total = steps_per_epoch / k, total_steps // k
    lr = cfg.learning_rate
    warmup = warmup_steps(cfg, per_epoch)
    main = SCHEDULES[cfg.schedule](cfg, lr, per_epoch, total - warmup)
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def step_schedule(cfg: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.Schedule:
    """``schedule`` read at a training step: the rate the update that step feeds uses."""
    k = cfg.accumulate_steps
    return schedule if k == 1 else (lambda step: schedule(step // k))


def is_head(head: str):
    """``params -> pytree of bool``: True for the parameters whose path matches ``head``."""

    def labels(params):
        flat = traverse_util.flatten_dict(params, sep="/")
        return traverse_util.unflatten_dict(
            {p: bool(re.search(head, p)) for p in flat}, sep="/"
        )

    return labels


def make_optimizer(
    cfg: ml_collections.ConfigDict, schedule: optax.Schedule,
    depths: Callable[[Any], Any] | None = None,
) -> optax.GradientTransformation:
    """The Optax chain for the ``optimizer`` section of a config.

    With ``freeze_backbone`` every parameter outside the head (``head`` regex) gets a zero
    update; with ``backbone_lr_scale`` != 1 its updates are scaled (a smaller learning rate
    for fine-tuning); with ``layer_decay`` < 1 a backbone parameter at depth d (``depths``:
    ``params -> pytree of int``, ``layer_depths``) is scaled by ``layer_decay**d`` too. All
    use ``optax.multi_transform``. ``accumulate_steps`` > 1 wraps the result in
    ``optax.MultiSteps``: the mean gradient of k steps makes one update.
    """
    tx = _grouped(cfg, _base_optimizer(cfg, schedule), depths)
    if cfg.accumulate_steps > 1:
        tx = optax.MultiSteps(tx, cfg.accumulate_steps)
    return tx


def _grouped(cfg, tx, depths):
    decay = cfg.layer_decay if depths is not None else 1.0
    if not cfg.freeze_backbone and cfg.backbone_lr_scale == 1.0 and decay == 1.0:
        return tx
    head_labels = is_head(cfg.head)
    if decay == 1.0:
        backbone = (
            optax.set_to_zero()
            if cfg.freeze_backbone
            else optax.chain(tx, optax.scale(cfg.backbone_lr_scale))
        )
        return optax.multi_transform(
            {"head": tx, "backbone": backbone},
            lambda params: jax.tree.map(lambda h: "head" if h else "backbone",
                                        head_labels(params)))

    def labels(params):
        return jax.tree.map(lambda h, n: "head" if h else f"depth{n}", head_labels(params),
                            depths(params))

    def transforms(params):
        names = sorted(set(jax.tree.leaves(labels(params))) - {"head"})
        return {"head": tx, **{n: optax.chain(tx, optax.scale(
            cfg.backbone_lr_scale * decay ** int(n[len("depth"):]))) for n in names}}

    # multi_transform needs its groups up front; they come from the parameter tree's paths.
    return _lazy_groups(transforms, labels)


def _lazy_groups(transforms, labels) -> optax.GradientTransformation:
    """``optax.multi_transform`` whose groups are read from the params at ``init``."""

    def build(params):
        return optax.multi_transform(transforms(params), labels)

    def init(params):
        return build(params).init(params)

    def update(updates, state, params=None):
        return build(updates).update(updates, state, params)

    return optax.GradientTransformation(init, update)


def layer_depths(model, image_shape, head: str) -> Callable[[Any], Any]:
    """``params -> pytree of int``: each backbone parameter's depth below the head.

    A parameter's block is its path up to the first component that holds a number
    (``layer3_10``, ``features_5``, ``conv1``, ``trunk_output/block2``, ``Conv_0``); a path
    with no number is its own block (``bn_final``). Blocks are ordered by the forward pass (the
    order their modules are first called, traced abstractly); the last block before the head
    has depth 1, the one before it 2, and so on down to the stem. ConvNeXt's and BEiT's layer
    decay: the learning rate of depth d is ``layer_decay**d`` times the head's.
    """
    import flax.linen as nn
    import jax.numpy as jnp

    calls: list[tuple[str, ...]] = []

    def record(next_fun, args, kwargs, context):
        path = tuple(context.module.path)
        if path not in calls:
            calls.append(path)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                          jnp.zeros((1, *image_shape)), train=False))

    def block(path: str) -> tuple[str, ...]:
        parts = path.split("/")[:-1] or path.split("/")
        for i, part in enumerate(parts):
            if re.search(r"\d", part):
                return tuple(parts[:i + 1])
        return tuple(parts)

    def first_call(b: tuple[str, ...]) -> int:
        return next((i for i, c in enumerate(calls) if c[:len(b)] == b), len(calls))

    def depths(params):
        flat = traverse_util.flatten_dict(params, sep="/")
        blocks = {block(p) for p in flat if not re.search(head, p)}
        order = sorted(blocks, key=lambda b: (first_call(b), b))
        depth = {b: len(order) - i for i, b in enumerate(order)}
        return traverse_util.unflatten_dict(
            {p: 0 if re.search(head, p) else depth[block(p)] for p in flat}, sep="/")

    return depths


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


def _schedule_free_states(tree: Any) -> list[Any]:
    """Every schedule-free state in an optimizer state: Optax's ``ScheduleFreeState`` or, in
    a checkpoint read without a template, the dict of its fields."""
    found = []

    def walk(node):
        if isinstance(node, contrib.ScheduleFreeState):
            found.append(node)
        elif isinstance(node, dict) and {"b1", "z", "weight_sum"} <= set(node):
            found.append(types.SimpleNamespace(b1=node["b1"], z=node["z"]))
        elif isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, (tuple, list)):
            for v in node:
                walk(v)

    walk(tree)
    return found


def eval_params(opt_state: Any, params: Any) -> Any:
    """The parameters to evaluate: for the schedule-free optimizers the average x that the
    method defines (``optax.contrib.schedule_free_eval_params``), for the others ``params``.

    ``opt_state`` is the Optax state, or the same read from a checkpoint as plain dicts.
    Parameters a schedule-free state does not hold (a frozen backbone's) are kept as they are.
    """
    for state in _schedule_free_states(opt_state):
        flat_z = traverse_util.flatten_dict(dict(state.z), sep="/") if state.z else {}
        flat_p = traverse_util.flatten_dict(dict(params), sep="/")
        held = {p: hasattr(flat_z.get(p), "shape") for p in flat_p}
        z = traverse_util.unflatten_dict(
            {p: flat_z[p] if held[p] else y for p, y in flat_p.items()}, sep="/")
        average = traverse_util.flatten_dict(dict(contrib.schedule_free_eval_params(
            types.SimpleNamespace(b1=state.b1, z=z), params)), sep="/")
        # Parameters the state does not hold (a frozen backbone's) stay exactly as they are.
        params = traverse_util.unflatten_dict(
            {p: average[p] if held[p] else y for p, y in flat_p.items()}, sep="/")
    return params
