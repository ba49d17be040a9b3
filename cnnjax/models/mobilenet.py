"""MobileNetV2 (Sandler et al. 2018) and MobileNetV3 (Howard et al. 2019) as torchvision
builds them: ``mobilenet_v2``, ``mobilenet_v3_small``, ``mobilenet_v3_large``.

V2: a 3x3/2 stem, inverted residual blocks (1x1 expansion, 3x3 depthwise, linear 1x1
projection; ReLU6), a 1x1 convolution to 1280 channels, dropout 0.2 and the head; BatchNorm
with PyTorch's defaults. V3: the blocks of the paper's tables (3x3 or 5x5 depthwise, ReLU or
hard swish, squeeze-and-excitation with a hard-sigmoid gate where the table says so), a 1x1
convolution to six times the last width, global pooling, a dense layer with hard swish,
dropout 0.2 and the head; BatchNorm eps 1e-3, momentum 0.01. Widths are rounded to multiples
of 8 as torchvision rounds them (``width_mult`` scales them).

Submodule names follow torchvision's state_dict keys (``features_<i>/conv_<k>_0`` for V2,
``features_<i>/block_<k>_0`` for V3, ``classifier_0`` for V3's first dense layer); ``head`` is
``classifier.1`` (V2) or ``classifier.3`` (V3).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models import blocks, register

# torchvision initialises the Linear layers of both with N(0, 0.01), zero biases.
dense_init = nn.initializers.normal(0.01)

# V2: (expansion t, width c, blocks n, stride s) per stage.
V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))
# V3: (kernel, expanded width, output width, squeeze-and-excitation, hard swish, stride).
V3_BLOCKS = {
    "large": ((3, 16, 16, False, False, 1), (3, 64, 24, False, False, 2),
              (3, 72, 24, False, False, 1), (5, 72, 40, True, False, 2),
              (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
              (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1),
              (3, 184, 80, False, True, 1), (3, 184, 80, False, True, 1),
              (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
              (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1),
              (5, 960, 160, True, True, 1)),
    "small": ((3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2),
              (3, 88, 24, False, False, 1), (5, 96, 40, True, True, 2),
              (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
              (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1),
              (5, 288, 96, True, True, 2), (5, 576, 96, True, True, 1),
              (5, 576, 96, True, True, 1)),
}
V3_LAST = {"large": 1280, "small": 1024}


def _check(fields: dict[str, Any], family: str) -> None:
    if not fields["width_mult"] > 0:
        raise ValueError(f"model.width_mult of {family} must be > 0, got {fields['width_mult']}")
    if not 0 <= fields["dropout"] < 1:
        raise ValueError(f"model.dropout of {family} must be in [0, 1), got {fields['dropout']}")


class MobileNetV2(blocks.ConvNormAct):
    """MobileNetV2 with torchvision's layout, rounding and initialisation.

    Attributes:
      num_classes: number of output logits.
      width_mult: every width scaled (the last one never below 1280).
      dropout: dropout rate before the head.
      dtype, axis_name, bn_eps, bn_momentum: as for EfficientNet.
    """

    num_classes: int = 1000
    width_mult: float = 1.0
    dropout: float = 0.2

    @classmethod
    def check_fields(cls, fields: dict[str, Any]) -> None:
        _check(fields, "MobileNetV2")

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, self.dtype)
        x = self.conv_bn(x, blocks.make_divisible(32 * self.width_mult), 3, train, "features_0",
                         strides=2, act=nn.relu6)
        index = 1
        for t, c, n, s in V2_STAGES:
            width = blocks.make_divisible(c * self.width_mult)
            for j in range(n):
                x = InvertedResidualV2(expand=t, features=width, strides=s if j == 0 else 1,
                                       bn_eps=self.bn_eps, bn_momentum=self.bn_momentum,
                                       dtype=self.dtype, axis_name=self.axis_name,
                                       name=f"features_{index}")(x, train)
                index += 1
        x = self.conv_bn(x, blocks.make_divisible(1280 * max(1.0, self.width_mult)), 1, train,
                         f"features_{index}", act=nn.relu6)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train or not self.dropout)(x)
        x = nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype,
                     param_dtype=jnp.float32, name="head")(x)
        return x.astype(jnp.float32)


class InvertedResidualV2(blocks.ConvNormAct):
    expand: int = 1
    features: int = 16
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        width, k, out = int(round(x.shape[-1] * self.expand)), 0, x
        if self.expand != 1:
            out = self.conv_bn(out, width, 1, train, "conv_0", act=nn.relu6)
            k = 1
        out = self.conv_bn(out, width, 3, train, f"conv_{k}", strides=self.strides,
                           groups=width, act=nn.relu6)
        # The projection is a bare conv and BatchNorm: conv_<k+1>, conv_<k+2> in torchvision.
        out = blocks.conv(self.features, 1, dtype=self.dtype, name=f"conv_{k + 1}")(out)
        out = self.norm(out, train, f"conv_{k + 2}")
        residual = self.strides == 1 and x.shape[-1] == self.features
        return x + out if residual else out


class MobileNetV3(blocks.ConvNormAct):
    """MobileNetV3 with torchvision's layout, rounding, BatchNorm and initialisation.

    Attributes:
      num_classes: number of output logits.
      size: ``"large"`` or ``"small"`` (the paper's two tables).
      width_mult: every width scaled.
      dropout: dropout rate before the head.
      dtype, axis_name, bn_eps, bn_momentum: as for EfficientNet.
    """

    num_classes: int = 1000
    size: str = "large"
    width_mult: float = 1.0
    dropout: float = 0.2
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01

    @classmethod
    def check_fields(cls, fields: dict[str, Any]) -> None:
        _check(fields, "MobileNetV3")
        if fields["size"] not in V3_BLOCKS:
            raise ValueError(f"model.size of MobileNetV3 must be 'large' or 'small', got "
                             f"{fields['size']!r}")

    @nn.compact
    def __call__(self, x, train: bool = False):
        scaled = lambda c: blocks.make_divisible(c * self.width_mult)  # noqa: E731
        table = V3_BLOCKS[self.size]
        x = jnp.asarray(x, self.dtype)
        x = self.conv_bn(x, scaled(16), 3, train, "features_0", strides=2, act=nn.hard_swish)
        for i, (kernel, expanded, out, se, hs, stride) in enumerate(table):
            x = InvertedResidualV3(kernel=kernel, expanded=scaled(expanded),
                                   features=scaled(out), se=se, hard_swish=hs, strides=stride,
                                   bn_eps=self.bn_eps, bn_momentum=self.bn_momentum,
                                   dtype=self.dtype, axis_name=self.axis_name,
                                   name=f"features_{i + 1}")(x, train)
        x = self.conv_bn(x, 6 * x.shape[-1], 1, train, f"features_{len(table) + 1}",
                         act=nn.hard_swish)
        x = jnp.mean(x, axis=(1, 2))
        dense = functools.partial(nn.Dense, kernel_init=dense_init, dtype=self.dtype,
                                  param_dtype=jnp.float32)
        x = nn.hard_swish(dense(scaled(V3_LAST[self.size]), name="classifier_0")(x))
        x = nn.Dropout(self.dropout, deterministic=not train or not self.dropout)(x)
        x = dense(self.num_classes, name="head")(x)
        return x.astype(jnp.float32)


class InvertedResidualV3(blocks.ConvNormAct):
    kernel: int = 3
    expanded: int = 16
    features: int = 16
    se: bool = False
    hard_swish: bool = False
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        act = nn.hard_swish if self.hard_swish else nn.relu
        k, out = 0, x
        if self.expanded != x.shape[-1]:
            out = self.conv_bn(out, self.expanded, 1, train, "block_0", act=act)
            k = 1
        out = self.conv_bn(out, self.expanded, self.kernel, train, f"block_{k}",
                           strides=self.strides, groups=self.expanded, act=act)
        if self.se:
            k += 1
            out = blocks.SqueezeExcitation(blocks.make_divisible(self.expanded // 4), act=nn.relu,
                                           gate=nn.hard_sigmoid, dtype=self.dtype,
                                           name=f"block_{k}")(out)
        out = self.conv_bn(out, self.features, 1, train, f"block_{k + 1}", act=None)
        residual = self.strides == 1 and x.shape[-1] == self.features
        return x + out if residual else out


register("mobilenet_v2", MobileNetV2)
register("mobilenet_v3_large", functools.partial(MobileNetV3, size="large"))
register("mobilenet_v3_small", functools.partial(MobileNetV3, size="small"))
