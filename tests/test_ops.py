"""cnnjax.ops against lax (conv_general_dilated, reduce_window) and PyTorch, element by element."""

from __future__ import annotations

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax import lax

from cnnjax import ops

ATOL = RTOL = 1e-5
DN = ("NHWC", "HWIO", "NHWC")

PADDINGS = ["VALID", "SAME", 1, 2, (1, 2), ((0, 2), (1, 0)), ((2, 1), (0, 3))]
STRIDES = [1, 2, (1, 3)]
DILATIONS = [1, 2, (2, 1)]
# (batch, height, width, kh, kw, in_channels, out_channels)
CONV_SHAPES = [
    (2, 7, 7, 3, 3, 1, 1),
    (1, 8, 6, 2, 3, 3, 4),
    (2, 6, 9, 1, 1, 2, 5),
    (1, 9, 8, 4, 2, 4, 2),
]


def _as_pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _lax_padding(padding):
    """The test's own translation of the ops padding spec into lax's form."""
    if isinstance(padding, str):
        return padding
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    if isinstance(padding[0], int):
        return tuple((p, p) for p in padding)
    return tuple(tuple(p) for p in padding)


def _dim_padding(padding, d):
    """The per-dim spec conv_output_size takes: a string, an int or a (low, high) pair."""
    if isinstance(padding, str | int):
        return padding
    return padding[d]


def _torch_padding(padding, stride):
    """padding as torch can express it, or None where it cannot."""
    if padding == "VALID":
        return "valid"
    if padding == "SAME":
        return "same" if _as_pair(stride) == (1, 1) else None  # torch: no strided 'same'
    if isinstance(padding, int):
        return padding
    if isinstance(padding[0], int):
        return tuple(padding)
    return None  # per-side asymmetric padding needs an explicit F.pad in torch


def _randn(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x), (0, 3, 1, 2))))


def _nhwc(t):
    return np.transpose(t.numpy(), (0, 2, 3, 1))


def _lax_conv(x, w, stride, padding, dilation):
    return lax.conv_general_dilated(x, w, _as_pair(stride), _lax_padding(padding),
                                    rhs_dilation=_as_pair(dilation), dimension_numbers=DN)


