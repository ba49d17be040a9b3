"""cnnjax.models.cnn.max_pool (strided slices + first-maximum rule) against nn.max_pool."""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.models import layers
from cnnjax.models.cnn import CNN, max_pool


def _reference(x, window):
    return nn.max_pool(x, window, strides=window)


@pytest.mark.parametrize("shape, window", [
    ((3, 8, 8, 4), (2, 2)),
    ((2, 7, 9, 3), (2, 2)),  # VALID: the last row and column are dropped
    ((2, 9, 8, 2), (3, 2)),
    ((1, 4, 4, 1), (4, 4)),
])
@pytest.mark.parametrize("ties", [False, True])
def test_values_and_gradients_equal_nn_max_pool(shape, window, ties):
    key_x, key_g = jax.random.split(jax.random.key(0))
    x = jax.random.normal(key_x, shape)
    if ties:  # few distinct values (and ReLU's zeros): the first maximum must get the gradient
        x = jnp.maximum(jnp.round(x), 0.0)
    expected = _reference(x, window)
    np.testing.assert_array_equal(jax.jit(max_pool, static_argnums=1)(x, window), expected)
    g = jax.random.normal(key_g, expected.shape)
    grad = jax.grad(lambda v: jnp.sum(max_pool(v, window) * g))(x)
    grad_ref = jax.grad(lambda v: jnp.sum(_reference(v, window) * g))(x)
    np.testing.assert_array_equal(grad, grad_ref)
    # Forward mode as well (a custom JVP, so jvp/jacfwd/hessians keep working).
    t = jax.random.normal(key_g, shape)
    _, tangent = jax.jvp(lambda v: max_pool(v, window), (x,), (t,))
    _, tangent_ref = jax.jvp(lambda v: _reference(v, window), (x,), (t,))
    np.testing.assert_array_equal(tangent, tangent_ref)


def test_bfloat16_and_no_scatter_in_the_gradient():
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 8), jnp.bfloat16)
    grad = jax.jit(jax.grad(lambda v: jnp.sum(max_pool(v, (2, 2)).astype(jnp.float32))))
    assert grad(x).dtype == jnp.bfloat16
    hlo = grad.lower(x).as_text()
    assert "scatter" not in hlo and "select_and_scatter" not in hlo


def test_cnn_trains_with_the_same_gradients_as_nn_max_pool(monkeypatch):
    model = CNN(num_classes=5, features=(4, 6), dense=(8,), batch_norm=True)
    x = jax.random.normal(jax.random.key(2), (6, 12, 12, 1))
    variables = model.init(jax.random.key(3), x)

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                mutable=["batch_stats"])
        return jnp.sum(jax.nn.log_softmax(logits)[:, 0])

    grads = jax.grad(loss)(variables["params"])
    import cnnjax.models.cnn as cnn_module

    monkeypatch.setattr(cnn_module, "max_pool", _reference)
    grads_ref = jax.grad(loss)(variables["params"])
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_the_plain_pool_cnn_gives_the_same_logits_and_gradients():
    # performance.fused_max_pool off (the form ONNX export converts) is nn.max_pool itself
    x = jax.random.normal(jax.random.key(4), (3, 12, 12, 1))
    fused = CNN(num_classes=5, features=(4, 6), dense=(8,), batch_norm=True)
    plain = "plain"
    variables = fused.init(jax.random.key(5), x)

    def loss(model, params):
        switches = layers.Performance(fused_max_pool=model != "plain")
        with layers.performing(switches):
            logits, _ = fused.apply({**variables, "params": params}, x, train=True,
                                    mutable=["batch_stats"])
        return jnp.sum(jax.nn.log_softmax(logits)[:, 0])

    def apply(model):
        with layers.performing(layers.Performance(fused_max_pool=model != "plain")):
            return fused.apply(variables, x)

    np.testing.assert_array_equal(apply(plain), apply(fused))
    for a, b in zip(jax.tree.leaves(jax.grad(partial(loss, plain))(variables["params"])),
                    jax.tree.leaves(jax.grad(partial(loss, fused))(variables["params"])),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    hlo = jax.jit(partial(loss, plain)).lower(variables["params"]).as_text()
    assert "reduce_window" in hlo  # the plain pool is nn.max_pool's reduce-window
    assert "reduce_window" not in jax.jit(partial(loss, fused)).lower(
        variables["params"]).as_text()
