"""cnnjax.models.layers against the layers they replace: nn.max_pool and a 7x7/2 nn.Conv."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import config as config_lib
from cnnjax import models
from cnnjax.errors import ConfigError
from cnnjax.models import layers


@pytest.mark.parametrize("shape, window, strides, padding", [
    ((2, 9, 11, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet's pool, odd sides
    ((2, 8, 8, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((1, 7, 7, 2), (2, 2), (2, 2), ((0, 0), (0, 0))),  # non-overlapping, VALID remainder
    ((1, 10, 9, 2), (3, 2), (1, 2), ((2, 0), (1, 1))),  # asymmetric everything
])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_values_and_gradients_equal_nn_max_pool(shape, window, strides, padding, ties):
    key_x, key_g, key_t = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(key_x, shape)
    if ties:  # ReLU zeros and repeated values: the first maximum must get the gradient
        x = jnp.maximum(jnp.round(2 * x), 0.0)

    def reference(v):
        return nn.max_pool(v, window, strides=strides, padding=padding)

    def pool(v):
        return layers.max_pool(v, window, strides, padding)

    expected = reference(x)
    np.testing.assert_array_equal(jax.jit(pool)(x), expected)
    g = jax.random.normal(key_g, expected.shape)
    np.testing.assert_array_equal(jax.jit(jax.grad(lambda v: jnp.sum(pool(v) * g)))(x),
                                  jax.grad(lambda v: jnp.sum(reference(v) * g))(x))
    t = jax.random.normal(key_t, shape)
    tangent = jax.jvp(pool, (x,), (t,))[1]
    if not ties:  # lax's own forward rule breaks ties differently from its gradient
        np.testing.assert_array_equal(tangent, jax.jvp(reference, (x,), (t,))[1])
    # forward and reverse mode are one linear map: <g, J t> == <J^T g, t>
    grad = jax.grad(lambda v: jnp.sum(pool(v) * g))(x)
    np.testing.assert_allclose(jnp.sum(g * tangent), jnp.sum(grad * t), rtol=1e-5)


@pytest.mark.parametrize("shape, window, strides, padding", [
    ((2, 9, 11, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((1, 10, 9, 2), (3, 2), (1, 2), ((2, 0), (1, 1))),
])
def test_padded_max_pool_values_and_gradients_equal_nn_max_pool(shape, window, strides,
                                                                padding):
    x = jnp.maximum(jnp.round(2 * jax.random.normal(jax.random.key(0), shape)), 0.0)  # ties
    reference = lambda v: nn.max_pool(v, window, strides=strides, padding=padding)  # noqa: E731
    pool = lambda v: layers.padded_max_pool(v, window, strides, padding)  # noqa: E731
    np.testing.assert_array_equal(pool(x), reference(x))
    g = jax.random.normal(jax.random.key(1), reference(x).shape)
    np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(pool(v) * g))(x),
                                  jax.grad(lambda v: jnp.sum(reference(v) * g))(x))


def test_max_pool_gradient_has_no_scatter_and_keeps_bfloat16():
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 8), jnp.bfloat16)
    grad = jax.jit(jax.grad(lambda v: jnp.sum(
        layers.max_pool(v, (3, 3), (2, 2), ((1, 1), (1, 1))).astype(jnp.float32))))
    assert grad(x).dtype == jnp.bfloat16
    hlo = grad.lower(x).as_text()
    assert "scatter" not in hlo


def test_space_to_depth_round_trip_order():
    x = jnp.arange(2 * 4 * 6 * 3).reshape(2, 4, 6, 3)
    y = layers.space_to_depth(x)
    assert y.shape == (2, 2, 3, 12)
    # channel (dy * 2 + dx) * 3 + c of block (i, j) is pixel (2i + dy, 2j + dx), channel c
    np.testing.assert_array_equal(y[1, 1, 2, (1 * 2 + 0) * 3 + 2], x[1, 3, 4, 2])


@pytest.mark.parametrize("size", [(32, 32), (30, 34), (31, 32)])  # odd: plain convolution
def test_space_to_depth_stem_equals_the_strided_7x7_convolution(size):
    x = jax.random.normal(jax.random.key(2), (2, *size, 3))
    stem = layers.SpaceToDepthStem(16)
    conv = nn.Conv(16, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False)
    variables = stem.init(jax.random.key(3), x)
    # the same parameter, initialised identically under the same RNG path
    np.testing.assert_array_equal(variables["params"]["kernel"],
                                  conv.init(jax.random.key(3), x)["params"]["kernel"])
    out, ref = stem.apply(variables, x), conv.apply(variables, x)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)

    def grad(module):
        return jax.grad(lambda v: jnp.sum(module.apply(v, x) ** 2))(variables)["params"]["kernel"]

    np.testing.assert_allclose(grad(stem), grad(conv), rtol=1e-4, atol=1e-4)


@pytest.mark.heavy  # .ci/run runs it; the bare suite covers the same more cheaply
def test_resnet_fast_layers_change_nothing_but_speed():
    x = jax.random.normal(jax.random.key(4), (2, 64, 64, 3))
    model = models.get_model("resnet18", num_classes=7)
    plain = layers.Performance(space_to_depth_stem=False, fused_max_pool=False)
    variables = jax.jit(model.init)(jax.random.key(5), x)
    assert jax.tree.structure(variables) == jax.tree.structure(
        jax.eval_shape(layers.under(plain, model.init), jax.random.key(5), x))

    def loss(model, params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                mutable=["batch_stats"])
        return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(lambda p: loss(model, p), has_aux=True))(
        variables["params"])
    (_, logits_ref), grads_ref = jax.jit(layers.under(plain, jax.value_and_grad(
        lambda p: loss(model, p), has_aux=True)))(variables["params"])
    np.testing.assert_allclose(logits, logits_ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)


def test_in_memory_is_the_identity_in_values_and_gradients():
    x = jnp.array([[1.5, -0.0, 0.0], [jnp.inf, -jnp.inf, jnp.nan]], jnp.float32)
    y = jax.jit(layers.in_memory)(x)
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(np.signbit(y), np.signbit(x))
    np.testing.assert_array_equal(y, x)  # NaN where NaN: NaN takes the other branch, also x
    g = jax.jit(jax.grad(lambda v: jnp.sum(layers.in_memory(v) * jnp.arange(3.0))))(x[:1])
    np.testing.assert_array_equal(g, jnp.arange(3.0)[None])
    bf16 = jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3)
    assert jax.jit(layers.in_memory)(bf16).dtype == jnp.bfloat16


def _resnet_grad(name, materialize, x):
    model = models.get_model(name, num_classes=5)
    switches = layers.Performance(materialize_on_cpu=materialize)
    variables = jax.jit(layers.under(switches, model.init))(jax.random.key(1), x)

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                mutable=["batch_stats"])
        return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), logits

    fn = jax.jit(layers.under(switches, jax.value_and_grad(loss, has_aux=True)))
    return fn, variables["params"]


@pytest.mark.heavy  # .ci/run runs it; the bare suite covers the same more cheaply
@pytest.mark.parametrize("name, size", [("cifar_resnet20", 16), ("resnet18", 32)])
def test_resnets_materialize_conv_inputs_on_cpu_only_and_compute_the_same(name, size):
    x = jax.random.normal(jax.random.key(2), (2, size, size, 3))
    (on, params), (off, _) = (_resnet_grad(name, m, x) for m in (True, False))
    (_, logits), grads = on(params)
    (_, logits_ref), grads_ref = off(params)
    np.testing.assert_allclose(logits, logits_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # On CPU XLA keeps the conditionals (were they folded away, the speed-up would be gone) ...
    assert "conditional(" in on.lower(params).compile().as_text()
    assert "conditional(" not in off.lower(params).compile().as_text()

    # ... and a GPU program has none of their predicates (x == x on the first element).
    def equalities(fn, platform):
        text = fn.trace(params).lower(lowering_platforms=(platform,)).as_text()
        return len(re.findall(r"stablehlo\.compare\s+EQ", text))

    assert equalities(on, "cpu") > equalities(off, "cpu")
    assert equalities(on, "cuda") == equalities(off, "cuda")


# ------------------------------------------------------------- conv_general_dilated

def _conv_case(x_shape, k, cout, stride, groups, pad=None, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, x_shape)
    w = jax.random.normal(kw, (k, k, x_shape[3] // groups, cout)) * 0.2
    pad = k // 2 if pad is None else pad
    return x, w, (stride, stride), ((pad, pad), (pad, pad))


# (image shape, kernel, output channels, stride, groups, padding, the formulation chosen)
CONV_CASES = [
    ((2, 5, 5, 8), 3, 8, 1, 8, None, "_depthwise"),       # depthwise, taps' kernel gradient
    ((2, 6, 7, 8), 5, 8, 2, 8, None, "_depthwise"),       # strided, odd sides
    ((2, 16, 16, 4), 3, 4, 1, 4, None, "_depthwise"),     # XLA's kernel gradient
    ((2, 9, 9, 6), 7, 6, 1, 6, 3, "_depthwise"),          # ConvNeXt's 7x7
    ((2, 6, 6, 12), 3, 12, 1, 4, None, "_grouped"),       # 3 channels a group: dense gradient
    ((2, 5, 5, 32), 3, 48, 2, 2, None, "_grouped"),       # 16 a group: per tap
    ((2, 4, 4, 16), 3, 16, 1, 2, 0, "_grouped"),          # no padding
    ((2, 2, 2, 6), 3, 5, 1, 1, None, "_im2col"),          # ResNet's last stage at 64x64
    ((2, 4, 4, 6), 3, 5, 2, 1, None, "_im2col"),          # strided down to 2x2
    ((2, 3, 3, 4), 3, 3, 1, 1, 0, "_im2col"),             # 1x1 output
    ((2, 8, 8, 4), 3, 4, 1, 1, None, None),               # a plain conv stays XLA's
    ((2, 2, 2, 6), 1, 5, 1, 1, None, None),               # 1x1 kernels too
]


@pytest.mark.parametrize("x_shape, k, cout, stride, groups, pad, chosen", CONV_CASES)
def test_conv_formulations_equal_lax_in_values_and_gradients(x_shape, k, cout, stride, groups,
                                                             pad, chosen):
    x, w, strides, pads = _conv_case(x_shape, k, cout, stride, groups, pad)
    fast = layers.conv_formulation(x.shape, w.shape, strides, pads, groups)
    assert getattr(getattr(fast, "func", None), "__name__", None) == chosen

    def ref(a, b):
        return jax.lax.conv_general_dilated(a, b, strides, pads, dimension_numbers=(
            "NHWC", "HWIO", "NHWC"), feature_group_count=groups)

    def ours(a, b):
        return layers.conv_general_dilated(a, b, strides, pads, dimension_numbers=(
            "NHWC", "HWIO", "NHWC"), feature_group_count=groups)

    y_ref, vjp_ref = jax.vjp(ref, x, w)
    y = jax.jit(ours)(x, w)
    g = jax.random.normal(jax.random.key(9), y_ref.shape)
    dx, dw = jax.jit(lambda a, b, c: jax.vjp(ours, a, b)[1](c))(x, w, g)
    dx_ref, dw_ref = vjp_ref(g)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=2e-5)
    # Second order too (a Hessian-vector product differentiates the custom VJPs' rules).
    hvp = jax.grad(lambda b: jnp.sum(jax.grad(lambda c: jnp.sum(ours(x, c) ** 2))(b) * w))(w)
    hvp_ref = jax.grad(lambda b: jnp.sum(jax.grad(lambda c: jnp.sum(ref(x, c) ** 2))(b) * w))(w)
    np.testing.assert_allclose(hvp, hvp_ref, rtol=1e-4, atol=1e-4)


def test_conv_formulations_run_on_cpu_only():
    x, w, strides, pads = _conv_case((2, 4, 4, 8), 3, 8, 1, 8)

    def f(a, b):
        return layers.conv_general_dilated(a, b, strides, pads, dimension_numbers=(
            "NHWC", "HWIO", "NHWC"), feature_group_count=8)

    def lowered(platform):  # a new function each time: no trace is reused
        return jax.jit(lambda a, b: f(a, b)).trace(x, w).lower(
            lowering_platforms=(platform,)).as_text()

    assert "convolution" not in lowered("cpu")  # the depthwise taps: multiply-adds only
    assert "convolution" in lowered("cuda")
    with layers.performing(layers.Performance(conv_impl="xla")):
        assert "convolution" in lowered("cpu")


@pytest.mark.parametrize("dtype, padding, dilation", [
    (jnp.bfloat16, ((1, 1), (1, 1)), 1),  # low precision keeps XLA's accumulation
    (jnp.float32, "SAME", 1),             # string padding is resolved, then formulated
    (jnp.float32, ((1, 1), (1, 1)), 2),   # dilated kernels are left to XLA
])
def test_conv_general_dilated_leaves_what_it_does_not_cover_to_lax(dtype, padding, dilation):
    x, w, strides, _ = _conv_case((2, 2, 2, 6), 3, 4, 1, 1)
    x, w = x.astype(dtype), w.astype(dtype)
    args = dict(window_strides=strides, padding=padding, rhs_dilation=(dilation, dilation),
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
    text = jax.jit(lambda a, b: layers.conv_general_dilated(a, b, **args)).lower(x, w).as_text()
    assert ("convolution" in text) == (dtype != jnp.float32 or dilation != 1)
    np.testing.assert_allclose(
        np.asarray(layers.conv_general_dilated(x, w, **args), np.float32),
        np.asarray(jax.lax.conv_general_dilated(x, w, **args), np.float32), rtol=2e-2, atol=2e-2)


@pytest.mark.heavy  # .ci/run runs it; the bare suite covers the same more cheaply
@pytest.mark.parametrize("name", ["mobilenet_v3_small", "regnet_x_400mf", "resnet18"])
def test_models_train_the_same_with_and_without_the_conv_formulations(name):
    # 64x64: the last stages' maps are 2x2 (the tiny-output formulation), and BatchNorm's
    # statistics are over more than two values (over fewer, rounding alone moves them).
    x = jax.random.normal(jax.random.key(3), (4, 64, 64, 3))
    model = models.get_model(name, num_classes=5)
    auto, plain = layers.Performance(), layers.Performance(conv_impl="xla")
    variables = jax.jit(model.init)(jax.random.key(4), x)
    assert jax.tree.structure(variables) == jax.tree.structure(
        jax.eval_shape(layers.under(plain, model.init), jax.random.key(4), x))

    def grads(switches):
        def loss(params):
            logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                    mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
            return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), logits
        return jax.jit(layers.under(switches, jax.value_and_grad(loss, has_aux=True)))(
            variables["params"])

    (_, logits), g = grads(auto)
    (_, logits_ref), g_ref = grads(plain)
    np.testing.assert_allclose(logits, logits_ref, rtol=1e-4, atol=1e-4)
    # Per parameter, the difference's norm against the gradient's: BatchNorm over a few 1x1
    # maps magnifies float rounding in single elements, not in a gradient as a whole (and the
    # gradients that are zero in exact arithmetic are rounding alone).
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        assert np.linalg.norm(a - b) <= 1e-3 * np.linalg.norm(b) + 1e-5


def test_conv_impl_is_checked_by_name():
    config = config_lib.defaults()
    config.performance.conv_impl = "fast"
    with pytest.raises(ConfigError, match="^unknown performance.conv_impl 'fast'; choose one "
                                          "of: auto, xla$"):
        config_lib.validate(config, 1)
    with pytest.raises(ValueError, match="conv_impl must be one of auto, xla, got 'fast'"):
        with layers.performing({"conv_impl": "fast"}):
            pass


def test_a_speed_switch_in_the_model_section_names_its_new_place():
    config = config_lib.defaults()
    config.model = config_lib.model_config("resnet18")
    with config.unlocked():
        config.model.conv_impl = "xla"
    with pytest.raises(ConfigError, match=r"^model.conv_impl is now performance.conv_impl "):
        config_lib.validate(config, 1)


def test_the_models_have_no_speed_switch_among_their_fields():
    for name in models.names():
        assert not set(models.model_fields(name)) & set(config_lib.PERFORMANCE_FIELDS), name
