"""A configurable conv-pool stack ending in dense layers (the classic CNN)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models import register


def _padding(padding: str | int | Sequence):
    # Config values arrive as strings or ints; lax wants "SAME"/"VALID" or per-side pairs.
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple(tuple(p) if isinstance(p, Sequence) else (p, p) for p in padding)


@register("cnn")
class CNN(nn.Module):
    """[Conv -> (BatchNorm) -> activation -> (pool)] * len(features) -> dense layers.

    Attributes:
      num_classes: number of output logits.
      features: output channels (number of filters) of each convolution.
      kernel_size: square kernel side.
      strides: convolution stride.
      padding: ``"SAME"``, ``"VALID"`` or an int of zeros added on every side.
      activation: name of a ``flax.linen`` activation.
      pool: ``"max"``, ``"avg"`` or ``"none"``.
      pool_window: square pooling window (its stride equals the window).
      pool_every: pool after every ``pool_every``-th convolution.
      dense: widths of the hidden dense layers after flattening.
      batch_norm: BatchNorm after every convolution.
      dropout: dropout rate before each dense layer (0 disables it).
    """

    num_classes: int = 10
    features: Sequence[int] = (32, 64)
    kernel_size: int = 3
    strides: int = 1
    padding: Any = "SAME"
    activation: str = "relu"
    pool: str = "max"
    pool_window: int = 2
    pool_every: int = 1
    dense: Sequence[int] = (128,)
    batch_norm: bool = False
    dropout: float = 0.0
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        act = getattr(nn, self.activation)
        x = x.astype(self.dtype)
        window = (self.pool_window, self.pool_window)
        pool = {"max": nn.max_pool, "avg": nn.avg_pool, "none": None}[self.pool]
        for i, width in enumerate(self.features):
            x = nn.Conv(
                width,
                (self.kernel_size, self.kernel_size),
                strides=self.strides,
                padding=_padding(self.padding),
                use_bias=not self.batch_norm,
                dtype=self.dtype,
            )(x)
            if self.batch_norm:
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=0.9,
                    axis_name=self.axis_name if train else None,
                    dtype=self.dtype,
                )(x)
            x = act(x)
            if pool is not None and (i + 1) % self.pool_every == 0:
                x = pool(x, window, strides=window)
        x = x.reshape((x.shape[0], -1))
        for width in self.dense:
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
            x = act(nn.Dense(width, dtype=self.dtype)(x))
        if self.dropout:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
        return x.astype(jnp.float32)


register("lenet5", partial(CNN, features=(6, 16), kernel_size=5, padding="VALID",
                           activation="tanh", pool="avg", dense=(120, 84)))
