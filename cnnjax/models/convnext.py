"""ConvNeXt (Liu et al. 2022) as torchvision builds it: ``convnext_tiny`` .. ``convnext_large``.

A 4x4/4 convolution stem with LayerNorm; four stages of ConvNeXt blocks (a 7x7 depthwise
convolution, LayerNorm, a 4x-wide MLP with GELU, a learned per-channel layer scale, stochastic
depth, a residual connection), each stage after the first entered through LayerNorm and a
2x2/2 convolution; global average pooling, LayerNorm and the dense head. LayerNorms use
epsilon 1e-6 and exact (two-pass) variances, as PyTorch computes them.

Stochastic depth (torchvision's ``StochasticDepth(p, "row")``) drops a block's residual branch
for a whole example with probability ``p``, growing linearly from 0 at the first block to
``stochastic_depth_prob`` at the last, and scales the kept branches by ``1 / (1 - p)``; it
draws from the ``"dropout"`` rng in training and is the identity in evaluation.

Submodule names follow torchvision's state_dict keys (``features_0_0`` for ``features.0.0``,
``features_1_0/block_0`` for ``features.1.0.block.0``, ``layer_scale`` in its block);
``classifier_0`` is the last LayerNorm and ``head`` is ``classifier.2``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models import blocks, layers, register

# torchvision: trunc_normal_(std=0.02), whose default bounds (-2, 2) are absolute, a hundred
# standard deviations out: a plain normal. Biases start at zero.
kernel_init = nn.initializers.normal(0.02)


def _layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, dtype=dtype,
                        param_dtype=jnp.float32, name=name)


class Block(nn.Module):
    """One ConvNeXt block; ``drop``: its stochastic-depth probability."""

    dim: int
    layer_scale: float
    drop: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        dense = functools.partial(nn.Dense, kernel_init=kernel_init, dtype=self.dtype,
                                  param_dtype=jnp.float32)
        out = blocks.conv(self.dim, 7, groups=self.dim, use_bias=True, kernel_init=kernel_init,
                          dtype=self.dtype, name="block_0")(x)
        out = _layer_norm("block_2", self.dtype)(out)
        out = dense(4 * self.dim, name="block_3")(out)
        out = nn.gelu(out, approximate=False)  # torch's nn.GELU(): the exact erf form
        out = dense(self.dim, name="block_5")(out)
        scale = self.param("layer_scale", nn.initializers.constant(self.layer_scale),
                           (self.dim,), jnp.float32)
        out = out * scale.astype(self.dtype)
        return x + layers.stochastic_depth(self, out, self.drop, train)


class ConvNeXt(nn.Module):
    """ConvNeXt with torchvision's layout and initialisation.

    Attributes:
      num_classes: number of output logits.
      depths: blocks per stage (tiny: 3, 3, 9, 3).
      widths: channels per stage (tiny: 96, 192, 384, 768).
      stochastic_depth_prob: the last block's drop probability (torchvision's per model).
      layer_scale: initial value of every layer scale (1e-6).
      dtype: computation dtype; parameters stay float32 and logits are returned as float32.
    """

    num_classes: int = 1000
    depths: Sequence[int] = (3, 3, 9, 3)
    widths: Sequence[int] = (96, 192, 384, 768)
    stochastic_depth_prob: float = 0.1
    layer_scale: float = 1e-6
    dtype: Any = jnp.float32
    axis_name: str | None = None  # no BatchNorm: nothing is averaged over devices

    @classmethod
    def check_fields(cls, fields: dict[str, Any]) -> None:
        if len(fields["depths"]) != len(fields["widths"]):
            raise ValueError(f"model.depths {tuple(fields['depths'])} and model.widths "
                             f"{tuple(fields['widths'])} of ConvNeXt must have one entry per "
                             "stage each")
        if not 0 <= fields["stochastic_depth_prob"] < 1:
            raise ValueError("model.stochastic_depth_prob of ConvNeXt must be in [0, 1), got "
                             f"{fields['stochastic_depth_prob']}")

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = functools.partial(nn.Conv, padding="VALID", kernel_init=kernel_init,
                                 dtype=self.dtype, param_dtype=jnp.float32)
        x = jnp.asarray(x, self.dtype)
        x = conv(self.widths[0], (4, 4), strides=(4, 4), name="features_0_0")(x)
        x = _layer_norm("features_0_1", self.dtype)(x)
        total, done = sum(self.depths), 0
        for stage, (depth, width) in enumerate(zip(self.depths, self.widths, strict=True)):
            index = 2 * stage + 1  # torchvision's features index: stages and downsamplings
            if stage:
                x = _layer_norm(f"features_{index - 1}_0", self.dtype)(x)
                layers.check_halvable(x, "ConvNeXt", 32)
                x = conv(width, (2, 2), strides=(2, 2), name=f"features_{index - 1}_1")(x)
            for j in range(depth):
                drop = layers.block_drop_rate(self.stochastic_depth_prob, done, total)
                x = Block(width, self.layer_scale, drop, dtype=self.dtype,
                          name=f"features_{index}_{j}")(x, train=train)
                done += 1
        x = jnp.mean(x, axis=(1, 2))
        x = _layer_norm("classifier_0", self.dtype)(x)
        x = nn.Dense(self.num_classes, kernel_init=kernel_init, dtype=self.dtype,
                     param_dtype=jnp.float32, name="head")(x)
        return x.astype(jnp.float32)


for _name, _depths, _widths, _drop in (
    ("convnext_tiny", (3, 3, 9, 3), (96, 192, 384, 768), 0.1),
    ("convnext_small", (3, 3, 27, 3), (96, 192, 384, 768), 0.4),
    ("convnext_base", (3, 3, 27, 3), (128, 256, 512, 1024), 0.5),
    ("convnext_large", (3, 3, 27, 3), (192, 384, 768, 1536), 0.5),
):
    register(_name, functools.partial(ConvNeXt, depths=_depths, widths=_widths,
                                      stochastic_depth_prob=_drop))
