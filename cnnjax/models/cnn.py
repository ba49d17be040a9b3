"""A configurable conv-pool stack ending in dense layers (the classic CNN)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from cnnjax import ops as scratch_ops
from cnnjax.models import layers, register


def _padding(padding: str | int | Sequence):
    # Config values arrive as strings or ints; lax wants "SAME"/"VALID" or per-side pairs.
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple(tuple(p) if isinstance(p, Sequence) else (p, p) for p in padding)


def max_pool(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    """``nn.max_pool(x, window, strides=window)``: the same values and the same gradients.

    ``x: [batch, height, width, channels]`` -> ``[batch, height // kh, width // kw, channels]``.
    :func:`cnnjax.models.layers.max_pool`: the gradient goes to the first maximum of each window
    (row-major), as select-and-scatter sends it, but with element-wise ops only: XLA:CPU expands
    select-and-scatter into full-size index arrays and a scatter, which took a third of the
    digits CNN's training step (``python -m experiments.benchmarks.benchmark``).
    """
    return layers.max_pool(x, window)


def plain_max_pool(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    """``nn.max_pool(x, window, strides=window)``, its window passed by keyword: the form
    jax2onnx 0.17.1 converts with a symbolic batch (it rejects positional pooling arguments,
    and :func:`max_pool`'s slices need a constant batch there)."""
    return nn.max_pool(x, window_shape=window, strides=window)


class ScratchConv(nn.Module):
    """``nn.Conv`` computed by :func:`cnnjax.ops.conv2d`, with the same parameters.

    Params ``kernel [kh, kw, in, features]`` (HWIO) and ``bias [features]``, with nn.Conv's
    initialisers, so weights move freely between the two (and initialise identically under the
    same module name).
    """

    features: int
    kernel_size: Sequence[int]
    strides: Any = 1
    padding: Any = "SAME"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, self.param_dtype)
        bias = (self.param("bias", nn.initializers.zeros_init(), (self.features,),
                           self.param_dtype) if self.use_bias else None)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        return scratch_ops.conv2d(x, kernel, stride=self.strides, padding=self.padding, bias=bias)


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
      ops: ``"lax"`` (``nn.Conv``, :func:`max_pool` (``nn.max_pool``'s values and gradients,
        faster on CPU) / ``nn.avg_pool``) or ``"scratch"`` (:mod:`cnnjax.ops`); the parameter
        tree is the same either way.
      dtype: computation dtype; parameters stay float32 and logits are returned as float32.
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
    ops: str = "lax"
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        act = getattr(nn, self.activation)
        x = x.astype(self.dtype)
        window = (self.pool_window, self.pool_window)
        if self.ops not in ("lax", "scratch"):
            raise ValueError(f"ops must be 'lax' or 'scratch', got {self.ops!r}")
        scratch = self.ops == "scratch"
        pools = {
            # The run's performance switch: fused strided slices (faster on CPU) or
            # nn.max_pool (the same values and gradients; what ONNX converters read with any
            # batch size, so layers.PORTABLE turns the fused form off).
            "max": (max_pool if layers.performance().fused_max_pool else plain_max_pool,
                    partial(scratch_ops.max_pool, stride=window)),
            "avg": (partial(nn.avg_pool, strides=window),
                    partial(scratch_ops.avg_pool, stride=window)),
            "none": (None, None),
        }
        pool = pools[self.pool][scratch]
        conv = ScratchConv if scratch else nn.Conv
        for i, width in enumerate(self.features):
            x = conv(
                width,
                (self.kernel_size, self.kernel_size),
                strides=self.strides,
                padding=_padding(self.padding),
                use_bias=not self.batch_norm,
                dtype=self.dtype,
                name=f"Conv_{i}",  # the same param names for both ops
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
                x = pool(x, window)
        x = x.reshape((x.shape[0], -1))
        for width in self.dense:
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
            x = act(nn.Dense(width, dtype=self.dtype)(x))
        if self.dropout:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)


register("lenet5", partial(CNN, features=(6, 16), kernel_size=5, padding="VALID",
                           activation="tanh", pool="avg", dense=(120, 84)))
