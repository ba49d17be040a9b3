"""Pure training and evaluation steps over a ``TrainState``.

The step functions are written per device: each device sees its shard of the global batch,
and gradients, metrics and BatchNorm statistics are averaged over the device axis with
explicit collectives (``lax.pmean``/``lax.psum`` on ``parallel.AXIS``). ``make_train_step``
and ``make_eval_step`` wrap them in ``jax.shard_map`` under ``jax.jit``; the state is donated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from cnnjax import losses, optim, parallel
from cnnjax.data.augment import augment as augment_images
from cnnjax.data.augment import mix, mix_alphas, parse, soft_targets

P = PartitionSpec


@struct.dataclass
class TrainState:
    """Everything that changes during training.

    Attributes:
      step: int32 scalar, the number of updates applied.
      params: the model's parameters (float32).
      batch_stats: BatchNorm running statistics (``{}`` for models without BatchNorm).
      opt_state: the Optax state.
      rng: ``uint32[2]`` base key; step ``s`` uses ``fold_in(rng, s)``.
      ema: ``{}``, or with ``train.ema_decay`` the exponential moving average of the model
        variables (``{"params", "batch_stats"}``, as ``variables``), updated after every step.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    ema: Any = dataclasses.field(default_factory=dict)

    @property
    def variables(self) -> dict[str, Any]:
        """The model variables for ``model.apply``: params and, if any, BatchNorm statistics."""
        return variables(self.params, self.batch_stats)

    def with_eval_params(self) -> TrainState:
        """This state with the params to evaluate (``optim.eval_params``: the schedule-free
        average; the params themselves for the other optimizers)."""
        return self.replace(params=optim.eval_params(self.opt_state, self.params))

    def with_ema_weights(self) -> TrainState:
        """This state with the EMA variables as its params and batch stats (to evaluate)."""
        return self.replace(params=self.ema["params"],
                            batch_stats=self.ema.get("batch_stats", {}))


def variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    """``{"params", "batch_stats"}``, the statistics left out for models without BatchNorm."""
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


