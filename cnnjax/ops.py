"""Convolution and pooling from first principles: pad, gather the windows (im2col), reduce.

Everything here is plain ``jax.numpy`` (no ``lax.conv*`` and no ``lax.reduce_window``), so it
differentiates, jits and vmaps like any other array code. Layouts follow Flax/lax:

* images ``x``: NHWC ``[batch, height, width, channels]``;
* kernels ``w``: HWIO ``[kh, kw, in_channels, out_channels]`` (``flax.linen.Conv``'s ``kernel``).

Padding, for every function, is one of ``"VALID"`` (none), ``"SAME"`` (TF/lax: output size
``ceil(size / stride)``, total padding ``max((out - 1) * stride + eff_kernel - size, 0)`` of
which the smaller half, ``total // 2``, goes first), an int (every side), a pair of ints
``(ph, pw)`` (symmetric per spatial dim) or explicit ``((top, bottom), (left, right))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import jax.numpy as jnp
import numpy as np

Pair = int | Sequence[int]
Padding = str | int | Sequence[int] | Sequence[Sequence[int]]


def _positive(value, what: str) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def _pair(value: Pair, what: str) -> tuple[int, int]:
    """An int or a pair of positive ints -> a pair of ints."""
    pair = (value, value) if isinstance(value, Integral) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, Integral) and v >= 1 for v in pair):
        raise ValueError(f"{what} must be a positive int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _dim_pads(size: int, kernel: int, padding, stride: int, dilation: int) -> tuple[int, int]:
    """Padding of one spatial dim: ``padding`` is "VALID", "SAME", an int or a (low, high)."""
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return 0, 0
        if mode == "SAME":
            out = -(-size // stride)
            total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            return total // 2, total - total // 2
        raise ValueError(f"padding must be 'SAME', 'VALID' or ints, got {padding!r}")
    pads = (padding, padding) if isinstance(padding, Integral) else tuple(padding)
    if len(pads) != 2 or not all(isinstance(p, Integral) for p in pads):
        raise ValueError(f"padding of a dim must be an int or a (low, high) pair, got {padding!r}")
    if min(pads) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return int(pads[0]), int(pads[1])


def _pads(shape: Sequence[int], kernel, padding: Padding, stride, dilation):
    """Per-dim (low, high) pads for the two spatial dims of ``shape`` ([H, W])."""
    if isinstance(padding, str | Integral):
        per_dim = (padding, padding)
    else:
        per_dim = tuple(padding)
        if len(per_dim) != 2:
            raise ValueError(
                f"padding must be 'SAME', 'VALID', an int, (ph, pw) or "
                f"((top, bottom), (left, right)), got {padding!r}"
            )
    return tuple(
        _dim_pads(shape[d], kernel[d], per_dim[d], stride[d], dilation[d]) for d in range(2)
    )


def conv_output_size(size: int, kernel: int, padding, stride: int = 1, dilation: int = 1) -> int:
    """Output length of one spatial dim.

    Args:
      size: input length.
      kernel: kernel (or window) length before dilation.
      padding: "VALID", "SAME", an int (both sides) or a (low, high) pair.
      stride, dilation: positive ints.

    Returns ``(size + low + high - ((kernel - 1) * dilation + 1)) // stride + 1``.
    """
    if not isinstance(size, Integral) or size < 0:
        raise ValueError(f"size must be a non-negative int, got {size!r}")
    kernel = _positive(kernel, "kernel")
    stride = _positive(stride, "stride")
    dilation = _positive(dilation, "dilation")
    low, high = _dim_pads(size, kernel, padding, stride, dilation)
    eff = (kernel - 1) * dilation + 1
    if size + low + high < eff:
        raise ValueError(
            f"kernel extent {eff} (kernel {kernel}, dilation {dilation}) is larger than the "
            f"padded input {size + low + high} (size {size}, padding {(low, high)})"
        )
    return (size + low + high - eff) // stride + 1


def _patches(x: jnp.ndarray, window, stride, dilation, padding: Padding, fill):
    """im2col: ``x [N, H, W, C]`` -> ``[N, out_h, out_w, kh * kw, C]`` and the (low, high) pads.

    Pads with ``fill`` and gathers every window position with one strided slice per kernel tap.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC [batch, height, width, channels], got shape {x.shape}")
    pads = _pads(x.shape[1:3], window, padding, stride, dilation)
    out = []
    for d, dim in enumerate(("height", "width")):
        try:
            out.append(conv_output_size(x.shape[1 + d], window[d], pads[d], stride[d], dilation[d]))
        except ValueError as e:
            raise ValueError(f"{dim}: {e}") from None
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=fill)
    taps = []
    for i in range(window[0]):
        for j in range(window[1]):
            h0, w0 = i * dilation[0], j * dilation[1]
            taps.append(xp[:, h0:h0 + (out[0] - 1) * stride[0] + 1:stride[0],
                           w0:w0 + (out[1] - 1) * stride[1] + 1:stride[1], :])
    return jnp.stack(taps, axis=3), pads


