"""ResNet family: parameter counts, shapes and dtypes (all abstract, via jax.eval_shape), and
a few small real runs: zero_init_residual, BatchNorm statistics in training, a bf16 forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from cnnjax.models import get_model, model_fields

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
CIFAR = ["cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56",
         "cifar_resnet110", "preact_resnet18", "wrn28_10"]


def abstract_variables(model, size=32, batch=1):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((batch, size, size, 3)))


def count_params(name, **kwargs):
    params = abstract_variables(get_model(name, **kwargs))["params"]
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def fast_key(seed=0):
    # threefry compiles one kernel per parameter shape (~0.3 s each on a small CPU); the
    # RngBitGenerator-based key keeps real initialisations of whole ResNets to a few seconds.
    return jax.random.key(seed, impl="unsafe_rbg")


@pytest.mark.parametrize("name,expected", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_imagenet_parameter_counts(name, expected):
    assert count_params(name, num_classes=1000) == expected


@pytest.mark.parametrize("name", RESNETS)
def test_parameter_counts_match_torchvision(name):
    with torch.device("meta"):  # shapes only, no weight allocation
        reference = getattr(torchvision.models, name)()
    # BatchNorm running statistics are buffers in torch and batch_stats here: not counted.
    assert count_params(name) == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize(
    "name,approx,exact",
    [
        ("cifar_resnet20", 0.27e6, 269_722),
        ("cifar_resnet56", 0.85e6, 853_018),
        ("wrn28_10", 36.5e6, 36_479_194),
    ],
)
def test_cifar_parameter_counts(name, approx, exact):
    n = count_params(name, num_classes=10)
    assert n == pytest.approx(approx, rel=0.01)
    assert n == exact


def test_cifar_shortcut_b_adds_the_two_projections():
    # 1x1 16->32 and 32->64 convolutions, each with a BatchNorm (scale + bias).
    extra = 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    assert count_params("cifar_resnet20", shortcut="B") == count_params("cifar_resnet20") + extra


def test_preact_resnet18_parameter_count():
    # Kuang Liu's CIFAR PreActResNet18 (11,171,146) plus the final BatchNorm of 512 channels.
    assert count_params("preact_resnet18") == 11_171_146 + 2 * 512


def test_registry_fields():
    fields = model_fields("resnet50")
    assert fields["stage_sizes"] == (3, 4, 6, 3) and fields["block"] == "bottleneck"
    assert fields["zero_init_residual"] is False
    assert model_fields("cifar_resnet110")["depth"] == 110
    assert model_fields("cifar_resnet20")["shortcut"] == "A"
    assert model_fields("wrn28_10")["dropout"] == 0.0
    assert model_fields("wrn28_10")["widen_factor"] == 10


@pytest.mark.parametrize("name", RESNETS + CIFAR)
def test_output_shape(name):
    model = get_model(name, num_classes=7)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = abstract_variables(model)
    logits = jax.eval_shape(model.apply, variables, x)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32


@pytest.mark.parametrize("size,spatial", [(64, 2), (65, 3), (33, 2), (224, 7)])
def test_resnet_feature_map_sizes_follow_torchvision(size, spatial):
    # torchvision: 7x7/2 pad 3, max-pool 3/2 pad 1, three stride-2 stages; floor division.
    model = get_model("resnet18", num_classes=3)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
        abstract_variables(model), x)
    features = state["intermediates"]["layer4_1"]["__call__"][0]
    assert features.shape == (1, spatial, spatial, 512)


@pytest.mark.parametrize("name,last", [("resnet50", "layer4_2"), ("wrn28_10", "layer3_3"),
                                       ("cifar_resnet20", "layer3_2")])
def test_bfloat16_computes_in_bf16_with_float32_params_and_logits(name, last):
    model = get_model(name, num_classes=10, dtype="bfloat16")
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = abstract_variables(model)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    logits, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
        variables, x)
    assert logits.dtype == jnp.float32
    inter = state["intermediates"]
    assert inter[last]["__call__"][0].dtype == jnp.bfloat16
    assert inter["head"]["__call__"][0].dtype == jnp.bfloat16


@pytest.fixture(scope="module")
def cifar20():
    """cifar_resnet20 variables and a batch of 2 16x16 images shared by the real runs."""
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    return get_model("cifar_resnet20").init(fast_key(), x), x


def test_bfloat16_forward_runs_and_tracks_float32(cifar20):
    variables, x = cifar20
    model16 = get_model("cifar_resnet20", dtype=jnp.bfloat16)
    ref = get_model("cifar_resnet20").apply(variables, x)
    out = model16.apply(variables, x)
    assert out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, ref, atol=0.1 * float(jnp.abs(ref).max()) + 1e-3)


@pytest.mark.parametrize("name,last", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual_zeroes_last_bn_scale_of_each_block(name, last):
    # Two blocks in the first stage, one elsewhere: blocks with and without a projection
    # shortcut, at a fraction of the full model's initialisation time.
    stages = (2, 1, 1, 1)
    for zero in (True, False):
        model = get_model(name, num_classes=10, zero_init_residual=zero, stage_sizes=stages)
        params = jax.jit(model.init)(fast_key(), jnp.zeros((1, 16, 16, 3)))["params"]
        blocks = sorted(k for k in params if k.startswith("layer"))
        assert blocks == ["layer1_0", "layer1_1", "layer2_0", "layer3_0", "layer4_0"]
        assert np.all(np.asarray(params["bn1"]["scale"]) == 1.0)  # the stem's BN is untouched
        for block in blocks:
            scales = {k: np.asarray(v["scale"]) for k, v in params[block].items() if "scale" in v}
            projected = block.endswith("_0") and (block != "layer1_0" or last == "bn3")
            assert last in scales and ("downsample_bn" in scales) == projected
            for layer, scale in scales.items():
                expected = 0.0 if zero and layer == last else 1.0
                assert np.all(scale == expected), (name, zero, block, layer)


def test_train_mode_updates_batch_stats_and_eval_mode_does_not(cifar20):
    variables, x = cifar20
    model = get_model("cifar_resnet20")
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (2, 10)
    old, new = variables["batch_stats"], updates["batch_stats"]
    assert jax.tree.structure(old) == jax.tree.structure(new)
    for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new), strict=True):
        assert not np.allclose(a, b)
    # momentum 0.9: the stem's running mean moves 10% of the way to its batch mean
    _, captured = model.apply(variables, x, train=True, capture_intermediates=True,
                              mutable=["batch_stats", "intermediates"])
    stem = captured["intermediates"]["conv1"]["__call__"][0]
    np.testing.assert_allclose(new["bn1"]["mean"], 0.1 * stem.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
    _, state = model.apply(variables, x, train=False, mutable=["batch_stats"])
    for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(state["batch_stats"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_wide_resnet_dropout_needs_rng_only_in_training():
    model = get_model("wrn28_10", depth=10, widen_factor=1, dropout=0.3)
    x = jnp.ones((1, 8, 8, 3))
    variables = model.init(fast_key(), x)
    a = model.apply(variables, x)
    b, _ = model.apply(variables, x, train=True, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(2)})
    assert a.shape == b.shape == (1, 10)


def test_bad_depths_are_rejected():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        abstract_variables(get_model("cifar_resnet20", depth=21))
    with pytest.raises(ValueError, match="6n \\+ 4"):
        abstract_variables(get_model("wrn28_10", depth=27))
