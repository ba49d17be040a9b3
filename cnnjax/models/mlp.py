"""The fully connected baseline: flatten the image, then dense layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models import register


@register("mlp")
class MLP(nn.Module):
    """Flatten -> [Dense -> activation] * len(hidden) -> Dense(num_classes).

    Attributes:
      num_classes: number of output logits.
      hidden: widths of the hidden layers.
      activation: name of a ``flax.linen`` activation (``relu``, ``gelu``, ``tanh``, ...).
      dropout: dropout rate after each hidden layer (0 disables it).
      dtype: computation dtype; parameters stay float32 and logits are returned as float32.
    """

    num_classes: int = 10
    hidden: Sequence[int] = (256, 128)
    activation: str = "relu"
    dropout: float = 0.0
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        act = getattr(nn, self.activation)
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        for width in self.hidden:
            x = act(nn.Dense(width, dtype=self.dtype)(x))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
