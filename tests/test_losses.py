"""The training losses (``train.loss``) against PyTorch's on the same logits and targets:
``F.cross_entropy`` with its label smoothing, and ``F.binary_cross_entropy_with_logits`` on
the targets timm's ``BinaryCrossEntropy`` and ``mixup_target`` build ("ResNet strikes
back")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F

from cnnjax import losses, models, parallel, steps
from cnnjax.config import defaults

K = 7  # classes


def _logits_and_labels(batch=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 3, (batch, K)).astype(np.float32),
            rng.integers(0, K, batch).astype(np.int32))


def _timm_targets(labels, smoothing, lam=1.0):
    """timm's ``mixup_target``: one-hot with off ``s / K`` and on ``1 - s + s / K``, blended
    with the batch flipped (its partner) at ``lam``; written out in NumPy."""
    off, on = smoothing / K, 1 - smoothing + smoothing / K
    y = np.full((len(labels), K), off, np.float32)
    y[np.arange(len(labels)), labels] = on
    return lam * y + (1 - lam) * y[::-1]


def _torch_bce(logits, targets):
    return float(F.binary_cross_entropy_with_logits(torch.tensor(logits),
                                                    torch.tensor(targets)))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_is_torchs(smoothing):
    logits, labels = _logits_and_labels()
    ours = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                label_smoothing=smoothing).mean()
    reference = F.cross_entropy(torch.tensor(logits), torch.tensor(labels, dtype=torch.long),
                                label_smoothing=smoothing)
    np.testing.assert_allclose(ours, float(reference), rtol=1e-6)


def test_the_cross_entropy_takes_soft_targets():
    logits = jnp.asarray([[2.0, 0.0, -1.0]])
    hard = losses.cross_entropy(logits, jnp.asarray([0]), label_smoothing=0.1)
    soft = losses.cross_entropy(logits, jax.nn.one_hot(jnp.asarray([0]), 3), label_smoothing=0.1)
    np.testing.assert_allclose(hard, soft, rtol=1e-6)
    half = losses.cross_entropy(logits, jnp.asarray([[0.5, 0.5, 0.0]]))
    expected = -0.5 * (jax.nn.log_softmax(logits)[0, 0] + jax.nn.log_softmax(logits)[0, 1])
    np.testing.assert_allclose(half[0], expected, rtol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("thresh", [0.0, 0.2])
def test_bce_on_class_indices_is_timms(smoothing, thresh):
    """Mean over classes and batch of the per-class BCE against timm's smoothed one-hot,
    binarised above the threshold when one is set."""
    logits, labels = _logits_and_labels()
    ours = losses.binary_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                       label_smoothing=smoothing,
                                       bce_target_thresh=thresh).mean()
    targets = _timm_targets(labels, smoothing)
    if thresh:
        targets = (targets > thresh).astype(np.float32)
    np.testing.assert_allclose(ours, _torch_bce(logits, targets), rtol=1e-6)
    np.testing.assert_allclose(
        ours, optax.sigmoid_binary_cross_entropy(logits, targets).mean(), rtol=1e-6)


@pytest.mark.parametrize("smoothing, thresh", [(0.0, 0.0), (0.1, 0.0), (0.1, 0.2)])
def test_bce_on_mixed_targets_is_timms(smoothing, thresh):
    """Soft mixup/cutmix targets (the train step smooths after blending; timm before: the same,
    smoothing being linear), then the threshold: RSB's 0.2 turns both blended classes to 1."""
    logits, labels = _logits_and_labels(seed=1)
    lam = 0.7
    blended = (lam * jax.nn.one_hot(labels, K) + (1 - lam) * jax.nn.one_hot(labels[::-1], K))
    ours = losses.binary_cross_entropy(jnp.asarray(logits), blended, label_smoothing=smoothing,
                                       bce_target_thresh=thresh).mean()
    targets = _timm_targets(labels, smoothing, lam)
    if thresh:
        targets = (targets > thresh).astype(np.float32)
        assert set(targets.sum(-1).tolist()) <= {1.0, 2.0}  # both classes of a pair are on
    np.testing.assert_allclose(ours, _torch_bce(logits, targets), rtol=1e-5)


def test_the_train_step_minimises_the_configured_loss():
    """One step with ``train.loss=bce``: the step's reported loss is PyTorch's BCE of the
    model's logits on the batch, and its update is SGD on that loss's gradient."""
    train = defaults().train
    train.update(loss="bce", label_smoothing=0.1, bce_target_thresh=0.2)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = models.get_model("mlp", num_classes=K, hidden=(16,))
    tx = optax.sgd(0.5)
    state = steps.init_state(model, tx, 0, (4, 4, 1), mesh)
    before = jax.device_get(state.params)
    images = np.random.default_rng(2).integers(0, 256, (8, 4, 4, 1)).astype(np.uint8)
    labels = np.arange(8, dtype=np.int32) % K
    step = steps.make_train_step(mesh, model=model, tx=tx, schedule=optax.constant_schedule(0.5),
                                 mean=(0.0,), std=(255.0,), train_loss=losses.from_config(train))
    state, metrics = step(state, parallel.global_batch({"images": images, "labels": labels},
                                                       mesh))
    x = jnp.asarray(images, jnp.float32) / 255.0
    logits = np.asarray(model.apply({"params": before}, x))
    targets = (_timm_targets(labels, 0.1) > 0.2).astype(np.float32)
    np.testing.assert_allclose(float(metrics["loss"]), _torch_bce(logits, targets), rtol=1e-5)

    def reference(params):
        out = model.apply({"params": params}, x)
        return optax.sigmoid_binary_cross_entropy(out, targets).mean()

    expected = jax.tree.map(lambda p, g: p - 0.5 * g, before, jax.grad(reference)(before))
    for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(expected),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_table_names_the_configs_choices():
    train = defaults().train
    assert train.loss == "cross_entropy" and train.bce_target_thresh == 0.0
    assert set(losses.LOSSES) == {"cross_entropy", "bce"}
