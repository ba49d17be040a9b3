"""Mixup and cutmix on device: soft targets, per-example determinism, the config's ranges."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import config as config_lib
from cnnjax import data
from cnnjax.data import augment
from cnnjax.data.augment import soft_targets

# Compiled, as in the train step (eager sampling of Beta variates is slow).
mix = jax.jit(augment.mix, static_argnames=("mixup_alpha", "cutmix_alpha"))


def _batch(b=8, h=6, w=6):
    images = jax.random.normal(jax.random.key(0), (b, h, w, 3))
    return images, jnp.arange(b, dtype=jnp.int32) % 5


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_images_and_soft_targets_agree(mixup, cutmix):
    images, labels = _batch()
    index = jnp.arange(8)
    out, lam, partner = mix(
        images, jax.random.key(1), index, mixup_alpha=mixup, cutmix_alpha=cutmix
    )
    np.testing.assert_array_equal(partner, [1, 0, 3, 2, 5, 4, 7, 6])
    assert out.shape == images.shape and bool(jnp.all((lam >= 0) & (lam <= 1)))
    assert bool(jnp.any(lam < 0.999))  # something is mixed
    targets = soft_targets(labels, lam, partner, 5)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    for i in range(8):
        own, other = images[i], images[partner[i]]
        if cutmix and not mixup:  # every pixel is its own or its partner's
            from_own = jnp.all(out[i] == own, -1)
            assert bool(jnp.all(from_own | jnp.all(out[i] == other, -1)))
            np.testing.assert_allclose(jnp.mean(from_own), lam[i], atol=1e-6)
        if mixup and not cutmix:
            np.testing.assert_allclose(out[i], lam[i] * own + (1 - lam[i]) * other, atol=1e-5)


def test_each_example_mixes_the_same_on_one_device_or_eight():
    """Randomness comes from the global index: a split batch mixes as the whole one."""
    images, _ = _batch(16)
    key = jax.random.key(2)
    whole = mix(images, key, jnp.arange(16), mixup_alpha=0.4, cutmix_alpha=1.0)
    parts = [mix(images[i : i + 8], key, jnp.arange(i, i + 8), mixup_alpha=0.4, cutmix_alpha=1.0)
             for i in (0, 8)]  # two devices (the same shape as above: compiled once)
    np.testing.assert_allclose(jnp.concatenate([p[0] for p in parts]), whole[0], atol=1e-6)
    np.testing.assert_allclose(jnp.concatenate([p[1] for p in parts]), whole[1], atol=1e-6)


def test_off_is_the_identity():
    images, _ = _batch()
    out, lam, partner = augment.mix(images, jax.random.key(0), jnp.arange(8))
    assert out is images
    np.testing.assert_array_equal(lam, 1.0)
    np.testing.assert_array_equal(partner, np.arange(8))


def test_an_odd_last_example_pairs_with_itself():
    images, _ = _batch(3)
    out, _, partner = mix(images, jax.random.key(0), jnp.arange(3), mixup_alpha=0.4)
    assert partner.tolist() == [1, 0, 2]
    np.testing.assert_allclose(out[2], images[2], atol=1e-6)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("mixup_alpha", -0.1, "data.mixup_alpha must be >= 0"),
        ("cutmix_alpha", -1.0, "data.cutmix_alpha must be >= 0"),
        ("loader", "disk", "unknown data.loader 'disk'; choose one of: auto, memory, streaming"),
        ("workers", -1, "data.workers must be in \\[0, 256\\]"),
        ("image_size", -8, "data.image_size must be in \\[0, 4096\\]"),
        ("max_memory_mb", 0, "data.max_memory_mb must be > 0"),
    ],
)
def test_data_fields_are_validated(key, value, message):
    config = config_lib.defaults()
    setattr(config.data, key, value)
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(config)


def test_a_source_without_its_path_is_refused_when_opened():
    config = config_lib.defaults()
    config.data.name = "npz:"
    with pytest.raises(config_lib.ConfigError, match="needs a path: npz:/path/to/data"):
        data.open_source(config.data)


def test_a_run_trains_with_mixup_and_cutmix(tmp_path, data_dir):
    from cnnjax import training
    from tests.helpers import tiny_config

    config = tiny_config(data_dir, num_steps=4, eval_every_steps=4)
    config.model = config_lib.model_config("cnn", features=(4,), dense=(), batch_norm=True)
    config.data.mixup_alpha, config.data.cutmix_alpha = 0.2, 1.0
    if "plots" in config.train:
        config.train.plots = False
    summary = training.run(config, str(tmp_path / "run"))
    assert summary["step"] == 4 and summary["eval_loss"] > 0
