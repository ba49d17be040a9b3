"""EfficientNet (Tan & Le 2019) and EfficientNetV2 (Tan & Le 2021) as torchvision builds
them: ``efficientnet_b0`` .. ``_b7``, ``efficientnet_v2_s``, ``_m``, ``_l``.

A 3x3/2 stem, seven stages of MBConv blocks (a 1x1 expansion, a depthwise KxK convolution, a
squeeze-and-excitation gate, a 1x1 projection; SiLU throughout; a residual connection with
stochastic depth when the shapes allow it), a 1x1 convolution to four times the last width,
global average pooling, dropout and the dense head. B1..B7 scale the widths (rounded to
multiples of 8 as torchvision rounds them) and the block counts (rounded up) of B0.
V2 starts with FusedMBConv stages (the expansion and depthwise convolutions fused into one
3x3) and ends with a 1x1 convolution to 1280. BatchNorm: PyTorch's defaults (eps 1e-5,
momentum 0.1), except B5..B7, whose weights came from TensorFlow (eps 1e-3, momentum 0.01),
and V2 (eps 1e-3).

Stochastic depth drops a block's residual branch per example with a probability growing
linearly from 0 to ``stochastic_depth_prob`` (0.2) over the blocks (torchvision's
``StochasticDepth(p, "row")``; the ``"dropout"`` rng in training, the identity in evaluation).

Submodule names follow torchvision's state_dict keys: ``features_0_0``/``features_0_1`` for
the stem's convolution and BatchNorm, ``features_<stage>_<block>/block_<k>_0`` (and
``_1``) for the layers of an MBConv, ``block_<k>/fc1``, ``fc2`` for its squeeze-and-excitation,
and ``head`` for ``classifier.1``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models import blocks, layers, register

# Stages: (fused, expand ratio, kernel, stride, input width, output width, blocks), per
# layout: V1 (B0, scaled for B1..B7) and V2's S, M and L. "Fused" is V2's FusedMBConv.
LAYOUTS = {
    "v1": ((False, 1, 3, 1, 32, 16, 1), (False, 6, 3, 2, 16, 24, 2), (False, 6, 5, 2, 24, 40, 2),
           (False, 6, 3, 2, 40, 80, 3), (False, 6, 5, 1, 80, 112, 3),
           (False, 6, 5, 2, 112, 192, 4), (False, 6, 3, 1, 192, 320, 1)),
    "v2_s": ((True, 1, 3, 1, 24, 24, 2), (True, 4, 3, 2, 24, 48, 4), (True, 4, 3, 2, 48, 64, 4),
             (False, 4, 3, 2, 64, 128, 6), (False, 6, 3, 1, 128, 160, 9),
             (False, 6, 3, 2, 160, 256, 15)),
    "v2_m": ((True, 1, 3, 1, 24, 24, 3), (True, 4, 3, 2, 24, 48, 5), (True, 4, 3, 2, 48, 80, 5),
             (False, 4, 3, 2, 80, 160, 7), (False, 6, 3, 1, 160, 176, 14),
             (False, 6, 3, 2, 176, 304, 18), (False, 6, 3, 1, 304, 512, 5)),
    "v2_l": ((True, 1, 3, 1, 32, 32, 4), (True, 4, 3, 2, 32, 64, 7), (True, 4, 3, 2, 64, 96, 7),
             (False, 4, 3, 2, 96, 192, 10), (False, 6, 3, 1, 192, 224, 19),
             (False, 6, 3, 2, 224, 384, 25), (False, 6, 3, 1, 384, 640, 7)),
}


class MBConv(blocks.ConvNormAct):
    """Inverted residual block with squeeze-and-excitation; ``drop``: stochastic depth."""

    expand: int = 1
    kernel: int = 3
    strides: int = 1
    features: int = 16
    drop: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        width, k = x.shape[-1] * self.expand, 0
        out = x
        if self.expand != 1:
            out = self.conv_bn(out, width, 1, train, "block_0")
            k = 1
        out = self.conv_bn(out, width, self.kernel, train, f"block_{k}", strides=self.strides,
                           groups=width)
        out = blocks.SqueezeExcitation(max(1, x.shape[-1] // 4), dtype=self.dtype,
                                name=f"block_{k + 1}")(out)
        out = self.conv_bn(out, self.features, 1, train, f"block_{k + 2}", act=None)
        if self.strides != 1 or x.shape[-1] != self.features:
            return out
        return x + layers.stochastic_depth(self, out, self.drop, train)


class FusedMBConv(MBConv):
    """EfficientNetV2's early block: the expansion and the depthwise convolution fused into
    one KxK convolution (``block_0``), then the 1x1 projection (``block_1``); no expansion:
    the KxK convolution alone. No squeeze-and-excitation."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        width = x.shape[-1] * self.expand
        if width != x.shape[-1]:
            out = self.conv_bn(x, width, self.kernel, train, "block_0", strides=self.strides)
            out = self.conv_bn(out, self.features, 1, train, "block_1", act=None)
        else:
            out = self.conv_bn(x, self.features, self.kernel, train, "block_0",
                               strides=self.strides)
        if self.strides != 1 or x.shape[-1] != self.features:
            return out
        return x + layers.stochastic_depth(self, out, self.drop, train)


