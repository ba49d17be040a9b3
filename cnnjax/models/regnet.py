"""RegNet (Radosavovic et al. 2020) as torchvision builds it: ``regnet_x_400mf`` ..
``regnet_x_32gf`` and ``regnet_y_400mf`` .. ``regnet_y_128gf``.

A 3x3/2 stem to 32 channels; four stages of residual bottlenecks (1x1, grouped 3x3 carrying
the stage's stride 2, for RegNetY a squeeze-and-excitation gate, 1x1; a projection shortcut
where the shape changes; ReLU); global average pooling and the head. The stages' widths and
depths come from the paper's quantised linear rule (``depth``, ``w_0``, ``w_a``, ``w_m``,
``group_width``), computed in float32 as torchvision computes them. BatchNorm: PyTorch's
defaults.

Submodule names follow torchvision's state_dict keys (``stem_0``, ``stem_1``,
``trunk_output/block1/block1-0/f/a_0``, ``.../proj_0``, ``.../f/se/fc1``); ``head`` is ``fc``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cnnjax.models import blocks, layers, register

dense_init = nn.initializers.normal(0.01)  # torchvision's for the classifier, zero bias


def stage_params(depth: int, w_0: int, w_a: float, w_m: float, group_width: int,
                 bottleneck_multiplier: float = 1.0) -> list[tuple[int, int, int]]:
    """``(width, blocks, group width)`` per stage: torchvision's ``BlockParams``, float32
    arithmetic included (it decides some roundings)."""
    f32 = np.float32
    widths_cont = np.arange(depth, dtype=f32) * f32(w_a) + f32(w_0)
    capacity = np.round(np.log(widths_cont / f32(w_0)) / f32(math.log(w_m)))
    widths = (np.round(f32(w_0) * np.power(f32(w_m), capacity) / f32(8)) * 8).astype(int).tolist()
    starts = [i for i, w in enumerate(widths) if i == 0 or w != widths[i - 1]] + [len(widths)]
    stages = []
    for start, end in zip(starts[:-1], starts[1:], strict=True):
        bottleneck = int(widths[start] * bottleneck_multiplier)
        group = min(group_width, bottleneck)
        width = int(blocks.make_divisible(bottleneck, group) / bottleneck_multiplier)
        stages.append((width, end - start, group))
    return stages


class Bottleneck(blocks.ConvNormAct):
    """``f``: 1x1 (``a``), grouped 3x3 (``b``), SE (``se``), 1x1 (``c``); ``proj`` shortcut."""

    features: int = 64
    strides: int = 1
    group_width: int = 8
    bottleneck_multiplier: float = 1.0
    se_ratio: float = 0.0
    drop_path: float = 0.0  # this block's stochastic-depth probability

    @nn.compact
    def __call__(self, x, train: bool = False):
        width = int(round(self.features * self.bottleneck_multiplier))
        shortcut = x
        if x.shape[-1] != self.features or self.strides != 1:
            shortcut = self.conv_bn(x, self.features, 1, train, "proj", strides=self.strides,
                                    act=None)
        out = Transform(
            features=self.features, width=width, strides=self.strides,
            groups=width // self.group_width, squeeze=int(round(self.se_ratio * x.shape[-1])),
            bn_eps=self.bn_eps, bn_momentum=self.bn_momentum, dtype=self.dtype,
            axis_name=self.axis_name, name="f")(x, train)
        return nn.relu(shortcut + layers.stochastic_depth(self, out, self.drop_path, train))


class Transform(blocks.ConvNormAct):
    features: int = 64
    width: int = 64
    strides: int = 1
    groups: int = 1
    squeeze: int = 0  # squeeze-and-excitation width (0: none, RegNetX)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.conv_bn(x, self.width, 1, train, "a", act=nn.relu)
        x = self.conv_bn(x, self.width, 3, train, "b", strides=self.strides, groups=self.groups,
                         act=nn.relu)
        if self.squeeze:
            x = blocks.SqueezeExcitation(self.squeeze, act=nn.relu, gate=nn.sigmoid,
                                         dtype=self.dtype, name="se")(x)
        return self.conv_bn(x, self.features, 1, train, "c", act=None)


class Stage(blocks.ConvNormAct):
    """``blocks`` bottlenecks named ``block<index>-<j>``, the first carrying stride 2;
    ``drop_paths``: their stochastic-depth probabilities (empty: none)."""

    index: int = 1
    features: int = 64
    blocks: int = 1
    group_width: int = 8
    bottleneck_multiplier: float = 1.0
    se_ratio: float = 0.0
    drop_paths: tuple = ()

    @nn.compact
    def __call__(self, x, train: bool = False):
        for j in range(self.blocks):
            x = Bottleneck(features=self.features, strides=2 if j == 0 else 1,
                           group_width=self.group_width,
                           bottleneck_multiplier=self.bottleneck_multiplier,
                           se_ratio=self.se_ratio,
                           drop_path=self.drop_paths[j] if self.drop_paths else 0.0,
                           bn_eps=self.bn_eps, bn_momentum=self.bn_momentum, dtype=self.dtype,
                           axis_name=self.axis_name, name=f"block{self.index}-{j}")(x, train)
        return x


class Trunk(blocks.ConvNormAct):
    stages: tuple = ()
    bottleneck_multiplier: float = 1.0
    se_ratio: float = 0.0
    drop_path_rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        total, done = sum(count for _, count, _ in self.stages), 0
        for i, (width, count, group) in enumerate(self.stages):
            drops = tuple(layers.block_drop_rate(self.drop_path_rate, done + j, total)
                          for j in range(count)) if self.drop_path_rate else ()
            done += count
            x = Stage(index=i + 1, features=width, blocks=count, group_width=group,
                      bottleneck_multiplier=self.bottleneck_multiplier, se_ratio=self.se_ratio,
                      drop_paths=drops,
                      bn_eps=self.bn_eps, bn_momentum=self.bn_momentum, dtype=self.dtype,
                      axis_name=self.axis_name, name=f"block{i + 1}")(x, train)
        return x


class RegNet(blocks.ConvNormAct):
    """RegNet with torchvision's layout, width rule and initialisation.

    Attributes:
      num_classes: number of output logits.
      depth, w_0, w_a, w_m, group_width, bottleneck_multiplier: the design space's
        parameters (torchvision's ``BlockParams.from_init_params``).
      se_ratio: squeeze-and-excitation width as a share of a block's input (0: RegNetX;
        0.25: RegNetY).
      stem_width: the stem's channels.
      drop_path_rate: stochastic depth (timm's name): in training each block's residual
        branch is dropped per example with a probability rising linearly over the blocks
        from 0 to this at the last, the kept ones scaled by ``1 / (1 - p)``; 0 = off.
      dtype: computation dtype; parameters stay float32 and logits are returned as float32.
      axis_name: device axis BatchNorm averages batch statistics over in training.
      bn_eps, bn_momentum: BatchNorm's epsilon and PyTorch-convention momentum.
    """

    num_classes: int = 1000
    depth: int = 16
    w_0: int = 48
    w_a: float = 27.89
    w_m: float = 2.09
    group_width: int = 8
    bottleneck_multiplier: float = 1.0
    se_ratio: float = 0.25
    stem_width: int = 32
    drop_path_rate: float = 0.0

    @classmethod
    def check_fields(cls, fields: dict[str, Any]) -> None:
        if fields["w_a"] < 0 or fields["w_0"] <= 0 or fields["w_m"] <= 1 or fields["w_0"] % 8:
            raise ValueError("RegNet needs model.w_a >= 0, model.w_m > 1 and model.w_0 a "
                             f"positive multiple of 8, got w_a={fields['w_a']}, "
                             f"w_0={fields['w_0']}, w_m={fields['w_m']}")
        for key in ("depth", "group_width", "stem_width"):
            if not (isinstance(fields[key], int) and fields[key] > 0):
                raise ValueError(f"model.{key} of RegNet must be a positive integer, got "
                                 f"{fields[key]!r}")

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, self.dtype)
        x = self.conv_bn(x, self.stem_width, 3, train, "stem", strides=2, act=nn.relu)
        stages = stage_params(self.depth, self.w_0, self.w_a, self.w_m, self.group_width,
                              self.bottleneck_multiplier)
        x = Trunk(stages=tuple(stages), bottleneck_multiplier=self.bottleneck_multiplier,
                  se_ratio=self.se_ratio, drop_path_rate=self.drop_path_rate,
                  bn_eps=self.bn_eps, bn_momentum=self.bn_momentum,
                  dtype=self.dtype, axis_name=self.axis_name, name="trunk_output")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype,
                     param_dtype=jnp.float32, name="head")(x)
        return x.astype(jnp.float32)


# torchvision's models: (depth, w_0, w_a, w_m, group_width); RegNetY adds SE at 0.25.
REGNETS = {
    "regnet_y_400mf": (16, 48, 27.89, 2.09, 8), "regnet_y_800mf": (14, 56, 38.84, 2.4, 16),
    "regnet_y_1_6gf": (27, 48, 20.71, 2.65, 24), "regnet_y_3_2gf": (21, 80, 42.63, 2.66, 24),
    "regnet_y_8gf": (17, 192, 76.82, 2.19, 56), "regnet_y_16gf": (18, 200, 106.23, 2.48, 112),
    "regnet_y_32gf": (20, 232, 115.89, 2.53, 232),
    "regnet_y_128gf": (27, 456, 160.83, 2.52, 264),
    "regnet_x_400mf": (22, 24, 24.48, 2.54, 16), "regnet_x_800mf": (16, 56, 35.73, 2.28, 16),
    "regnet_x_1_6gf": (18, 80, 34.01, 2.25, 24), "regnet_x_3_2gf": (25, 88, 26.31, 2.25, 48),
    "regnet_x_8gf": (23, 80, 49.56, 2.88, 120), "regnet_x_16gf": (22, 216, 55.59, 2.1, 128),
    "regnet_x_32gf": (23, 320, 69.86, 2.0, 168),
}
for _name, (_d, _w0, _wa, _wm, _g) in REGNETS.items():
    register(_name, functools.partial(RegNet, depth=_d, w_0=_w0, w_a=_wa, w_m=_wm,
                                      group_width=_g,
                                      se_ratio=0.25 if _name.startswith("regnet_y") else 0.0))
