"""CNN(ops="scratch") (cnnjax.ops) against CNN(ops="lax") (nn.Conv, nn.max_pool/avg_pool)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.models.cnn import CNN

BASE = dict(num_classes=5, features=(4, 6), kernel_size=3, dense=(16,), pool_window=2)
CASES = [
    dict(pool=pool, padding=padding, strides=2)
    for pool in ("max", "avg")
    for padding in ("SAME", "VALID")
] + [
    dict(pool="max", padding="SAME", strides=1),  # the defaults
    dict(pool="avg", padding=1, strides=2),
    dict(pool="max", padding="SAME", strides=2, kernel_size=4),  # asymmetric SAME pads
    dict(pool="max", padding="VALID", strides=1, batch_norm=True),  # convs without bias
    dict(pool="none", padding=(1, 2), strides=2, activation="tanh"),
]


def _randn(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _ids(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_scratch_and_lax_share_params_outputs_and_gradients(case):
    lax_model = CNN(**{**BASE, **case})
    scratch_model = CNN(**{**BASE, **case}, ops="scratch")
    x = _randn(0, (3, 28, 28, 2))
    labels = np.random.default_rng(1).integers(0, BASE["num_classes"], 3)

    # Same tree, same names (Conv_0, Conv_1, ...) and shapes; tracing only, no init compile.
    shapes = jax.eval_shape(lax_model.init, jax.random.key(0), x)
    assert shapes == jax.eval_shape(scratch_model.init, jax.random.key(0), x)
    assert {"Conv_0", "Conv_1"} <= set(shapes["params"])
    kernel_size = case.get("kernel_size", BASE["kernel_size"])
    assert shapes["params"]["Conv_0"]["kernel"].shape == (kernel_size, kernel_size, 2, 4)

    # Random weights of those shapes, every leaf nonzero (biases and BatchNorm stats included).
    rng = np.random.default_rng(2)

    def fill(path, leaf):
        fan_in = np.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else 10
        value = rng.standard_normal(leaf.shape).astype(np.float32) / np.sqrt(fan_in)
        return np.abs(value) + 0.5 if jax.tree_util.keystr(path).endswith("['var']") else value

    variables = jax.tree_util.tree_map_with_path(fill, shapes)

    def loss_and_grads(model):
        def f(params):
            logits = model.apply({**variables, "params": params}, x)
            logp = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1)), logits
        return jax.jit(jax.value_and_grad(f, has_aux=True))(variables["params"])

    (loss_lax, logits_lax), grads_lax = loss_and_grads(lax_model)
    (loss_scratch, logits_scratch), grads_scratch = loss_and_grads(scratch_model)
    assert logits_lax.shape == (3, BASE["num_classes"])
    np.testing.assert_allclose(logits_scratch, logits_lax, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(loss_scratch, loss_lax, atol=1e-6, rtol=1e-5)

    assert jax.tree.structure(grads_lax) == jax.tree.structure(grads_scratch)
    flat_scratch = dict(jax.tree_util.tree_leaves_with_path(grads_scratch))
    for path, g in jax.tree_util.tree_leaves_with_path(grads_lax):
        name = jax.tree_util.keystr(path)
        assert np.any(np.asarray(g) != 0), name
        np.testing.assert_allclose(flat_scratch[path], g, atol=1e-5, rtol=1e-4, err_msg=name)


def test_scratch_and_lax_initialise_identically():
    x = jnp.zeros((1, 8, 8, 1))
    kw = dict(num_classes=2, features=(2, 3), dense=())
    lax_vars = jax.jit(CNN(**kw).init)(jax.random.key(3), x)
    scratch_vars = jax.jit(CNN(**kw, ops="scratch").init)(jax.random.key(3), x)
    assert {"Conv_0", "Conv_1"} <= set(lax_vars["params"])
    assert jax.tree.structure(lax_vars) == jax.tree.structure(scratch_vars)
    for a, b in zip(jax.tree.leaves(lax_vars), jax.tree.leaves(scratch_vars), strict=True):
        np.testing.assert_array_equal(a, b)


def test_default_ops_is_lax_and_bad_ops_is_rejected():
    assert CNN().ops == "lax"
    with pytest.raises(ValueError, match="ops must be 'lax' or 'scratch', got 'cuda'"):
        jax.eval_shape(CNN(ops="cuda").init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
