"""VGG (Simonyan & Zisserman 2015) as torchvision builds it: ``vgg11`` .. ``vgg19``, ``_bn``.

3x3 convolutions (padding 1) with ReLU, optionally BatchNorm, in five stages each closed by a
2x2/2 max-pool; an adaptive average pool to 7x7 (torchvision's ``AdaptiveAvgPool2d((7, 7))``,
so any input of 32x32 or more works, and 224x224 passes through unchanged); then
Dense(4096)-ReLU-Dropout(0.5)-Dense(4096)-ReLU-Dropout(0.5)-Dense(num_classes).

Submodule names follow torchvision's state_dict keys: ``features_<i>`` for ``features.<i>``
(the convolutions and BatchNorms at torchvision's indices in its ``nn.Sequential``),
``classifier_0`` and ``classifier_3``, and ``head`` for the last layer (``classifier.6``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from cnnjax.models import blocks, layers, register

# torchvision's configurations: widths of the 3x3 convolutions, "M" for a 2x2/2 max-pool.
CONFIGS: dict[str, tuple[int | str, ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"),
}
# torchvision initialises VGG's Linear layers with N(0, 0.01) and zero biases.
dense_init = nn.initializers.normal(0.01)


class VGG(nn.Module):
    """VGG with torchvision's layout, initialisation and BatchNorm (eps 1e-5, momentum 0.1).

    Attributes:
      num_classes: number of output logits.
      cfg: one of ``CONFIGS`` (``A``: 11 layers, ``B``: 13, ``D``: 16, ``E``: 19).
      batch_norm: BatchNorm after every convolution (the ``_bn`` models).
      dropout: dropout rate in the classifier (torchvision's 0.5; needs a ``"dropout"`` rng in
        training when non-zero).
      dtype: computation dtype; parameters stay float32 and logits are returned as float32.
      axis_name: device axis BatchNorm averages batch statistics over in training.
    """

    num_classes: int = 1000
    cfg: str = "A"
    batch_norm: bool = False
    dropout: float = 0.5
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @classmethod
    def check_fields(cls, fields: dict[str, Any]) -> None:
        if fields["cfg"] not in CONFIGS:
            raise ValueError(f"model.cfg of VGG must be one of {', '.join(CONFIGS)} (VGG-11, "
                             f"-13, -16, -19), got {fields['cfg']!r}")
        if not 0 <= fields["dropout"] < 1:
            raise ValueError(f"model.dropout of VGG must be in [0, 1), got {fields['dropout']}")

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, self.dtype)
        index = 0  # the position in torchvision's `features` Sequential
        for width in CONFIGS[self.cfg]:
            if width == "M":
                layers.check_halvable(x, "VGG", 32)
                x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
                index += 1
                continue
            x = blocks.conv(width, 3, use_bias=True, dtype=self.dtype,
                            name=f"features_{index}")(x)
            if self.batch_norm:
                x = blocks.batch_norm(train, axis_name=self.axis_name, dtype=self.dtype,
                                      name=f"features_{index + 1}")(x)
            x = nn.relu(x)
            index += 3 if self.batch_norm else 2
        x = adaptive_avg_pool(x, (7, 7))
        # torchvision flattens NCHW (channels, then rows, then columns): so does this, which
        # keeps classifier_0's kernel torchvision's weight, transposed.
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        for name in ("classifier_0", "classifier_3"):
            x = nn.Dense(4096, kernel_init=dense_init, dtype=self.dtype,
                         param_dtype=jnp.float32, name=name)(x)
            x = nn.Dropout(self.dropout, deterministic=not train or not self.dropout)(nn.relu(x))
        x = nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype,
                     param_dtype=jnp.float32, name="head")(x)
        return x.astype(jnp.float32)


def adaptive_avg_pool(x, output_size: Sequence[int]):
    """PyTorch's ``AdaptiveAvgPool2d`` on NHWC: output cell ``i`` of ``n`` averages rows
    ``floor(i * h / n)`` to ``ceil((i + 1) * h / n)`` (overlapping, or repeated, when ``h`` is
    not a multiple of ``n``); likewise for columns."""
    for axis, n in zip((1, 2), output_size, strict=True):
        size = x.shape[axis]
        if size == n:
            continue
        cells = [jnp.mean(lax.slice_in_dim(x, i * size // n, -(-(i + 1) * size // n), axis=axis),
                          axis=axis, keepdims=True) for i in range(n)]
        x = jnp.concatenate(cells, axis=axis)
    return x


for _name, _config in (("vgg11", "A"), ("vgg13", "B"), ("vgg16", "D"), ("vgg19", "E")):
    register(_name, functools.partial(VGG, cfg=_config))
    register(f"{_name}_bn", functools.partial(VGG, cfg=_config, batch_norm=True))
