"""The training losses, one table entry each (``train.loss``).

Every loss maps ``logits [batch, classes]`` float32 and ``targets`` — ``[batch]`` int class
indices, or ``[batch, classes]`` soft targets (mixup/cutmix blends, rows summing to 1) — to
a per-example loss ``[batch]`` float32, which the train step averages over the batch.

* ``cross_entropy``: softmax cross-entropy; ``train.label_smoothing`` mixes the targets with
  the uniform distribution (``optax.smooth_labels``).
* ``bce``: binary cross-entropy of a sigmoid per class against the one-hot (or mixed)
  targets, averaged over the classes, as "ResNet strikes back" trains (Wightman et al.
  2021; timm's ``BinaryCrossEntropy``): label smoothing moves every target to
  ``(1 - s) * t + s / classes`` (timm's on/off values), then with
  ``train.bce_target_thresh`` > 0 targets above the threshold become 1 and the rest 0.

Evaluation reports the cross-entropy whatever the training loss (``eval_loss``), as timm's
validation does, so that runs trained with either loss compare.

Adding a loss: a function ``(logits, targets, *, label_smoothing, bce_target_thresh) ->
[batch]`` and its row in :data:`LOSSES`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import optax

Loss = Callable[[jax.Array, jax.Array], jax.Array]


def _dense(logits: jax.Array, targets: jax.Array, label_smoothing: float) -> jax.Array:
    """``[batch, classes]`` targets: one-hot for class indices, smoothed if asked."""
    if targets.ndim == 1:
        targets = jax.nn.one_hot(targets, logits.shape[-1])
    return optax.smooth_labels(targets, label_smoothing) if label_smoothing else targets


def cross_entropy(logits: jax.Array, targets: jax.Array, *, label_smoothing: float = 0.0,
                  **_: Any) -> jax.Array:
    """Softmax cross-entropy per example, ``[batch]``."""
    return optax.softmax_cross_entropy(logits, _dense(logits, targets, label_smoothing))


def binary_cross_entropy(logits: jax.Array, targets: jax.Array, *,
                         label_smoothing: float = 0.0, bce_target_thresh: float = 0.0,
                         **_: Any) -> jax.Array:
    """Sigmoid binary cross-entropy per class, averaged over the classes: ``[batch]``.

    ``bce_target_thresh`` > 0: targets ``> bce_target_thresh`` become 1, the others 0
    (timm's ``target_threshold``; 0 keeps the targets as they are)."""
    dense = _dense(logits, targets, label_smoothing)
    if bce_target_thresh:
        dense = (dense > bce_target_thresh).astype(logits.dtype)
    return optax.sigmoid_binary_cross_entropy(logits, dense).mean(axis=-1)


# name -> the per-example loss; `train.loss` chooses one (config.CHOICES reads this table).
LOSSES: dict[str, Callable[..., jax.Array]] = {
    "cross_entropy": cross_entropy,
    "bce": binary_cross_entropy,
}


def from_config(train: Any) -> Loss:
    """The loss a config's ``train`` section names, its options bound: ``(logits, targets)
    -> [batch]``."""
    return functools.partial(LOSSES[train.loss], label_smoothing=train.label_smoothing,
                             bce_target_thresh=train.bce_target_thresh)
