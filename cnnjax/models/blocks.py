"""The building blocks the zoo's families share, with torchvision's defaults.

* initialisers: :data:`conv_init` (``kaiming_normal_(mode="fan_out")``), :data:`conv_init_fan_in`
  (``kaiming_normal_``'s default), :data:`dense_kernel_init` and :func:`dense_bias_init`
  (PyTorch's ``Linear``);
* :func:`conv` — ``nn.Conv`` with torchvision's padding ``kernel // 2``, no bias, and the
  convolution computed by :func:`layers.conv_general_dilated` (faster formulations on CPU,
  the same parameters and function);
* :func:`batch_norm` — ``nn.BatchNorm`` with PyTorch's defaults (eps 1e-5, momentum 0.1 in
  PyTorch's convention: the new batch's weight);
* :class:`ConvNormAct` — a mixin with torchvision's ``Conv2dNormActivation`` as a method;
* :class:`SqueezeExcitation` and :func:`make_divisible`.

Module names are the caller's: a block made here adds no level to the parameter tree, so the
families keep torchvision's ``state_dict`` keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models import layers

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") for the convolutions of
# ResNet, VGG, MobileNet, EfficientNet and RegNet; DenseNet's kaiming_normal_ uses fan_in.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
conv_init_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# PyTorch's Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight and the bias.
dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def dense_bias_init(fan_in: int):
    """PyTorch's Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return layers.uniform(1.0 / math.sqrt(fan_in))


def pad(p: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit symmetric padding of ``p`` on both spatial sides."""
    return ((p, p), (p, p))


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: the nearest multiple of ``divisor``, never more than
    10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv(features: int, kernel: int | tuple[int, int], *, strides: int = 1, groups: int = 1,
         padding: Any = None, use_bias: bool = False, kernel_init: Callable = conv_init,
         dtype: Any = jnp.float32, name: str | None = None) -> nn.Conv:
    """``nn.Conv`` as torchvision's models build theirs: padding ``kernel // 2`` unless given,
    no bias unless asked, float32 parameters; computed by :func:`layers.conv_general_dilated`.

    ``kernel [kh, kw, in / groups, features]`` and ``bias [features]``: ``nn.Conv``'s."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return nn.Conv(features, (kh, kw), strides=(strides, strides),
                   padding=((kh // 2, kh // 2), (kw // 2, kw // 2)) if padding is None else padding,
                   feature_group_count=groups, use_bias=use_bias, kernel_init=kernel_init,
                   dtype=dtype, param_dtype=jnp.float32, name=name,
                   conv_general_dilated=layers.conv_general_dilated)


def batch_norm(train: bool, *, eps: float = 1e-5, momentum: float = 0.1,
               axis_name: str | None = None, zero_scale: bool = False, dtype: Any = jnp.float32,
               name: str | None = None) -> nn.BatchNorm:
    """``nn.BatchNorm`` with PyTorch's defaults: ``momentum`` in PyTorch's convention (the new
    batch's weight, Flax's ``1 - momentum``); batch statistics averaged over ``axis_name`` in
    training only; ``zero_scale``: the scale starts at zero (torchvision's
    ``zero_init_residual``)."""
    return nn.BatchNorm(use_running_average=not train, momentum=1.0 - momentum, epsilon=eps,
                        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
                        axis_name=axis_name if train else None, dtype=dtype,
                        param_dtype=jnp.float32, name=name)


class ConvNormAct(nn.Module):
    """A base for modules made of torchvision's ``Conv2dNormActivation``s.

    Attributes:
      bn_eps: BatchNorm's epsilon.
      bn_momentum: BatchNorm's momentum in PyTorch's convention (the new batch's weight).
      dtype: computation dtype; parameters stay float32 and logits are returned as float32.
      axis_name: device axis BatchNorm averages batch statistics over in training.
    """

    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    dtype: Any = jnp.float32
    axis_name: str | None = None

    def conv_bn(self, x: jax.Array, features: int, kernel: int, train: bool, name: str,
                strides: int = 1, groups: int = 1, act: Callable | None = nn.silu) -> jax.Array:
        """Conv (``<name>_0``), BatchNorm (``<name>_1``), then ``act`` (None: none)."""
        x = conv(features, kernel, strides=strides, groups=groups, dtype=self.dtype,
                 name=f"{name}_0")(x)
        x = self.norm(x, train, f"{name}_1")
        return act(x) if act else x

    def norm(self, x: jax.Array, train: bool, name: str) -> jax.Array:
        return batch_norm(train, eps=self.bn_eps, momentum=self.bn_momentum,
                          axis_name=self.axis_name, dtype=self.dtype, name=name)(x)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: global mean, 1x1 conv (``fc1``), ``act``, 1x1 conv
    (``fc2``), ``gate`` on every channel (EfficientNet: SiLU and sigmoid; MobileNetV3: ReLU
    and hard sigmoid)."""

    squeeze: int
    act: Any = nn.silu
    gate: Any = nn.sigmoid
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = jnp.mean(x, axis=(1, 2), keepdims=True)
        scale = self.act(conv(self.squeeze, 1, use_bias=True, dtype=self.dtype, name="fc1")(scale))
        scale = self.gate(conv(x.shape[-1], 1, use_bias=True, dtype=self.dtype, name="fc2")(scale))
        return x * scale
