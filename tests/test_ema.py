"""The moving average of the weights (train.ema_decay): the arithmetic against numpy, exact
resume, checkpoints of runs with and without it, and --ema for evaluation."""

import os

import jax
import numpy as np
import optax
import pytest

from cnnjax import checkpoint, data, models, parallel, steps, training
from cnnjax import run as run_lib
from cnnjax.config import ConfigError, validate
from tests.helpers import tiny_config


def test_the_average_is_the_one_numpy_computes_from_every_steps_weights(data_dir):
    config = tiny_config(data_dir)
    built = data.build(config.data, 0, 0, 1)
    model = models.from_config(config.model, built.info.num_classes, axis_name=parallel.AXIS)
    mesh = parallel.make_mesh()
    tx = optax.sgd(0.05, momentum=0.9)
    state = steps.init_state(model, tx, 0, built.info.image_shape, mesh)
    state = state.replace(ema=steps.copy(state.variables))
    step = steps.make_train_step(mesh, model=model, tx=tx, schedule=optax.constant_schedule(0.05),
                                 mean=built.info.mean, std=built.info.std, ema_decay=0.8)
    expected = jax.tree.map(np.asarray, jax.device_get(state.variables))
    for i in range(5):
        state, _ = step(state, parallel.global_batch(built.train.batch(i), mesh))
        now = jax.device_get(state.variables)
        expected = jax.tree.map(lambda e, v: np.float32(0.8) * e + np.float32(0.2) * v,
                                expected, now)
    got = jax.device_get(state.ema)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)
    # An average, not the weights: after 5 steps they differ.
    assert not np.allclose(jax.tree.leaves(got)[0], jax.tree.leaves(now)[0])


def test_a_run_with_an_average_resumes_bit_for_bit_and_evaluates_it(tmp_path, data_dir):
    config = tiny_config(data_dir, ema_decay=0.9, plots=False, best_metric="eval_ema_accuracy")
    straight = str(tmp_path / "straight")
    summary = training.run(config, straight)
    resumed = str(tmp_path / "resumed")
    training.run(config, resumed, stop_at_step=7)
    again = training.run(config, resumed)
    same = lambda s: {k: v for k, v in s.items() if k != "workdir" and not k.endswith("_s")}
    assert same(again) == same(summary)
    a, _ = checkpoint.read_step(os.path.join(straight, "checkpoints"), 20)
    b, _ = checkpoint.read_step(os.path.join(resumed, "checkpoints"), 20)
    for x, y in zip(jax.tree.leaves(a["ema"]), jax.tree.leaves(b["ema"]), strict=True):
        np.testing.assert_array_equal(x, y)
    assert {"eval_ema_accuracy", "eval_ema_loss", "eval_ema_top5_accuracy"} <= set(summary)
    assert summary["best_metric"] == "eval_ema_accuracy"

    # --ema evaluates the average: the numbers the loop reported for it.
    result = run_lib.run_eval(straight, "latest", ema=True)
    assert result["eval_accuracy"] == summary["eval_ema_accuracy"]
    assert result["eval_loss"] == pytest.approx(summary["eval_ema_loss"], rel=1e-6)
    assert run_lib.run_eval(straight, "latest")["eval_accuracy"] == summary["eval_accuracy"]


def test_turning_the_average_on_or_off_on_a_resume_keeps_the_checkpoint(tmp_path, data_dir):
    workdir = str(tmp_path / "run")
    training.run(tiny_config(data_dir, plots=False), workdir, stop_at_step=10)
    with_average = tiny_config(data_dir, plots=False, ema_decay=0.9)
    summary = training.run(with_average, workdir, allow_config_change=True, stop_at_step=15)
    state, _ = checkpoint.read_step(os.path.join(workdir, "checkpoints"), 15)
    assert summary["step"] == 15 and state["ema"]  # resumed, not started again
    assert os.listdir(os.path.join(workdir, "checkpoints")) and not os.path.exists(
        os.path.join(workdir, "checkpoints_damaged"))
    summary = training.run(tiny_config(data_dir, plots=False), workdir, allow_config_change=True)
    assert summary["step"] == 20 and "eval_ema_accuracy" not in summary
    assert not os.path.exists(os.path.join(workdir, "checkpoints_damaged"))
    with pytest.raises(ConfigError, match="holds no average of the weights"):
        run_lib.load(workdir, "latest", ema=True)


def test_an_ema_best_metric_needs_the_average(data_dir):
    with pytest.raises(ConfigError, match="needs the average of the weights"):
        validate(tiny_config(data_dir, best_metric="eval_ema_accuracy"))
    with pytest.raises(ConfigError, match="train.ema_decay must be in \\[0, 1\\)"):
        validate(tiny_config(data_dir, ema_decay=1.0))
