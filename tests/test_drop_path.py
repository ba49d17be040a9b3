"""Stochastic depth (``model.drop_path_rate``) in the ResNet-style families: torchvision's
``stochastic_depth(..., "row")`` formula, timm's linear rule over the blocks, the identity in
evaluation and nothing changed at rate 0."""

from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from cnnjax import models
from cnnjax.models import cifar_resnet, layers

# One model per block kind: ResNet's basic and bottleneck blocks (ResNeXt and Wide ResNet
# are the bottleneck with other widths), RegNet's, the CIFAR basic block, pre-activation
# and Wide ResNet's pre-activation block; small variants keep the tracing cheap.
FAMILIES = {
    "resnet18": {},
    "resnext50_32x4d": {},
    "regnet_x_400mf": {},
    "cifar_resnet20": {},
    "preact_resnet18": {},
    "wrn28_10": {"depth": 10, "widen_factor": 1},
}


class _Branch(nn.Module):
    """``stochastic_depth`` on its input, as a block applies it to its residual branch."""

    rate: float

    def __call__(self, x, train: bool):
        return layers.stochastic_depth(self, x, self.rate, train)


def test_drop_path_drops_rows_with_its_probability_and_scales_as_torchvision():
    rate, n = 0.3, 4000
    x = jax.random.normal(jax.random.key(0), (n, 2, 2, 3)) + 5.0  # no row is all zeros
    out = np.asarray(_Branch(rate).apply({}, x, True, rngs={"dropout": jax.random.key(1)}))
    dropped = np.all(out == 0, axis=(1, 2, 3))
    # One decision per example ("row" mode): a row is either all zeros or all kept.
    kept_rows = out[~dropped]
    # torchvision.ops.stochastic_depth(row) on the same input: its kept rows are x / (1 - p).
    reference = torchvision.ops.stochastic_depth(
        torch.tensor(np.asarray(x)), rate, "row", training=True).numpy()
    ref_kept = ~np.all(reference == 0, axis=(1, 2, 3))
    np.testing.assert_allclose(reference[ref_kept], np.asarray(x)[ref_kept] / (1 - rate),
                               rtol=1e-6)
    np.testing.assert_allclose(kept_rows, np.asarray(x)[~dropped] / (1 - rate), rtol=1e-6)
    # The share dropped: binomial(n, p), within 4 standard deviations.
    assert abs(dropped.mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / n)
    assert abs((~ref_kept).mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / n)


def test_drop_path_is_the_identity_in_evaluation_and_at_rate_zero():
    x = jax.random.normal(jax.random.key(0), (8, 2, 2, 3))
    assert _Branch(0.5).apply({}, x, False) is x  # no rng asked for, nothing computed
    assert _Branch(0.0).apply({}, x, True) is x


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_blocks_get_timms_linear_rates(name):
    """Block i of n gets ``rate * i / (n - 1)`` (timm: ``linspace(0, rate, n)``), in order."""
    rate = 0.2
    model = models.get_model(name, num_classes=10, drop_path_rate=rate, **FAMILIES[name])
    seen = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and hasattr(context.module, "drop_path"):
            seen.append(context.module.drop_path)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    expected = torch.linspace(0, rate, len(seen)).tolist()
    assert len(seen) > 2
    np.testing.assert_allclose(seen, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_rate_changes_no_parameter_and_evaluation_is_unchanged(name):
    """The field adds no parameter, and in evaluation a model with drop path computes
    exactly what it computes without (so torchvision parity, tested in eval mode, holds)."""
    plain = models.get_model(name, num_classes=10, **FAMILIES[name])
    dropping = models.get_model(name, num_classes=10, drop_path_rate=0.5, **FAMILIES[name])
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = jax.eval_shape(plain.init, jax.random.key(0), x)
    shapes = jax.eval_shape(dropping.init, jax.random.key(0), x)
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, variables)
    # The same program, operation for operation: the same values to the bit.
    assert str(jax.make_jaxpr(dropping.apply)(variables, x)) == str(
        jax.make_jaxpr(plain.apply)(variables, x))


def test_a_block_drops_its_residual_per_example_in_training():
    """A CIFAR basic block at drop probability p, in training: each example's output is
    ``relu(x)`` (branch dropped) or ``relu(branch / (1 - p) + x)``, the branch being what the
    block computes at rate 0 (BatchNorm's batch statistics come before the drop)."""
    p, n = 0.5, 256
    x = jax.random.normal(jax.random.key(0), (n, 4, 4, 8))
    plain, dropping = (cifar_resnet.CifarBasicBlock(8, drop_path=r) for r in (0.0, p))
    variables = plain.init(jax.random.key(1), x)
    _, state = plain.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"],
                           capture_intermediates=lambda m, _: m.name == "bn2")
    branch = np.asarray(state["intermediates"]["bn2"]["__call__"][0])
    out, _ = dropping.apply(variables, x, train=True, mutable=["batch_stats"],
                            rngs={"dropout": jax.random.key(2)})
    out, x = np.asarray(out), np.asarray(x)
    dropped = np.all(np.isclose(out, np.maximum(x, 0), atol=1e-6), axis=(1, 2, 3))
    kept = np.all(np.isclose(out, np.maximum(branch / (1 - p) + x, 0), atol=1e-5),
                  axis=(1, 2, 3))
    assert np.all(dropped ^ kept)  # every example is exactly one of the two
    assert abs(dropped.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("name", ["resnet18", "cifar_resnet20"])
def test_a_model_in_training_draws_from_the_dropout_rng(name):
    """With a rate, training needs the ``"dropout"`` rng the train step passes; evaluation
    and rate 0 need none (traced only: nothing is computed)."""
    x = jnp.zeros((2, 32, 32, 3))
    model = models.get_model(name, num_classes=10, drop_path_rate=0.1, **FAMILIES[name])
    variables = jax.eval_shape(model.init, jax.random.key(0), x)

    def train(m, **rngs):
        return jax.eval_shape(lambda v: m.apply(v, x, train=True, mutable=["batch_stats"],
                                                rngs=rngs), variables)

    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
        train(model)
    train(model, dropout=jax.random.key(1))
    jax.eval_shape(lambda v: model.apply(v, x), variables)
    train(models.get_model(name, num_classes=10, **FAMILIES[name]))


@pytest.mark.parametrize("rate", [-0.1, 1.0])
def test_a_rate_out_of_range_is_refused(rate):
    with pytest.raises(ValueError, match=r"model.drop_path_rate of 'resnet18' must be in \[0, 1\)"):
        models.check_fields("resnet18", {"drop_path_rate": rate})