def conv2d(x: jnp.ndarray, w: jnp.ndarray, *, stride: Pair = 1, padding: Padding = "VALID",
           dilation: Pair = 1, bias: jnp.ndarray | None = None) -> jnp.ndarray:
    """2-D cross-correlation (what deep learning calls convolution), like ``lax.conv``.

    Args:
      x: ``[N, H, W, C_in]`` images.
      w: ``[kh, kw, C_in, C_out]`` kernel.
      stride, dilation: int or (h, w) pair.
      padding: see the module docstring.
      bias: optional ``[C_out]``.

    Returns ``[N, out_h, out_w, C_out]`` with ``out = conv_output_size(...)`` per dim.
    """
    x, w = jnp.asarray(x), jnp.asarray(w)
    if w.ndim != 4:
        raise ValueError(f"w must be HWIO [kh, kw, in, out], got shape {w.shape}")
    if x.ndim == 4 and x.shape[-1] != w.shape[2]:
        raise ValueError(
            f"channel mismatch: x has {x.shape[-1]} channels (shape {x.shape}) but w expects "
            f"{w.shape[2]} input channels (shape {w.shape})"
        )
    window = _pair(tuple(w.shape[:2]), "kernel size")
    cols, _ = _patches(x, window, _pair(stride, "stride"), _pair(dilation, "dilation"),
                       padding, 0)
    n, oh, ow, taps, c = cols.shape
    y = cols.reshape(n, oh, ow, taps * c) @ w.reshape(taps * c, w.shape[3])
    if bias is not None:
        bias = jnp.asarray(bias)
        if bias.shape != (w.shape[3],):
            raise ValueError(f"bias must have shape ({w.shape[3]},), got {bias.shape}")
        y = y + bias
    return y


def _lowest(dtype) -> float | int:
    return -jnp.inf if jnp.issubdtype(dtype, jnp.inexact) else jnp.iinfo(dtype).min


def max_pool(x: jnp.ndarray, window: Pair, *, stride: Pair | None = None,
             padding: Padding = "VALID") -> jnp.ndarray:
    """Max over each window of ``x [N, H, W, C]`` -> ``[N, out_h, out_w, C]``.

    ``stride`` defaults to ``window``; padding is -inf, so it never wins. The value is taken at
    the (first) argmax, so on ties the gradient goes to one element, as with lax and PyTorch
    (``jnp.max`` would split it evenly between the tied elements).
    """
    x = jnp.asarray(x)
    window = _pair(window, "window")
    stride = window if stride is None else _pair(stride, "stride")
    cols, _ = _patches(x, window, stride, (1, 1), padding, _lowest(x.dtype))
    first = jnp.argmax(cols, axis=3, keepdims=True)
    return jnp.take_along_axis(cols, first, axis=3).squeeze(3)


def avg_pool(x: jnp.ndarray, window: Pair, *, stride: Pair | None = None,
             padding: Padding = "VALID", count_include_pad: bool = True) -> jnp.ndarray:
    """Mean over each window of ``x [N, H, W, C]`` -> ``[N, out_h, out_w, C]``.

    ``stride`` defaults to ``window``. Padding is zeros; ``count_include_pad=True`` divides by
    the full window ``kh * kw``, ``False`` by the number of real (non-padding) elements in each
    window (PyTorch semantics).
    """
    x = jnp.asarray(x)
    window = _pair(window, "window")
    stride = window if stride is None else _pair(stride, "stride")
    cols, pads = _patches(x, window, stride, (1, 1), padding, 0)
    total = cols.sum(axis=3)
    if count_include_pad:
        return total / (window[0] * window[1])
    # Real elements per window factorise over the two dims; shapes are static, so use numpy.
    per_dim = []
    for d in range(2):
        starts = np.arange(total.shape[1 + d])[:, None] * stride[d] - pads[d][0]
        taps = starts + np.arange(window[d])[None, :]
        per_dim.append(((taps >= 0) & (taps < x.shape[1 + d])).sum(axis=1))
    counts = np.outer(*per_dim)[None, :, :, None]
    return total / counts.astype(total.dtype)