@jax.jit
def copy(tree: Any) -> Any:
    """New buffers holding the values of ``tree``'s arrays (same shardings)."""
    return jax.tree.map(jnp.copy, tree)


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """``[b, h, w, c]`` uint8 -> float32 with zero mean and unit variance per channel."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) - mean) / std


def init_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    seed: int,
    image_shape: Sequence[int],
    mesh: Mesh,
    on_host: bool | None = None,
) -> TrainState:
    """Initialises parameters and optimizer state, replicated over ``mesh``, under jit.

    ``on_host`` (default: when ``mesh`` is not made of CPUs) runs the initialisation on this
    process's CPU and copies the result to the devices. Random initialisation is hundreds of
    small threefry kernels, far slower to compile for a GPU than for a host CPU (figures in
    docs/performance.md#gpu-resnet-50-bfloat16-batch-256-at-224x224), and the same seed then
    gives the same parameters on every backend.
    """

    def init(key):
        init_key, state_key = jax.random.split(key)
        variables = model.init(init_key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            rng=state_key,
        )

    replicated = parallel.replicated(mesh)
    if on_host is None:
        on_host = mesh.devices.flat[0].platform != "cpu"
    host = parallel.host_cpu() if on_host else None
    if host is None:
        return jax.jit(init, out_shardings=replicated)(jax.random.PRNGKey(seed))
    with jax.default_device(host):  # nothing of the initialisation touches the accelerator
        state = jax.device_get(jax.jit(init)(jax.random.PRNGKey(seed)))
    # Every process computed the same values; each hands its devices their (full) copies.
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(x.shape, replicated, lambda index: x[index]),
        state)


def train_step_per_device(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mean: Sequence[float],
    std: Sequence[float],
    train_loss: losses.Loss = losses.cross_entropy,
    augment: str = "",
    skip_nonfinite: bool = False,
    frozen_batch_stats: bool = False,
    ema_decay: float = 0.0,
    sam_rho: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update on this device's shard ``batch`` (``images`` uint8, ``labels`` int32).

    ``train_loss``: the per-example training loss (:mod:`cnnjax.losses`, its options bound).
    ``metrics["nonfinite"]`` is 1 when the loss or a gradient is not finite; with
    ``skip_nonfinite`` such an update is dropped (params, batch stats and optimizer state stay
    as they were, as ``optax.apply_if_finite`` does) while the step counter still advances.
    With ``frozen_batch_stats`` the model runs in inference mode (running BatchNorm
    statistics, which stay as they are; no dropout): a fixed feature extractor. With
    ``ema_decay`` the state's ``ema`` moves to ``ema_decay * ema + (1 - ema_decay) * new``
    for the new params and batch stats (as torchvision's reference recipes average them).
    With ``sam_rho`` the update uses SAM's gradient, taken at the perturbed point
    ``params + sam_rho * g / ||g||`` (a second forward and backward pass).
    """
    step_key = jax.random.fold_in(state.rng, state.step)
    labels = batch["labels"]
    images, targets = inputs(batch, step_key, augment, mean, std)
    # Dropout masks differ between devices, as they would between examples on one device.
    dropout_key = jax.random.fold_in(jax.random.fold_in(step_key, 2), lax.axis_index(parallel.AXIS))

    def loss_fn(params):
        logits, updates = model.apply(
            variables(params, state.batch_stats), images, train=not frozen_batch_stats,
            mutable=["batch_stats"], rngs={"dropout": dropout_key},
        )
        loss = train_loss(logits, targets(logits.shape[-1])).mean()
        return loss, (logits, updates.get("batch_stats", state.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    # Every device holds the same share of the global batch, so the mean of the per-device
    # means is the global mean: gradients equal a one-device step on the whole batch.
    grads = lax.pmean(grads, parallel.AXIS)
    if sam_rho:
        grads = sam_gradient(lambda p: loss_fn(p)[0], state.params, grads, sam_rho)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = moving_average(state.ema, ema_decay, variables(params, batch_stats)) if ema_decay \
        else state.ema
    finite = all_finite(loss, grads)
    if skip_nonfinite:  # the values from before the step, where it was not finite (as
        # optax.apply_if_finite keeps the old state; here params, BatchNorm and average too)
        params, opt_state, batch_stats, ema = optax.tree.where(
            finite, (params, opt_state, batch_stats, ema),
            (state.params, state.opt_state, state.batch_stats, state.ema))
    metrics = {
        "loss": lax.pmean(loss, parallel.AXIS),
        "accuracy": lax.pmean(jnp.mean(jnp.argmax(logits, -1) == labels), parallel.AXIS),
        "learning_rate": schedule(state.step),
        "nonfinite": 1 - finite.astype(jnp.int32),
    }
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state, ema=ema), metrics


def inputs(batch: dict[str, jax.Array], step_key: jax.Array, augment: str,
           mean: Sequence[float], std: Sequence[float]) -> tuple[jax.Array, Callable]:
    """The step's augmentation, composed: ``data.augment``'s image ops in order (uint8), the
    normalisation, then its batch ops (mixup, cutmix). Returns the float32 images and
    ``targets(num_classes)``: the labels, or the mixed soft targets ``[b, num_classes]``.
    Deterministic per (step key, the example's index in the global batch)."""
    labels = batch["labels"]
    local = labels.shape[0]
    global_index = lax.axis_index(parallel.AXIS) * local + jnp.arange(local)
    chain = parse(augment)  # data.augment's ops, in order
    alphas = mix_alphas(chain)
    images = augment_images(batch["images"], jax.random.fold_in(step_key, 1), global_index, chain)
    images = normalize(images, mean, std)
    if not any(alphas.values()):
        return images, lambda num_classes: labels
    images, lam, partner = mix(images, jax.random.fold_in(step_key, 3), global_index, **alphas)
    return images, lambda num_classes: soft_targets(labels, lam, partner, num_classes)


def sam_gradient(loss: Callable, params: Any, grads: Any, rho: float) -> Any:
    """SAM's gradient: ``loss``'s at ``params + rho * g / ||g||`` (``grads`` = g, already
    averaged over devices), averaged over devices. A second forward and backward pass; the
    loss, logits and BatchNorm statistics of the step stay those at ``params``."""
    norm = optax.tree.norm(grads)
    ascent = jax.tree.map(lambda p, g: p + rho * g / norm, params, grads)
    return lax.pmean(jax.grad(loss)(ascent), parallel.AXIS)


def all_finite(loss: jax.Array, grads: Any) -> jax.Array:
    """True where the loss and every gradient are finite on every device (after the pmean all
    devices see the same gradients, so all agree)."""
    finite = jnp.isfinite(loss) & jnp.all(
        jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    return lax.pmin(finite.astype(jnp.int32), parallel.AXIS).astype(bool)


def moving_average(average: Any, decay: float, new: Any) -> Any:
    """``decay * average + (1 - decay) * new``, leaf by leaf."""
    return jax.tree.map(lambda a, v: decay * a + (1.0 - decay) * v, average, new)


def eval_step_per_device(
    variables: dict[str, Any],
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    mean: Sequence[float],
    std: Sequence[float],
) -> dict[str, jax.Array]:
    """Sums (not means) over the real (mask=1) examples of the batch, over every device: loss,
    correct top-1 and top-5 predictions, count, and ``confusion``: ``[true class, predicted
    class]`` int32 counts ``[num_classes, num_classes]``. ``variables``: ``state.variables``
    (or its average of the weights)."""
    logits = model.apply(variables, normalize(batch["images"], mean, std), train=False)
    labels, mask = batch["labels"], batch["mask"]
    num_classes = logits.shape[-1]
    loss = losses.cross_entropy(logits, labels)  # whatever the training loss: comparable
    predicted = jnp.argmax(logits, -1)
    top5 = lax.top_k(logits, min(5, num_classes))[1]
    sums = {
        "loss": jnp.sum(loss * mask),
        "correct": jnp.sum((predicted == labels) * mask),
        "correct_top5": jnp.sum(jnp.any(top5 == labels[:, None], -1) * mask),
        "count": jnp.sum(mask),
        "confusion": jnp.zeros((num_classes, num_classes), jnp.int32).at[labels, predicted].add(
            (mask > 0).astype(jnp.int32)),
    }
    return lax.psum(sums, parallel.AXIS)


def make_train_step(mesh: Mesh, **kwargs) -> Callable:
    """``(state, batch) -> (state, metrics)``, jitted over ``mesh``; ``state`` is donated."""
    fn = parallel.per_device(
        lambda s, b: train_step_per_device(s, b, **kwargs), mesh, (P(), P(parallel.AXIS)), P()
    )
    return jax.jit(fn, donate_argnums=0, compiler_options=parallel.compiler_options(mesh))


def make_eval_step(mesh: Mesh, **kwargs) -> Callable:
    """``(variables, batch) -> summed metrics``, jitted over ``mesh``."""
    fn = parallel.per_device(
        lambda s, b: eval_step_per_device(s, b, **kwargs), mesh, (P(), P(parallel.AXIS)), P()
    )
    return jax.jit(fn, compiler_options=parallel.compiler_options(mesh))


def eval_sums(eval_step: Callable, variables: Any, batches, mesh: Mesh) -> dict[str, Any]:
    """``eval_step``'s sums over every batch of ``batches`` (host batches of this process)."""
    totals = None
    for local in batches:
        sums = eval_step(variables, parallel.global_batch(local, mesh))
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
        parallel.pace(totals, mesh)
    return totals
