"""Faster formulations of standard layers: the same values and gradients, fewer device passes.

* :func:`max_pool` — ``nn.max_pool`` for any window, stride and padding, as an element-wise
  maximum over the window's strided slices, with the gradient sent to each window's first
  maximum (row-major), exactly where ``nn.max_pool``'s select-and-scatter sends it. XLA fuses
  the slices into one pass each way instead of a reduce-window and a scatter (what it gains:
  docs/performance.md).
* :class:`SpaceToDepthStem` — ResNet's 7x7/2 stem convolution (padding 3) computed as a 4x4/1
  convolution over the image's 2x2 blocks (12 channels instead of 3), as MLPerf ResNet
  submissions do: the same function (float rounding aside) with the same ``[7, 7, c, f]``
  kernel parameter, so checkpoints and torchvision weights are unchanged.
* :func:`in_memory` — the identity; on CPU it keeps XLA from fusing BatchNorm/ReLU/residual
  producers into slow transposes for the weight gradients of the convolution that follows
  (nothing on other platforms). What it gains:
  docs/performance.md#cpu-the-digits-cnn-and-cifar-resnet-20.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Pair = tuple[int, int]


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int] | None = None,
             padding: Sequence[Pair] = ((0, 0), (0, 0))) -> jax.Array:
    """``nn.max_pool(x, window, strides, padding)`` for ``[n, h, w, c]`` and explicit pads."""
    strides = tuple(window if strides is None else strides)
    return _slice_max(x, tuple(window), strides, tuple(tuple(p) for p in padding))


def _slices(x, window, strides):
    """The window's ``kh * kw`` strided views of the (already padded) ``x``, row-major."""
    (kh, kw), (sh, sw) = window, strides
    n, h, w, c = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    return [
        lax.slice(x, (0, i, j, 0), (n, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c),
                  (1, sh, sw, 1))
        for i in range(kh) for j in range(kw)
    ]


def _pad(x, padding, value):
    return lax.pad(x, jnp.asarray(value, x.dtype),
                   ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))


def _views_and_max(x, window, strides, padding):
    views = _slices(_pad(x, padding, -jnp.inf), window, strides)
    out = views[0]
    for v in views[1:]:
        out = jnp.maximum(out, v)
    return views, out


@partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _slice_max(x, window, strides, padding):
    return _views_and_max(x, window, strides, padding)[1]


@_slice_max.defjvp
def _slice_max_jvp(window, strides, padding, primals, tangents):
    # The tangent of each window's first maximum: linear in t, so JAX transposes it into a sum
    # of masked, interior-padded output gradients (element-wise, fusible; no scatter).
    (x,), (t,) = primals, tangents
    views, y = _views_and_max(x, window, strides, padding)
    t_views = _slices(_pad(t, padding, 0), window, strides)
    taken = jnp.zeros(y.shape, bool)
    out = jnp.zeros(y.shape, t.dtype)
    for v, tv in zip(views, t_views, strict=True):
        hit = (v == y) & ~taken
        taken = taken | hit
        out = jnp.where(hit, tv, out)
    return y, out


def space_to_depth(x: jax.Array) -> jax.Array:
    """``[n, h, w, c]`` -> ``[n, h/2, w/2, 4c]``, channels ordered (row in block, column, c)."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // 2, w // 2, 4 * c)


def space_to_depth_kernel(kernel: jax.Array) -> jax.Array:
    """A ``[7, 7, c, f]`` stride-2 kernel as the ``[4, 4, 4c, f]`` kernel of its 2x2 blocks.

    With one zero row and column in front, the kernel is 8x8; its tap ``(2a + dy, 2b + dx)``
    multiplies block ``(a, b)``'s pixel ``(dy, dx)``, the order :func:`space_to_depth` uses.
    """
    kh, kw, c, f = kernel.shape
    k = jnp.pad(kernel, ((1, 0), (1, 0), (0, 0), (0, 0)))
    k = k.reshape(4, 2, 4, 2, c, f).transpose(0, 2, 1, 3, 4, 5)
    return k.reshape(4, 4, 4 * c, f)


class SpaceToDepthStem(nn.Module):
    """``nn.Conv(features, (7, 7), strides=2, padding=3, use_bias=False)``, faster on GPU/TPU.

    The parameter is ``nn.Conv``'s (``kernel [7, 7, c, features]``, same initialiser and RNG
    path), so the two are interchangeable under one module name. Images with an odd side fall
    back to the plain convolution.
    """

    features: int
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (7, 7, x.shape[-1], self.features),
                            self.param_dtype)
        x, kernel = jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype)
        numbers = ("NHWC", "HWIO", "NHWC")
        if x.shape[1] % 2 or x.shape[2] % 2:
            return lax.conv_general_dilated(x, kernel, (2, 2), ((3, 3), (3, 3)),
                                            dimension_numbers=numbers)
        # Output row i reads blocks i-2 .. i+1: two blocks of zeros above, one below.
        return lax.conv_general_dilated(space_to_depth(x), space_to_depth_kernel(kernel),
                                        (1, 1), ((2, 1), (2, 1)), dimension_numbers=numbers)


def in_memory(x: jax.Array) -> jax.Array:
    """``x``; on CPU computed into memory first, where every consumer then reads it.

    XLA:CPU fuses element-wise producers (BatchNorm, ReLU, residual additions) into each of
    their consumers, the transposes to batch-minor layout that its weight-gradient
    convolutions need among them, and such a fused transpose runs several times slower than a
    plain one (measured in docs/performance.md#cpu-the-digits-cnn-and-cifar-resnet-20).
    ``lax.optimization_barrier`` does not stop it (XLA:CPU removes barriers before fusing); a
    conditional does: what enters one is computed once, into memory. On other platforms ``x``
    passes through untouched (``lax.platform_dependent`` picks the branch when lowering).
    """
    return lax.platform_dependent(x, cpu=_through_conditional, default=lambda v: v)


def _through_conditional(x: jax.Array) -> jax.Array:
    first = x.reshape(-1)[0]
    # Both branches return x (x * 1 is x, -0.0 and NaN included); they differ so that XLA keeps
    # the conditional, and the predicate reads x so that it is not known before run time.
    return lax.cond(first == first, lambda v: v, lambda v: v * 1, x)


def stochastic_depth(module: nn.Module, branch: jax.Array, rate: float, train: bool) -> jax.Array:
    """torchvision's ``StochasticDepth(rate, "row")`` on a residual branch: in training, each
    example's branch is dropped with probability ``rate`` (``module``'s ``"dropout"`` rng) and
    the kept ones are scaled by ``1 / (1 - rate)``; the identity in evaluation."""
    if not train or not rate:
        return branch
    keep = 1.0 - rate
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep,
                                (branch.shape[0],) + (1,) * (branch.ndim - 1))
    return branch * mask.astype(branch.dtype) / keep


def uniform(bound: float):
    """``U(-bound, bound)``: PyTorch's default Linear init, with ``bound = 1/sqrt(fan_in)``."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def check_halvable(x: jax.Array, model: str, smallest: int) -> None:
    """Raises a ValueError when a 2x2/2 step would leave ``x`` no pixel (a NaN mean later)."""
    if min(x.shape[1:3]) < 2:
        raise ValueError(f"{model} halves a {x.shape[1]}x{x.shape[2]} map to nothing: it needs "
                         f"images of {smallest}x{smallest} or more")
