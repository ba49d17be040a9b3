"""ResNet v1.5 for ImageNet-sized inputs, laid out like torchvision's ``resnet18``..``resnet152``.

v1.5 puts the stride of a downsampling bottleneck in its 3x3 convolution (torchvision's choice),
not in the first 1x1. Padding is explicit everywhere (3 for the 7x7 stem, 1 for every 3x3
convolution and for the 3x3/2 max-pool), so the outputs equal torchvision's for any image size,
odd sides included; ``"SAME"`` would pad strided layers asymmetrically and differ.

Submodule names follow torchvision's state_dict keys (``conv1``, ``bn1``, ``layer1_0``, ...,
``downsample_conv``/``downsample_bn`` for ``downsample.0``/``downsample.1``; the classifier is
``head`` for torchvision's ``fc``), which keeps :mod:`cnnjax.models.pretrained` mechanical.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models import blocks, layers, register


class _Block(nn.Module):
    """Shared fields and layer factories of the residual blocks."""

    features: int
    strides: int = 1
    zero_init_residual: bool = False
    drop_path: float = 0.0  # this block's stochastic-depth probability
    dtype: Any = jnp.float32
    axis_name: str | None = None

    def conv(self, features, kernel, strides=1, name=None, groups=1):
        return layers.materialized(blocks.conv(features, kernel, strides=strides, groups=groups,
                                               dtype=self.dtype, name=name))

    def norm(self, train, name, zero=False):
        return blocks.batch_norm(train, axis_name=self.axis_name, zero_scale=zero,
                                 dtype=self.dtype, name=name)

    def shortcut(self, x, out_features, train):
        if self.strides == 1 and x.shape[-1] == out_features:
            return x
        x = self.conv(out_features, 1, self.strides, name="downsample_conv")(x)
        return self.norm(train, "downsample_bn")(x)


class BasicBlock(_Block):
    """Two 3x3 convolutions (ResNet-18/34); the first carries the stride."""

    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = self.conv(self.features, 3, self.strides, name="conv1")(x)
        out = nn.relu(self.norm(train, "bn1")(out))
        out = self.conv(self.features, 3, name="conv2")(out)
        out = self.norm(train, "bn2", zero=self.zero_init_residual)(out)
        out = layers.stochastic_depth(self, out, self.drop_path, train)
        return nn.relu(out + self.shortcut(x, self.features, train))


class Bottleneck(_Block):
    """1x1 reduce -> 3x3 (strided: v1.5) -> 1x1 expand to ``4 * features`` (ResNet-50 and up).

    ``groups`` and ``width_per_group`` are torchvision's: the 3x3 convolution is ``groups``
    grouped convolutions of ``width_per_group * features / 64`` channels each (ResNeXt:
    32x4d, 64x4d, 32x8d); Wide ResNet-50-2 doubles ``width_per_group`` to 128.
    """

    expansion: ClassVar[int] = 4
    groups: int = 1
    width_per_group: int = 64

    @nn.compact
    def __call__(self, x, train: bool = False):
        out_features = self.features * self.expansion
        width = int(self.features * (self.width_per_group / 64.0)) * self.groups
        out = self.conv(width, 1, name="conv1")(x)
        out = nn.relu(self.norm(train, "bn1")(out))
        out = self.conv(width, 3, self.strides, name="conv2", groups=self.groups)(out)
        out = nn.relu(self.norm(train, "bn2")(out))
        out = self.conv(out_features, 1, name="conv3")(out)
        out = self.norm(train, "bn3", zero=self.zero_init_residual)(out)
        out = layers.stochastic_depth(self, out, self.drop_path, train)
        return nn.relu(out + self.shortcut(x, out_features, train))


BLOCKS: dict[str, type[_Block]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """ResNet v1.5: 7x7/2 stem + 3x3/2 max-pool, four stages, global average pool, dense head.

    Attributes:
      num_classes: number of output logits.
      stage_sizes: blocks in each of the stages (widths 64, 128, 256, ... times the expansion).
      block: ``"basic"`` (two 3x3 convolutions) or ``"bottleneck"`` (1x1-3x3-1x1).
      groups, width_per_group: the bottleneck's grouped 3x3 convolution (ResNeXt, Wide
        ResNet; torchvision's arguments of the same names). ``basic`` takes only 1 and 64.
      zero_init_residual: start the last BatchNorm scale of every block at zero, so each
        residual branch begins as the identity (Goyal et al. 2017; torchvision's flag).
      drop_path_rate: stochastic depth (timm's name): in training each block's residual
        branch is dropped per example with a probability rising linearly over the blocks
        from 0 to this at the last, the kept ones scaled by ``1 / (1 - p)``; 0 = off.
      dtype: computation dtype; parameters stay float32 and logits are returned as float32.
      axis_name: device axis BatchNorm averages batch statistics over in training.

    How it computes (the stem on 2x2 pixel blocks, the max-pool as fused strided slices, block
    inputs into memory on CPU, the faster CPU convolutions) follows ``layers.Performance``,
    the run's ``performance`` section, not a field: the same parameters and function.
    """

    num_classes: int = 1000
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: Any = "basic"
    groups: int = 1
    width_per_group: int = 64
    zero_init_residual: bool = False
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @classmethod
    def check_fields(cls, fields: dict[str, Any]) -> None:
        if (fields["groups"], fields["width_per_group"]) != (1, 64) and (
                fields["block"] != "bottleneck"):
            raise ValueError("model.groups and model.width_per_group need "
                             "model.block='bottleneck' (a basic block has groups=1, width 64)")

    @nn.compact
    def __call__(self, x, train: bool = False):
        block_cls = BLOCKS[self.block] if isinstance(self.block, str) else self.block
        own = isinstance(block_cls, type) and issubclass(block_cls, _Block)
        extra = {}
        if self.drop_path_rate and not own:
            raise ValueError("drop_path_rate needs a block derived from resnet._Block")
        if (self.groups, self.width_per_group) != (1, 64):  # check_fields: a bottleneck
            extra.update(groups=self.groups, width_per_group=self.width_per_group)
        x = jnp.asarray(x, self.dtype)
        switches = layers.performance()
        if switches.space_to_depth_stem:
            x = layers.SpaceToDepthStem(64, kernel_init=blocks.conv_init, dtype=self.dtype,
                                        name="conv1")(x)
        else:
            x = blocks.conv(64, 7, strides=2, dtype=self.dtype, name="conv1")(x)
        x = blocks.batch_norm(train, axis_name=self.axis_name, dtype=self.dtype, name="bn1")(x)
        x = nn.relu(x)
        pool = layers.max_pool if switches.fused_max_pool else layers.padded_max_pool
        x = pool(x, (3, 3), strides=(2, 2), padding=blocks.pad(1))
        total, done = sum(self.stage_sizes), 0
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                if self.drop_path_rate:
                    extra["drop_path"] = layers.block_drop_rate(self.drop_path_rate, done, total)
                done += 1
                x = block_cls(
                    features=64 * 2**i,
                    strides=2 if i > 0 and j == 0 else 1,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    axis_name=self.axis_name,
                    name=f"layer{i + 1}_{j}",
                    **extra,
                )(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(
            self.num_classes, kernel_init=blocks.dense_kernel_init,
            bias_init=blocks.dense_bias_init(x.shape[-1]),
            dtype=self.dtype, param_dtype=jnp.float32, name="head",
        )(x)
        return x.astype(jnp.float32)


register("resnet18", functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block="basic"))
register("resnet34", functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="basic"))
register("resnet50", functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck"))
register("resnet101", functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block="bottleneck"))
register("resnet152", functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block="bottleneck"))
# ResNeXt (Xie et al. 2017) and Wide ResNet-50/101-2 (Zagoruyko & Komodakis 2016, as
# torchvision builds them: the bottleneck's 3x3 widened), named as torchvision names them.
_BOTTLENECK = {"block": "bottleneck"}
register("resnext50_32x4d", functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), groups=32, width_per_group=4, **_BOTTLENECK))
register("resnext101_32x8d", functools.partial(
    ResNet, stage_sizes=(3, 4, 23, 3), groups=32, width_per_group=8, **_BOTTLENECK))
register("resnext101_64x4d", functools.partial(
    ResNet, stage_sizes=(3, 4, 23, 3), groups=64, width_per_group=4, **_BOTTLENECK))
register("wide_resnet50_2", functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), width_per_group=128, **_BOTTLENECK))
register("wide_resnet101_2", functools.partial(
    ResNet, stage_sizes=(3, 4, 23, 3), width_per_group=128, **_BOTTLENECK))
