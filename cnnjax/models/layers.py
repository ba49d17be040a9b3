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

import contextlib
import contextvars
import dataclasses
import functools
import math
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


def padded_max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int],
                    padding: Sequence[Pair]) -> jax.Array:
    """``nn.max_pool(x, window, strides, padding)`` as an explicit ``-inf`` pad and an unpadded
    pool: the same values and gradients, in the form that ONNX converters read (jax2onnx
    0.17.1 gives a padded max-pool the wrong output size)."""
    pads = ((0, 0), *(tuple(p) for p in padding), (0, 0))
    x = jnp.pad(x, pads, constant_values=-jnp.inf)
    return nn.max_pool(x, window_shape=tuple(window), strides=tuple(strides), padding="VALID")


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


def block_drop_rate(rate: float, index: int, total: int) -> float:
    """The drop-path probability of block ``index`` (0-based) of ``total``: rising linearly from
    0 at the first block to ``rate`` at the last, timm's rule (``linspace(0, rate, total)``)."""
    return rate * index / max(total - 1, 1)


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


# --------------------------------------------------------------------------- performance


@dataclasses.dataclass(frozen=True)
class Performance:
    """How the models compute, never what: CPU speed switches with the same parameters and
    the same function (outputs agree to float rounding, checkpoints are interchangeable).

    A run's ``performance`` section (``config.FIELDS``), outside what makes two configs the
    same run: resuming with a switch changed is allowed. Read while a model is traced
    (:func:`performance`), so a jitted function follows the switches in force when it is
    first called; the run, the loaded run and the export each trace inside their own
    :func:`performing` block.

    Attributes:
      conv_impl: ``"auto"``: depthwise, grouped and tiny-output convolutions computed faster
        on CPU (:func:`conv_general_dilated`); ``"xla"``: every convolution ``lax``'s.
      materialize_on_cpu: on CPU, ResNets compute each block convolution's input into memory
        first (:func:`in_memory`; no effect on other platforms);
        docs/performance.md#cpu-the-digits-cnn-and-cifar-resnet-20.
      space_to_depth_stem: ResNet's 7x7/2 stem computed on 2x2 pixel blocks
        (:class:`SpaceToDepthStem`).
      fused_max_pool: ResNet's 3x3/2 max-pool and the CNN's max-pools as fused strided slices
        (:func:`max_pool`); off, ``nn.max_pool`` (the CNN) or a padded pool (ResNet).
    """

    conv_impl: str = "auto"
    materialize_on_cpu: bool = True
    space_to_depth_stem: bool = True
    fused_max_pool: bool = True


# The plainest program, for files other runtimes read (ONNX) and for measuring XLA's own.
PORTABLE = Performance(conv_impl="xla", materialize_on_cpu=False, space_to_depth_stem=False,
                       fused_max_pool=False)
_performance: contextvars.ContextVar[Performance | None] = contextvars.ContextVar(
    "performance", default=None)


def performance() -> Performance:
    """The switches in force (the defaults outside any :func:`performing` block)."""
    return _performance.get() or Performance()


@contextlib.contextmanager
def performing(switches: Performance | Any):
    """Within the block, models trace with ``switches`` (a ``Performance``, or a mapping of
    its fields: a config's ``performance`` section)."""
    if not isinstance(switches, Performance):
        switches = Performance(**dict(switches))
    if switches.conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {', '.join(CONV_IMPLS)}, "
                         f"got {switches.conv_impl!r}")
    token = _performance.set(switches)
    try:
        yield switches
    finally:
        _performance.reset(token)


def under(switches: Performance | Any, fn: Any) -> Any:
    """``fn`` computing with ``switches`` whatever is in force where it is called: for a
    function handed to ``jax.jit``, whose trace is cached with the switches it saw."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with performing(switches):
            return fn(*args, **kwargs)

    return wrapped


def materialized(conv: Any) -> Any:
    """``conv`` whose input is computed into memory first on CPU when
    ``performance().materialize_on_cpu`` (:func:`in_memory`); else ``conv`` itself."""
    return (lambda x: conv(in_memory(x))) if performance().materialize_on_cpu else conv


# --------------------------------------------------------------------------- convolutions
#
# XLA:CPU is far from the machine's speed on three kinds of convolution the zoo has (figures
# in docs/performance.md#convolutions-on-cpu): depthwise convolutions and their gradients;
# the kernel gradient of a grouped convolution (many times its forward pass); and dense KxK
# convolutions whose output is 2x2 or smaller (ResNet's last stage at 64x64 images), many
# times slower than the same products as one matrix multiplication. :func:`conv_general_dilated`
# computes those three kinds another way, with the same values and gradients (float rounding
# aside), on CPU only; every other convolution, and every convolution on other platforms, is
# ``lax``'s.

_NHWC = ("NHWC", "HWIO", "NHWC")
CONV_IMPLS = ("auto", "xla")  # ``Performance.conv_impl``: the formulations below, or lax's only

# A stride-1 depthwise kernel gradient with this many (tap, output pixel) pairs or more is left
# to XLA, whose own is the faster there (3x3 over 16x16 and up, 7x7 over 8x8 and up).
_DEPTHWISE_XLA_DW_PRODUCTS = 9 * 16 * 16
# Grouped kernel gradients with fewer input channels per group than this are computed as the
# kernel gradient of the equivalent dense (block-diagonal) convolution; with more, per tap.
_GROUPED_DENSE_DW_WIDTH = 8
# Dense convolutions with this many output pixels or fewer are one matrix product over patches.
_IM2COL_MAX_PIXELS = 4


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """``lax.conv_general_dilated``, as ``nn.Conv(conv_general_dilated=...)`` calls it, with
    depthwise, grouped and tiny-output convolutions computed faster on CPU (see above)."""

    def plain(x, w):
        return lax.conv_general_dilated(
            x, w, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)

    fast = None
    if (performance().conv_impl == "auto" and lhs.ndim == 4 and batch_group_count == 1
            and preferred_element_type is None and lhs.dtype == rhs.dtype == jnp.float32
            and all(d == 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
            and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)):
        strides = tuple(window_strides)
        pads = tuple(tuple(p) for p in (
            lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
            if isinstance(padding, str) else padding))
        fast = conv_formulation(lhs.shape, rhs.shape, strides, pads, feature_group_count)
    if fast is None:
        return plain(lhs, rhs)
    return lax.platform_dependent(lhs, rhs, cpu=fast, default=plain)


def conv_formulation(x_shape, w_shape, strides, pads, groups):
    """The CPU formulation :func:`conv_general_dilated` uses for an NHWC/HWIO float32
    convolution, as a function of ``(x, w)``; None where XLA's own is the faster."""
    kh, kw, cg, cout = w_shape
    cin = x_shape[3]
    out_pixels = math.prod((x_shape[1 + i] + sum(pads[i]) - w_shape[i]) // strides[i] + 1
                           for i in range(2))
    if groups == cin and cg == 1 and cout == cin:
        xla_dw = strides == (1, 1) and kh * kw * out_pixels >= _DEPTHWISE_XLA_DW_PRODUCTS
        return partial(_depthwise, strides=strides, pads=pads, xla_dw=xla_dw)
    if groups > 1:
        return partial(_grouped, strides=strides, pads=pads, groups=groups)
    if kh * kw > 1 and out_pixels <= _IM2COL_MAX_PIXELS:
        return partial(_im2col, strides=strides, pads=pads)
    return None


