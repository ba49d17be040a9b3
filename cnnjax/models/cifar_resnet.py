"""ResNets for 32x32 images: He et al.'s CIFAR ResNets, a pre-activation ResNet-18, Wide ResNets.

* ``cifar_resnet{20,32,44,56,110}`` (He et al., "Deep Residual Learning for Image Recognition",
  CVPR 2016, section 4.2): a 3x3 stem of 16 channels, three stages of 16/32/64 channels with
  ``n = (depth - 2) / 6`` basic blocks each, global average pool, dense. ``shortcut="A"`` is the
  paper's parameter-free shortcut (strided subsampling, zero-padded channels), ``"B"`` a 1x1
  convolution + BatchNorm projection wherever the shape changes.
* ``preact_resnet18`` (He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016):
  BN -> ReLU -> conv residual branches on a clean identity path, with the CIFAR-style 3x3 stem
  (no max-pool) and stages of 64/128/256/512 channels, and a final BN -> ReLU before pooling.
* ``wrn28_10`` and :class:`WideResNet` (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC
  2016): pre-activation wide basic blocks, ``n = (depth - 4) / 6`` per stage, widths
  16k/32k/64k, optional dropout between the two convolutions of a block.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models import blocks, layers, register


class _Layers:
    """Conv / BatchNorm / Dense factories shared by the modules below (a mixin)."""

    dtype: Any
    axis_name: str | None

    def conv(self, features, kernel=3, strides=1, name=None):
        return layers.materialized(
            blocks.conv(features, kernel, strides=strides, dtype=self.dtype, name=name))

    def norm(self, train, name=None):
        return blocks.batch_norm(train, axis_name=self.axis_name, dtype=self.dtype, name=name)

    def head(self, x, num_classes):
        return nn.Dense(
            num_classes, kernel_init=blocks.dense_kernel_init,
            bias_init=blocks.dense_bias_init(x.shape[-1]),
            dtype=self.dtype, param_dtype=jnp.float32, name="head",
        )(x)


# --------------------------------------------------------------------------- CIFAR ResNets


class CifarBasicBlock(_Layers, nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus a type A or B shortcut, then ReLU."""

    features: int
    strides: int = 1
    shortcut: str = "A"
    drop_path: float = 0.0  # this block's stochastic-depth probability
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = self.conv(self.features, 3, self.strides, name="conv1")(x)
        out = nn.relu(self.norm(train, "bn1")(out))
        out = self.conv(self.features, 3, name="conv2")(out)
        out = self.norm(train, "bn2")(out)
        out = layers.stochastic_depth(self, out, self.drop_path, train)
        residual = x
        in_features = x.shape[-1]
        if self.strides != 1 or in_features != self.features:
            if self.shortcut == "A":
                residual = x[:, :: self.strides, :: self.strides, :]
                extra = self.features - in_features
                residual = jnp.pad(
                    residual, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2))
                )
            else:
                residual = self.conv(self.features, 1, self.strides, name="downsample_conv")(x)
                residual = self.norm(train, "downsample_bn")(residual)
        return nn.relu(out + residual)