# Every padding x stride x dilation combination, each on one of the shapes in turn.
CONV_CASES = [
    (CONV_SHAPES[i % len(CONV_SHAPES)], *combo)
    for i, combo in enumerate(itertools.product(PADDINGS, STRIDES, DILATIONS))
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's F.pad note
@pytest.mark.parametrize("shape,padding,stride,dilation", CONV_CASES, ids=str)
def test_conv2d_matches_lax_and_torch(shape, padding, stride, dilation):
    n, h, w_, kh, kw, cin, cout = shape
    x, w, b = _randn(0, (n, h, w_, cin)), _randn(1, (kh, kw, cin, cout)), _randn(2, (cout,))

    # One compile for both; the bias-free path is covered by the tests below.
    out, ref = jax.jit(lambda x, w, b: (
        ops.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, bias=b),
        _lax_conv(x, w, stride, padding, dilation) + b,
    ))(x, w, b)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)

    kernel, strides, dils = (kh, kw), _as_pair(stride), _as_pair(dilation)
    expected = tuple(
        ops.conv_output_size((h, w_)[d], kernel[d], _dim_padding(padding, d), strides[d], dils[d])
        for d in range(2)
    )
    assert expected == ref.shape[1:3]

    tpad = _torch_padding(padding, stride)
    if tpad is not None:
        w_oihw = torch.from_numpy(np.ascontiguousarray(np.transpose(w, (3, 2, 0, 1))))
        t = F.conv2d(_nchw(x), w_oihw, torch.from_numpy(b), stride=strides, padding=tpad,
                     dilation=dils)
        np.testing.assert_allclose(out, _nhwc(t), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("size,kernel,stride,dilation", [
    (1, 3, 1, 1), (2, 3, 2, 2), (3, 5, 1, 1), (5, 4, 3, 2), (4, 1, 5, 1),
])
def test_same_padding_covers_kernels_larger_than_input(size, kernel, stride, dilation):
    x, w = _randn(3, (1, size, size, 2)), _randn(4, (kernel, kernel, 2, 3))
    ref = _lax_conv(x, w, stride, "SAME", dilation)
    out = ops.conv2d(x, w, stride=stride, padding="SAME", dilation=dilation)
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
    assert ops.conv_output_size(size, kernel, "SAME", stride, dilation) == ref.shape[1]
    assert ref.shape[1] == -(-size // stride)


def test_conv2d_jits_and_accepts_lowercase_and_sequences():
    x, w = _randn(5, (2, 6, 6, 3)), _randn(6, (3, 3, 3, 2))
    f = jax.jit(lambda x, w: ops.conv2d(x, w, stride=[2, 1], padding="same", dilation=[1, 2]))
    ref = _lax_conv(x, w, (2, 1), "SAME", (1, 2))
    np.testing.assert_allclose(f(x, w), ref, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(ops.conv2d(x, w, padding=np.int64(1)),
                               _lax_conv(x, w, 1, 1, 1), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("stride,padding,dilation", [
    (1, "VALID", 1), (2, "SAME", 1), ((1, 2), ((0, 2), (1, 0)), 2), (2, 1, (2, 1)),
])
def test_conv2d_gradients_match_lax(stride, padding, dilation):
    x, w = _randn(7, (2, 7, 6, 3)), _randn(8, (3, 2, 3, 4))
    ct = _randn(9, _lax_conv(x, w, stride, padding, dilation).shape)

    def loss(f):
        return lambda x, w: jnp.sum(f(x, w) * ct)

    ours = jax.jit(jax.grad(loss(lambda x, w: ops.conv2d(
        x, w, stride=stride, padding=padding, dilation=dilation)), argnums=(0, 1)))(x, w)
    refs = jax.jit(jax.grad(loss(lambda x, w: _lax_conv(x, w, stride, padding, dilation)),
                            argnums=(0, 1)))(x, w)
    for got, want in zip(ours, refs, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


# ---- pooling ------------------------------------------------------------------------------

POOL_PADDINGS = ["VALID", "SAME", 1, (1, 0), ((0, 1), (1, 0)), ((2, 0), (0, 1))]


def _reduce_window(x, init, op, window, stride, padding):
    pad = _lax_padding(padding)
    if not isinstance(pad, str):
        pad = ((0, 0), *pad, (0, 0))
    return lax.reduce_window(x, init, op, (1, *window, 1), (1, *stride, 1), pad)


def _torch_pool_padding(padding, window):
    """Symmetric pads torch's pooling accepts (pad <= window / 2), or None."""
    if padding == "VALID":
        return (0, 0)
    if isinstance(padding, str) or not isinstance(_as_pair(padding)[0], int):
        return None
    pads = _as_pair(padding)
    return pads if all(2 * p <= k for p, k in zip(pads, window, strict=True)) else None


@pytest.mark.parametrize("window", [2, 3, (2, 3)], ids=str)
@pytest.mark.parametrize("stride", [None, (2, 1)], ids=str)  # (2, 1): overlapping in W
@pytest.mark.parametrize("padding", POOL_PADDINGS, ids=str)
def test_pooling_matches_lax_and_torch(window, stride, padding):
    x = _randn(10, (2, 7, 6, 3))
    win = _as_pair(window)
    strides = win if stride is None else _as_pair(stride)

    def ours(x):
        kw = dict(stride=stride, padding=padding)
        return (ops.max_pool(x, window, **kw), ops.avg_pool(x, window, **kw),
                ops.avg_pool(x, window, count_include_pad=False, **kw))

    def reference(x):
        sums = _reduce_window(x, 0.0, lax.add, win, strides, padding)
        counts = _reduce_window(jnp.ones_like(x), 0.0, lax.add, win, strides, padding)
        return (_reduce_window(x, -jnp.inf, lax.max, win, strides, padding),
                sums / (win[0] * win[1]), sums / counts)

    outs, refs = jax.jit(lambda x: (ours(x), reference(x)))(x)
    for out, ref in zip(outs, refs, strict=True):
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
    expected = tuple(ops.conv_output_size(x.shape[1 + d], win[d], _dim_padding(padding, d),
                                          strides[d]) for d in range(2))
    assert expected == refs[0].shape[1:3]

    tpad = _torch_pool_padding(padding, win)
    if tpad is not None:
        t = _nchw(x)
        torch_outs = (F.max_pool2d(t, win, strides, tpad),
                      F.avg_pool2d(t, win, strides, tpad, count_include_pad=True),
                      F.avg_pool2d(t, win, strides, tpad, count_include_pad=False))
        for out, t_out in zip(outs, torch_outs, strict=True):
            np.testing.assert_allclose(out, _nhwc(t_out), atol=ATOL, rtol=RTOL)


def test_max_pool_negative_inputs_never_see_padding():
    x = -1.0 - np.abs(_randn(11, (1, 4, 4, 2)))  # all < 0: a zero pad would win
    out = ops.max_pool(x, 3, stride=1, padding=1)
    assert np.all(np.asarray(out) < 0)
    np.testing.assert_allclose(out, _nhwc(F.max_pool2d(_nchw(x), 3, 1, 1)), atol=ATOL)


def test_max_pool_integer_inputs_pad_with_the_dtype_minimum():
    x = np.random.default_rng(12).integers(-100, -1, (1, 5, 5, 1)).astype(np.int32)
    out = ops.max_pool(x, 2, padding="SAME")
    ref = _reduce_window(x, np.int32(np.iinfo(np.int32).min), lax.max, (2, 2), (2, 2), "SAME")
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(out, ref)


def test_max_pool_gradient_on_ties_goes_to_one_element_like_lax_and_torch():
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, 2:, 2:, 0] = 1.0  # every window is one constant value
    ours = jax.grad(lambda x: ops.max_pool(x, 2).sum())(x)
    ref = jax.grad(lambda x: _reduce_window(x, -jnp.inf, lax.max, (2, 2), (2, 2), "VALID").sum())
    np.testing.assert_array_equal(ours, ref(x))
    t = _nchw(x).requires_grad_()
    F.max_pool2d(t, 2).sum().backward()
    np.testing.assert_array_equal(ours, _nhwc(t.grad))
    assert np.asarray(ours).sum() == 4


def test_pooling_gradients_match_lax():
    x = _randn(13, (2, 6, 5, 2))
    ct = _randn(14, (2, 3, 3, 2))

    def ours(x):
        pool = partial(ops.avg_pool, stride=2, padding="SAME", count_include_pad=False)
        return ops.max_pool(x, 3, stride=2, padding="SAME"), pool(x, 3)

    def reference(x):
        sums = _reduce_window(x, 0.0, lax.add, (3, 3), (2, 2), "SAME")
        counts = _reduce_window(jnp.ones_like(x), 0.0, lax.add, (3, 3), (2, 2), "SAME")
        return _reduce_window(x, -jnp.inf, lax.max, (3, 3), (2, 2), "SAME"), sums / counts

    for i in range(2):
        got, want = (jax.jit(jax.grad(lambda x, f=f, i=i: jnp.sum(f(x)[i] * ct)))(x)
                     for f in (ours, reference))
        np.testing.assert_allclose(got, want, atol=ATOL)


# ---- conv_output_size and errors -----------------------------------------------------------

@pytest.mark.parametrize("size,kernel,padding,stride,dilation", list(itertools.product(
    [1, 4, 7, 10], [1, 2, 3], ["VALID", "SAME", 1, (0, 2)], [1, 2, 3], [1, 3])))
def test_conv_output_size_matches_lax_shapes(size, kernel, padding, stride, dilation):
    eff = (kernel - 1) * dilation + 1
    pads = _as_pair(padding) if not isinstance(padding, str) else (0, 0)
    if padding != "SAME" and size + sum(pads) < eff:
        with pytest.raises(ValueError, match="larger than the padded input"):
            ops.conv_output_size(size, kernel, padding, stride, dilation)
        return
    lax_pad = padding if isinstance(padding, str) else (pads, (0, 0))
    shape = jax.eval_shape(
        lambda x, w: lax.conv_general_dilated(x, w, (stride, 1), lax_pad,
                                              rhs_dilation=(dilation, 1), dimension_numbers=DN),
        jax.ShapeDtypeStruct((1, size, 1, 1), jnp.float32),
        jax.ShapeDtypeStruct((kernel, 1, 1, 1), jnp.float32),
    ).shape
    assert ops.conv_output_size(size, kernel, padding, stride, dilation) == shape[1]


@pytest.mark.parametrize("call,message", [
    (lambda: ops.conv2d(np.ones((1, 3, 3, 2)), np.ones((5, 1, 2, 1))),
     r"height: kernel extent 5 .* larger than the padded input 3"),
    (lambda: ops.conv2d(np.ones((1, 3, 3, 2)), np.ones((2, 2, 2, 1)), dilation=3),
     r"kernel extent 4 \(kernel 2, dilation 3\) is larger than the padded input 3"),
    (lambda: ops.conv2d(np.ones((1, 4, 3, 2)), np.ones((3, 6, 2, 1)), padding=(0, 1)),
     r"width: kernel extent 6 .* padded input 5 \(size 3, padding \(1, 1\)\)"),
    (lambda: ops.conv2d(np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 1)), padding=-1),
     r"padding must be non-negative, got -1"),
    (lambda: ops.conv2d(np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 1)), padding=((1, -1), (0, 0))),
     r"padding must be non-negative, got \(1, -1\)"),
    (lambda: ops.conv2d(np.ones((1, 4, 4, 3)), np.ones((3, 3, 2, 1))),
     r"channel mismatch: x has 3 channels .* w expects 2 input channels"),
    (lambda: ops.conv2d(np.ones((4, 4, 2)), np.ones((3, 3, 2, 1))), r"x must be NHWC"),
    (lambda: ops.conv2d(np.ones((1, 4, 4, 2)), np.ones((3, 3, 2))), r"w must be HWIO"),
    (lambda: ops.conv2d(np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 1)), padding="FULL"),
     r"padding must be 'SAME', 'VALID' or ints, got 'FULL'"),
    (lambda: ops.conv2d(np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 1)), padding=(1, 1, 1)),
     r"padding must be .*got \(1, 1, 1\)"),
    (lambda: ops.conv2d(np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 1)), stride=0),
     r"stride must be a positive int or a pair of them, got 0"),
    (lambda: ops.conv2d(np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 1)), dilation=(1, 2, 3)),
     r"dilation must be a positive int or a pair of them, got \(1, 2, 3\)"),
    (lambda: ops.conv2d(np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 4)), bias=np.ones(3)),
     r"bias must have shape \(4,\), got \(3,\)"),
    (lambda: ops.max_pool(np.ones((1, 4, 4, 2)), 0), r"window must be a positive int"),
    (lambda: ops.max_pool(np.ones((1, 4, 4, 2)), 5), r"kernel extent 5 .* padded input 4"),
    (lambda: ops.avg_pool(np.ones((1, 4, 4, 2)), 2, stride=-2), r"stride must be .*got -2"),
    (lambda: ops.avg_pool(np.ones((1, 4, 4, 2)), 3, padding=(0, -1)),
     r"padding must be non-negative, got -1"),
    (lambda: ops.conv_output_size(4, 0, "VALID", 1, 1), r"kernel must be a positive int, got 0"),
    (lambda: ops.conv_output_size(-1, 2, "VALID", 1, 1), r"size must be .*got -1"),
])
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