class EfficientNet(blocks.ConvNormAct):
    """EfficientNet with torchvision's layout, rounding and initialisation.

    Attributes:
      num_classes: number of output logits.
      layout: the stages: ``"v1"`` (B0..B7) or ``"v2_s"``, ``"v2_m"``, ``"v2_l"``.
      width_mult, depth_mult: the layout's widths and block counts scaled (B7: 2.0, 3.1).
      last_channel: the width of the last 1x1 convolution (0: four times the last stage's).
      dropout: dropout rate before the head (0.2 for B0 .. 0.5 for B7).
      stochastic_depth_prob: the drop probability reached at the last block.
      bn_eps, bn_momentum: BatchNorm's epsilon and PyTorch-convention momentum.
      dtype: computation dtype; parameters stay float32 and logits are returned as float32.
      axis_name: device axis BatchNorm averages batch statistics over in training.
    """

    num_classes: int = 1000
    layout: str = "v1"
    width_mult: float = 1.0
    depth_mult: float = 1.0
    last_channel: int = 0
    dropout: float = 0.2
    stochastic_depth_prob: float = 0.2

    @classmethod
    def check_fields(cls, fields: dict[str, Any]) -> None:
        if fields["layout"] not in LAYOUTS:
            raise ValueError(f"model.layout of EfficientNet must be one of "
                             f"{', '.join(LAYOUTS)}, got {fields['layout']!r}")
        for key in ("width_mult", "depth_mult"):
            if not fields[key] > 0:
                raise ValueError(f"model.{key} of EfficientNet must be > 0, got {fields[key]}")
        for key in ("dropout", "stochastic_depth_prob", "bn_momentum"):
            if not 0 <= fields[key] < 1:
                raise ValueError(f"model.{key} of EfficientNet must be in [0, 1), got "
                                 f"{fields[key]}")

    def stages(self) -> list[tuple[bool, int, int, int, int, int]]:
        """(fused, expand, kernel, stride, output width, blocks) per stage, scaled."""
        return [(f, e, k, s, blocks.make_divisible(out * self.width_mult),
                 int(math.ceil(n * self.depth_mult)))
                for f, e, k, s, _, out, n in LAYOUTS[self.layout]]

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, self.dtype)
        stem = blocks.make_divisible(LAYOUTS[self.layout][0][4] * self.width_mult)
        x = self.conv_bn(x, stem, 3, train, "features_0", strides=2)
        stages = self.stages()
        total, done = sum(n for *_, n in stages), 0
        for i, (fused, expand, kernel, stride, width, count) in enumerate(stages):
            for j in range(count):
                x = (FusedMBConv if fused else MBConv)(
                    expand=expand, kernel=kernel, strides=stride if j == 0 else 1,
                    features=width, drop=self.stochastic_depth_prob * done / total,
                    bn_eps=self.bn_eps, bn_momentum=self.bn_momentum, dtype=self.dtype,
                    axis_name=self.axis_name, name=f"features_{i + 1}_{j}")(x, train)
                done += 1
        x = self.conv_bn(x, self.last_channel or 4 * x.shape[-1], 1, train,
                         f"features_{len(stages) + 1}")
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train or not self.dropout)(x)
        bound = 1.0 / math.sqrt(self.num_classes)
        x = nn.Dense(self.num_classes, kernel_init=layers.uniform(bound), dtype=self.dtype,
                     param_dtype=jnp.float32, name="head")(x)
        return x.astype(jnp.float32)


_TF_BN = {"bn_eps": 1e-3, "bn_momentum": 0.01}  # B5..B7: weights ported from TensorFlow
for _name, _width, _depth, _dropout, _bn in (
    ("efficientnet_b0", 1.0, 1.0, 0.2, {}), ("efficientnet_b1", 1.0, 1.1, 0.2, {}),
    ("efficientnet_b2", 1.1, 1.2, 0.3, {}), ("efficientnet_b3", 1.2, 1.4, 0.3, {}),
    ("efficientnet_b4", 1.4, 1.8, 0.4, {}), ("efficientnet_b5", 1.6, 2.2, 0.4, _TF_BN),
    ("efficientnet_b6", 1.8, 2.6, 0.5, _TF_BN), ("efficientnet_b7", 2.0, 3.1, 0.5, _TF_BN),
):
    register(_name, functools.partial(EfficientNet, width_mult=_width, depth_mult=_depth,
                                      dropout=_dropout, **_bn))
for _size, _dropout in (("s", 0.2), ("m", 0.3), ("l", 0.4)):  # BatchNorm eps 1e-3
    register(f"efficientnet_v2_{_size}", functools.partial(
        EfficientNet, layout=f"v2_{_size}", last_channel=1280, dropout=_dropout, bn_eps=1e-3))