class CifarResNet(_Layers, nn.Module):
    """He et al.'s CIFAR ResNet of depth ``6n + 2`` (20, 32, 44, 56, 110, ...).

    Attributes:
      num_classes: number of output logits.
      depth: total number of weighted layers, ``6n + 2``.
      shortcut: ``"A"`` (parameter-free: subsample and zero-pad channels) or ``"B"`` (1x1
        convolution + BatchNorm projection where the shape changes, identity elsewhere).
      drop_path_rate: stochastic depth (timm's name): in training each block's residual
        branch is dropped per example with a probability rising linearly over the blocks
        from 0 to this at the last, the kept ones scaled by ``1 / (1 - p)``; 0 = off.
      dtype: computation dtype; parameters stay float32 and logits are returned as float32.
      axis_name: device axis BatchNorm averages batch statistics over in training.
    """

    num_classes: int = 10
    depth: int = 20
    shortcut: str = "A"
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @classmethod
    def check_fields(cls, fields: dict[str, Any]) -> None:
        if (fields["depth"] - 2) % 6 or fields["depth"] < 8:
            raise ValueError(f"model.depth of a CIFAR ResNet must be 6n + 2 (20, 32, 44, 56, "
                             f"110, ...), got {fields['depth']}")

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {self.shortcut!r}")
        n = (self.depth - 2) // 6
        x = jnp.asarray(x, self.dtype)
        x = self.conv(16, 3, name="conv1")(x)
        x = nn.relu(self.norm(train, "bn1")(x))
        for i, width in enumerate((16, 32, 64)):
            for j in range(n):
                x = CifarBasicBlock(
                    width, strides=2 if i > 0 and j == 0 else 1, shortcut=self.shortcut,
                    drop_path=layers.block_drop_rate(self.drop_path_rate, i * n + j, 3 * n),
                    dtype=self.dtype, axis_name=self.axis_name, name=f"layer{i + 1}_{j}",
                )(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return self.head(x, self.num_classes).astype(jnp.float32)


for _depth in (20, 32, 44, 56, 110):
    register(f"cifar_resnet{_depth}", functools.partial(CifarResNet, depth=_depth))


# ------------------------------------------------------------------ pre-activation ResNet


class PreActBlock(_Layers, nn.Module):
    """BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv3x3 on the residual branch (identity mappings).

    Where the shape changes, the shortcut is a 1x1 convolution of the pre-activated input.
    """

    features: int
    strides: int = 1
    dropout: float = 0.0
    drop_path: float = 0.0  # this block's stochastic-depth probability
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = nn.relu(self.norm(train, "bn1")(x))
        if self.strides != 1 or x.shape[-1] != self.features:
            residual = self.conv(self.features, 1, self.strides, name="shortcut")(out)
        else:
            residual = x
        out = self.conv(self.features, 3, self.strides, name="conv1")(out)
        out = nn.relu(self.norm(train, "bn2")(out))
        if self.dropout:
            out = nn.Dropout(self.dropout, deterministic=not train)(out)
        out = self.conv(self.features, 3, name="conv2")(out)
        return layers.stochastic_depth(self, out, self.drop_path, train) + residual


class PreActResNet(_Layers, nn.Module):
    """Pre-activation ResNet with a CIFAR 3x3 stem (no max-pool) and four basic-block stages.

    Attributes:
      num_classes: number of output logits.
      stage_sizes: blocks in each stage; the stages have 64, 128, 256, 512 channels.
      drop_path_rate: stochastic depth (timm's name): in training each block's residual
        branch is dropped per example with a probability rising linearly over the blocks
        from 0 to this at the last, the kept ones scaled by ``1 / (1 - p)``; 0 = off.
      dtype: computation dtype; parameters stay float32 and logits are returned as float32.
      axis_name: device axis BatchNorm averages batch statistics over in training.
    """

    num_classes: int = 10
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, self.dtype)
        x = self.conv(64, 3, name="conv1")(x)
        total, done = sum(self.stage_sizes), 0
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                drop = layers.block_drop_rate(self.drop_path_rate, done, total)
                done += 1
                x = PreActBlock(
                    64 * 2**i, strides=2 if i > 0 and j == 0 else 1, drop_path=drop,
                    dtype=self.dtype, axis_name=self.axis_name, name=f"layer{i + 1}_{j}",
                )(x, train=train)
        # The last unit's sum is followed by one more activation (He et al. 2016, section 4.1).
        x = nn.relu(self.norm(train, "bn_final")(x))
        x = jnp.mean(x, axis=(1, 2))
        return self.head(x, self.num_classes).astype(jnp.float32)


register("preact_resnet18", functools.partial(PreActResNet, stage_sizes=(2, 2, 2, 2)))


# -------------------------------------------------------------------------- Wide ResNets


class WideResNet(_Layers, nn.Module):
    """WRN-``depth``-``widen_factor``: 3x3 stem of 16 channels, three stages of pre-activation
    wide basic blocks (16k, 32k, 64k channels; ``(depth - 4) / 6`` blocks each), BN -> ReLU,
    global average pool, dense.

    Attributes:
      num_classes: number of output logits.
      depth: ``6n + 4`` (28 for WRN-28-10).
      widen_factor: the width multiplier k.
      dropout: dropout rate between the two convolutions of each block (0.3 in the paper's
        dropout runs; needs a ``"dropout"`` rng in training when non-zero).
      drop_path_rate: stochastic depth (timm's name): in training each block's residual
        branch is dropped per example with a probability rising linearly over the blocks
        from 0 to this at the last, the kept ones scaled by ``1 / (1 - p)``; 0 = off.
      dtype: computation dtype; parameters stay float32 and logits are returned as float32.
      axis_name: device axis BatchNorm averages batch statistics over in training.
    """

    num_classes: int = 10
    depth: int = 28
    widen_factor: int = 10
    dropout: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @classmethod
    def check_fields(cls, fields: dict[str, Any]) -> None:
        if (fields["depth"] - 4) % 6 or fields["depth"] < 10:
            raise ValueError(f"model.depth of a Wide ResNet must be 6n + 4 (16, 22, 28, 40, "
                             f"...), got {fields['depth']}")

    @nn.compact
    def __call__(self, x, train: bool = False):
        n = (self.depth - 4) // 6
        x = jnp.asarray(x, self.dtype)
        x = self.conv(16, 3, name="conv1")(x)
        for i, width in enumerate((16, 32, 64)):
            for j in range(n):
                x = PreActBlock(
                    width * self.widen_factor, strides=2 if i > 0 and j == 0 else 1,
                    dropout=self.dropout,
                    drop_path=layers.block_drop_rate(self.drop_path_rate, i * n + j, 3 * n),
                    dtype=self.dtype, axis_name=self.axis_name, name=f"layer{i + 1}_{j}",
                )(x, train=train)
        x = nn.relu(self.norm(train, "bn_final")(x))
        x = jnp.mean(x, axis=(1, 2))
        return self.head(x, self.num_classes).astype(jnp.float32)


register("wrn28_10", functools.partial(WideResNet, depth=28, widen_factor=10))
