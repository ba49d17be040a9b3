import jax
import numpy as np
import optax
import pytest

from cnnjax import data, models, parallel, steps
from cnnjax.config import defaults


def _setup(mesh, data_dir, batch_norm=True):
    split = data.load("digits", "train", data_dir)
    info = data.info_from("digits", split)
    model = models.get_model(
        "cnn", num_classes=10, features=(8, 16), dense=(32,), batch_norm=batch_norm,
        axis_name=parallel.AXIS,
    )
    cfg = defaults().optimizer
    cfg.learning_rate, cfg.weight_decay = 0.05, 1e-4
    from cnnjax import optim

    schedule = optim.make_schedule(cfg, steps_per_epoch=40, total_steps=40)
    tx = optim.make_optimizer(cfg, schedule)
    state = steps.init_state(model, tx, 0, info.image_shape, mesh)
    step = steps.make_train_step(
        mesh, model=model, tx=tx, schedule=schedule, mean=info.mean, std=info.std,
        augment="crop(padding=1)",
    )
    loader = data.InMemoryLoader(split.images, split.labels, 32, seed=0)
    return state, step, loader


def _train(mesh, data_dir, n):
    state, step, loader = _setup(mesh, data_dir)
    losses = []
    for i in range(n):
        state, m = step(state, parallel.global_batch(loader.batch(i), mesh))
        losses.append(float(m["loss"]))
    return state, np.array(losses)


def test_a_few_steps_lower_the_loss(data_dir):
    _, losses = _train(parallel.make_mesh(jax.devices()[:1]), data_dir, 40)
    assert losses[-3:].mean() < 0.8 * losses[:3].mean()


def test_eight_devices_match_one_device_for_the_same_global_batch(data_dir):
    assert jax.device_count() == 8, "conftest sets 8 virtual CPU devices"
    s1, l1 = _train(parallel.make_mesh(jax.devices()[:1]), data_dir, 8)
    s8, l8 = _train(parallel.make_mesh(jax.devices()), data_dir, 8)
    np.testing.assert_allclose(l8, l1, rtol=0, atol=1e-5)
    # BatchNorm statistics are averaged over the device axis, so they match too.
    leaves8, leaves1 = jax.tree.leaves(parallel.to_host(s8)), jax.tree.leaves(parallel.to_host(s1))
    for a, b in zip(leaves8, leaves1, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_eval_step_counts_every_example_once_and_masks_padding(data_dir):
    mesh = parallel.make_mesh()
    state, _, _ = _setup(mesh, data_dir, batch_norm=False)
    split = data.load("digits", "test", data_dir)
    info = data.info_from("digits", data.load("digits", "train", data_dir))
    model = models.get_model("cnn", num_classes=10, features=(8, 16), dense=(32,))
    eval_step = steps.make_eval_step(mesh, model=model, mean=info.mean, std=info.std)
    totals = {"count": 0.0, "correct": 0.0, "loss": 0.0}
    confusion = np.zeros((10, 10), np.int64)
    for b in data.eval_batches(split.images, split.labels, 64):  # 450 = 7 * 64 + 2
        out = eval_step(state.variables, parallel.global_batch(b, mesh))
        for k in totals:
            totals[k] += float(out[k])
        assert out["confusion"].dtype == np.int32 and out["confusion"].shape == (10, 10)
        confusion += np.asarray(out["confusion"])
    assert totals["count"] == len(split) == 450
    # reference: the same model applied to the whole split at once, outside any mesh
    variables = {"params": parallel.to_host(state.params)}
    logits = model.apply(variables, steps.normalize(split.images, info.mean, info.std))
    correct = float(np.sum(np.argmax(logits, -1) == split.labels))
    loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, split.labels).sum())
    assert totals["correct"] == correct
    expected = np.zeros((10, 10), np.int64)  # [true, predicted], the padding left out
    np.add.at(expected, (split.labels, np.argmax(logits, -1)), 1)
    np.testing.assert_array_equal(confusion, expected)
    assert totals["loss"] == pytest.approx(loss, rel=1e-5)


def test_init_on_the_host_gives_the_same_replicated_state():
    # What accelerators do (init on this process's CPU, then copy), checked on 8 CPU devices.
    mesh = parallel.make_mesh(jax.devices()[:8])
    model = models.get_model("resnet18", num_classes=5, axis_name=parallel.AXIS)
    tx = optax.sgd(0.1, momentum=0.9)
    on_devices = steps.init_state(model, tx, 3, (16, 16, 3), mesh, on_host=False)
    on_host = steps.init_state(model, tx, 3, (16, 16, 3), mesh, on_host=True)
    assert jax.tree.structure(on_host) == jax.tree.structure(on_devices)
    for a, b in zip(jax.tree.leaves(on_host), jax.tree.leaves(on_devices), strict=True):
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
        assert len(a.addressable_shards) == 8
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        for shard in a.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(b))
