import jax
import jax.numpy as jnp
import pytest

from cnnjax import models


def n_params(variables):
    return sum(x.size for x in jax.tree.leaves(variables["params"]))


def test_registry_lists_the_models_and_rejects_unknown_names():
    assert {"mlp", "cnn", "lenet5"} <= set(models.names())
    with pytest.raises(ValueError, match="unknown model 'cnnn'; choose one of: .*cnn"):
        models.get_model("cnnn")
    with pytest.raises(ValueError, match="model 'cnn' has no field 'featurez'"):
        models.get_model("cnn", featurez=(1,))


def test_mlp_shape_and_parameter_count():
    model = models.get_model("mlp", num_classes=10, hidden=(256, 128))
    v = model.init(jax.random.key(0), jnp.zeros((3, 8, 8, 1)))
    assert model.apply(v, jnp.zeros((3, 8, 8, 1))).shape == (3, 10)
    assert n_params(v) == (64 * 256 + 256) + (256 * 128 + 128) + (128 * 10 + 10)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        # 8x8x1 -SAME conv 3x3 x32-> pool 4x4 -conv x64-> pool 2x2 -> 256 -> 128 -> 10
        (dict(features=(32, 64), dense=(128,)),
         (9 * 32 + 32) + (9 * 32 * 64 + 64) + (256 * 128 + 128) + (128 * 10 + 10)),
        # VALID 3x3: 8 -> 6, no pooling, stride 1 -> 6*6*4 features; BatchNorm drops conv bias
        (dict(features=(4,), padding="VALID", pool="none", dense=(), batch_norm=True),
         9 * 4 + 2 * 4 + 6 * 6 * 4 * 10 + 10),
        # stride 2 with padding 1: 8 -> 4; avg pool 2 -> 2x2x8
        (dict(features=(8,), strides=2, padding=1, pool="avg", dense=()),
         9 * 8 + 8 + 2 * 2 * 8 * 10 + 10),
    ],
)
def test_cnn_parameter_counts_follow_the_arithmetic(kwargs, expected):
    model = models.get_model("cnn", num_classes=10, **kwargs)
    x = jnp.zeros((2, 8, 8, 1))
    v = model.init(jax.random.key(0), x)
    assert model.apply(v, x).shape == (2, 10)
    assert n_params(v) == expected


def test_cnn_batch_norm_updates_statistics_only_in_training():
    model = models.get_model("cnn", num_classes=10, features=(4,), batch_norm=True)
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    v = model.init(jax.random.key(0), x)
    _, updated = model.apply(v, x, train=True, mutable=["batch_stats"])
    before = v["batch_stats"]["BatchNorm_0"]["mean"]
    after = updated["batch_stats"]["BatchNorm_0"]["mean"]
    assert not jnp.allclose(before, after)
    # eval mode is a pure function of the variables
    assert jnp.array_equal(model.apply(v, x), model.apply(v, x))


def test_bfloat16_computation_keeps_float32_params_and_logits():
    model = models.get_model("cnn", num_classes=10, dtype="bfloat16")
    x = jnp.ones((2, 8, 8, 1))
    v = model.init(jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v["params"]))
    assert model.apply(v, x).dtype == jnp.float32