def _lax_conv(x, w, strides, pads, groups=1):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                    feature_group_count=groups)


def _taps(x, kernel, strides, pads):
    """The ``kh * kw`` strided views of the zero-padded ``x`` that each kernel tap multiplies,
    row-major: view ``(a, b)`` is ``x_padded[:, a + s_h * i, b + s_w * j, :]``."""
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    oh = (h + sum(pads[0]) - kernel[0]) // strides[0] + 1
    ow = (w + sum(pads[1]) - kernel[1]) // strides[1] + 1
    return [lax.slice(xp, (0, a, b, 0), (n, a + (oh - 1) * strides[0] + 1,
                                         b + (ow - 1) * strides[1] + 1, c), (1, *strides, 1))
            for a in range(kernel[0]) for b in range(kernel[1])]


def _depthwise_taps(x, w, strides, pads):
    """A depthwise convolution as ``kh * kw`` element-wise multiply-adds of shifted views:
    XLA fuses them into one pass (XLA:CPU's own runs at ~1 GFLOP/s)."""
    weights = w.reshape(-1, w.shape[-1])
    out = None
    for t, view in enumerate(_taps(x, w.shape[:2], strides, pads)):
        term = view * weights[t]
        out = term if out is None else out + term
    return out


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise(x, w, strides, pads, xla_dw):
    return _depthwise_taps(x, w, strides, pads)


def _depthwise_fwd(x, w, strides, pads, xla_dw):
    return _depthwise_taps(x, w, strides, pads), (x, w)


def _depthwise_bwd(strides, pads, xla_dw, residuals, g):
    x, w = residuals
    dx = jax.vjp(lambda a: _depthwise_taps(a, w, strides, pads), x)[1](g)[0]
    if xla_dw:
        dw = jax.vjp(lambda b: _lax_conv(x, b, strides, pads, x.shape[3]), w)[1](g)[0]
    else:
        dw = jax.vjp(lambda b: _depthwise_taps(x, b, strides, pads), w)[1](g)[0]
    return dx, dw


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _grouped(x, w, strides, pads, groups):
    return _lax_conv(x, w, strides, pads, groups)


def _grouped_fwd(x, w, strides, pads, groups):
    return _lax_conv(x, w, strides, pads, groups), (x, w)


def _grouped_bwd(strides, pads, groups, residuals, g):
    # XLA's forward pass and input gradient; the kernel gradient another way.
    x, w = residuals
    dx = jax.vjp(lambda a: _lax_conv(a, w, strides, pads, groups), x)[1](g)[0]
    kh, kw, cg, cout = w.shape
    co = cout // groups
    if cg < _GROUPED_DENSE_DW_WIDTH:
        # The kernel gradient of the dense convolution, whose block diagonal is this one's.
        dense = jnp.zeros((kh, kw, cg * groups, cout), w.dtype)
        full = jax.vjp(lambda b: _lax_conv(x, b, strides, pads), dense)[1](g)[0]
        full = full.reshape(kh, kw, groups, cg, groups, co)
        dw = jnp.diagonal(full, axis1=2, axis2=4)  # [kh, kw, cg, co, groups]
        dw = dw.transpose(0, 1, 2, 4, 3).reshape(w.shape)
    else:
        # Per tap, one product per group over every output pixel: [cg, npix] @ [npix, co].
        gg = g.reshape(*g.shape[:3], groups, co)
        dw = jnp.stack([
            jnp.einsum("nhwgc,nhwgo->cgo", v.reshape(*v.shape[:3], groups, cg), gg)
            for v in _taps(x, (kh, kw), strides, pads)]).reshape(w.shape)
    return dx, dw


_grouped.defvjp(_grouped_fwd, _grouped_bwd)


def _im2col(x, w, strides, pads):
    """A dense convolution as one matrix product over its patches (tap-major channels, the
    order of ``w.reshape(kh * kw * cin, cout)``)."""
    patches = jnp.concatenate(_taps(x, w.shape[:2], strides, pads), axis=-1)
    return jnp.dot(patches, w.reshape(-1, w.shape[-1]))
