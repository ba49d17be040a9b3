"""DenseNet (Huang et al. 2017) as torchvision builds it: ``densenet121``, ``161``, ``169``,
``201``.

A 7x7/2 stem with BatchNorm, ReLU and a 3x3/2 max-pool; four dense blocks, each layer
(BN-ReLU-1x1 conv to ``bn_size * growth_rate``, BN-ReLU-3x3 conv to ``growth_rate``, optional
dropout) seeing the concatenation of every earlier output of its block; between blocks a
transition (BN-ReLU-1x1 conv halving the channels, 2x2/2 average pool); a final BatchNorm,
ReLU, global average pooling and the head. BatchNorm with PyTorch's defaults.

Submodule names follow torchvision's state_dict keys (``features_conv0``,
``features_denseblock1/denselayer1/norm1``, ``features_transition1/conv``, ``features_norm5``);
``head`` is ``classifier``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models import blocks, layers, register


class _Layers(nn.Module):
    """BN-ReLU and convolution factories (no bias; torchvision's padding ``kernel // 2``)."""

    dtype: Any = jnp.float32
    axis_name: str | None = None

    def norm_relu(self, x, train, name):
        x = blocks.batch_norm(train, axis_name=self.axis_name, dtype=self.dtype, name=name)(x)
        return nn.relu(x)

    def conv(self, x, features, kernel, name, strides=1):
        # torchvision's kaiming_normal_ here keeps its default mode, fan_in.
        return blocks.conv(features, kernel, strides=strides, kernel_init=blocks.conv_init_fan_in,
                           dtype=self.dtype, name=name)(x)


class DenseLayer(_Layers):
    """BN-ReLU-1x1 conv (``norm1``, ``conv1``), BN-ReLU-3x3 conv (``norm2``, ``conv2``)."""

    growth: int = 32
    bottleneck: int = 4
    drop: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = self.conv(self.norm_relu(x, train, "norm1"), self.bottleneck * self.growth, 1,
                        "conv1")
        out = self.conv(self.norm_relu(out, train, "norm2"), self.growth, 3, "conv2")
        return nn.Dropout(self.drop, deterministic=not train or not self.drop)(out)


class DenseBlock(_Layers):
    """``layers`` dense layers (``denselayer1`` ...), each fed the block's input and every
    earlier layer's output, concatenated; returns all of them concatenated."""

    layers: int = 6
    growth: int = 32
    bottleneck: int = 4
    drop: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        for j in range(self.layers):
            new = DenseLayer(growth=self.growth, bottleneck=self.bottleneck, drop=self.drop,
                             dtype=self.dtype,
                             axis_name=self.axis_name, name=f"denselayer{j + 1}")(x, train)
            x = jnp.concatenate([x, new], axis=-1)
        return x


class Transition(_Layers):
    """BN-ReLU-1x1 conv (``norm``, ``conv``) to ``features`` channels, 2x2/2 average pool."""

    features: int = 128

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.conv(self.norm_relu(x, train, "norm"), self.features, 1, "conv")
        layers.check_halvable(x, "DenseNet", 29)
        return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


class DenseNet(_Layers):
    """DenseNet with torchvision's layout and initialisation.

    Attributes:
      num_classes: number of output logits.
      growth_rate: channels each layer adds (32; 48 for DenseNet-161).
      block_config: layers per dense block.
      num_init_features: the stem's channels (64; 96 for DenseNet-161).
      bn_size: the bottleneck's width in multiples of ``growth_rate``.
      drop_rate: dropout after each layer (torchvision's 0; needs a ``"dropout"`` rng).
      dtype: computation dtype; parameters stay float32 and logits are returned as float32.
      axis_name: device axis BatchNorm averages batch statistics over in training.
    """

    num_classes: int = 1000
    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    drop_rate: float = 0.0

    @classmethod
    def check_fields(cls, fields: dict[str, Any]) -> None:
        for key in ("growth_rate", "num_init_features", "bn_size"):
            if not (isinstance(fields[key], int) and fields[key] > 0):
                raise ValueError(f"model.{key} of DenseNet must be a positive integer, got "
                                 f"{fields[key]!r}")
        if not fields["block_config"] or any(
                not isinstance(n, int) or n < 1 for n in fields["block_config"]):
            raise ValueError("model.block_config of DenseNet must be a non-empty tuple of "
                             f"positive layer counts, got {fields['block_config']!r}")
        if not 0 <= fields["drop_rate"] < 1:
            raise ValueError(f"model.drop_rate of DenseNet must be in [0, 1), got "
                             f"{fields['drop_rate']}")

    @nn.compact
    def __call__(self, x, train: bool = False):
        shared = {"dtype": self.dtype, "axis_name": self.axis_name}
        x = jnp.asarray(x, self.dtype)
        x = self.conv(x, self.num_init_features, 7, "features_conv0", strides=2)
        x = self.norm_relu(x, train, "features_norm0")
        x = layers.padded_max_pool(x, (3, 3), (2, 2), blocks.pad(1))
        for i, depth in enumerate(self.block_config):
            x = DenseBlock(layers=depth, growth=self.growth_rate, bottleneck=self.bn_size,
                           drop=self.drop_rate, **shared,
                           name=f"features_denseblock{i + 1}")(x, train)
            if i != len(self.block_config) - 1:
                x = Transition(features=x.shape[-1] // 2, **shared,
                               name=f"features_transition{i + 1}")(x, train)
        x = self.norm_relu(x, train, "features_norm5")
        x = jnp.mean(x, axis=(1, 2))
        bound = 1.0 / math.sqrt(x.shape[-1])
        x = nn.Dense(self.num_classes, kernel_init=layers.uniform(bound), dtype=self.dtype,
                     param_dtype=jnp.float32, name="head")(x)
        return x.astype(jnp.float32)


for _name, _growth, _blocks, _init in (
    ("densenet121", 32, (6, 12, 24, 16), 64), ("densenet161", 48, (6, 12, 36, 24), 96),
    ("densenet169", 32, (6, 12, 32, 32), 64), ("densenet201", 32, (6, 12, 48, 32), 64),
):
    register(_name, functools.partial(DenseNet, growth_rate=_growth, block_config=_blocks,
                                      num_init_features=_init))
