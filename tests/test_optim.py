import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import optim
from cnnjax.config import defaults


def _cfg(**kw):
    c = defaults().optimizer
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_warmup_then_cosine():
    s = optim.make_schedule(_cfg(learning_rate=1.0, warmup_epochs=1.0), 10, 110)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0)
    assert float(s(60)) == pytest.approx(0.5, abs=1e-6)  # halfway through the cosine
    assert float(s(110)) == pytest.approx(0.0, abs=1e-6)


def test_piecewise_constant_drops_at_epoch_boundaries():
    s = optim.make_schedule(
        _cfg(learning_rate=0.1, schedule="piecewise", boundaries_epochs=(2.0, 3.0)), 10, 50
    )
    assert [float(s(i)) for i in (0, 19, 20, 29, 30)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001]
    )


def test_weight_decay_skips_biases_and_norm_scales():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2), "scale": jnp.ones(2)}
    grads = {k: jnp.zeros_like(v) for k, v in params.items()}
    lr, wd = 0.1, 0.5
    for name in ("sgd", "adam", "adamw"):
        tx = optim.make_optimizer(
            _cfg(name=name, weight_decay=wd, momentum=0.0), optax.constant_schedule(lr)
        )
        updates, _ = tx.update(grads, tx.init(params), params)
        assert float(jnp.abs(updates["bias"]).max()) == 0.0
        assert float(jnp.abs(updates["scale"]).max()) == 0.0
        assert float(jnp.abs(updates["kernel"]).max()) > 0.0
    # sgd: the decay enters the gradient (L2): update = -lr * wd * w
    tx = optim.make_optimizer(_cfg(name="sgd", weight_decay=wd, momentum=0.0),
                              optax.constant_schedule(lr))
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -lr * wd * np.ones((2, 2)), rtol=1e-6)


def test_sgd_momentum_nesterov_matches_optax():
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([0.3, 0.1])}
    tx = optim.make_optimizer(_cfg(name="sgd", momentum=0.9, nesterov=True),
                              optax.constant_schedule(0.1))
    ref = optax.sgd(0.1, momentum=0.9, nesterov=True)
    s, r = tx.init(params), ref.init(params)
    for _ in range(3):
        u, s = tx.update(grads, s, params)
        v, r = ref.update(grads, r, params)
        np.testing.assert_allclose(u["w"], v["w"], rtol=1e-7)


def test_gradient_clipping():
    params = {"w": jnp.zeros(2)}
    tx = optim.make_optimizer(_cfg(name="sgd", momentum=0.0, grad_clip_norm=1.0),
                              optax.constant_schedule(1.0))
    u, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
    np.testing.assert_allclose(u["w"], [-0.6, -0.8], rtol=1e-6)


# ------------------------------------------------------------ every optimizer and schedule


def _params():
    """A conv kernel, a dense kernel, a bias, a BatchNorm scale and a head: each kind a rule
    treats differently (decay masks, LARS's trust ratio, Muon's matrices)."""
    k = iter(jax.random.split(jax.random.PRNGKey(0), 8))
    return {"conv": {"kernel": jax.random.normal(next(k), (3, 3, 2, 4))},
            "dense": {"kernel": jax.random.normal(next(k), (4, 5)),
                      "bias": jax.random.normal(next(k), (5,))},
            "bn": {"scale": 1.0 + 0.1 * jax.random.normal(next(k), (4,))},
            "head": {"kernel": jax.random.normal(next(k), (5, 3)), "bias": jnp.zeros(3)}}


def _grads(seed):
    return jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(seed), p.shape),
                        _params())


SCHED = optax.linear_schedule(0.05, 0.01, 10)
MASK = optim.decay_mask
# Each optimizer of the table with non-default settings, and Optax's own function called on
# the same settings.
REFERENCES = {
    "sgd": (dict(momentum=0.8, nesterov=True, weight_decay=0.01),
            optax.chain(optax.add_decayed_weights(0.01, MASK),
                        optax.sgd(SCHED, momentum=0.8, nesterov=True))),
    "adam": (dict(b1=0.8, b2=0.99, eps=1e-6),
             optax.adam(SCHED, b1=0.8, b2=0.99, eps=1e-6)),
    "adamw": (dict(weight_decay=0.05), optax.adamw(SCHED, weight_decay=0.05, mask=MASK)),
    "lamb": (dict(weight_decay=0.02, b2=0.99, eps=1e-6),
             optax.lamb(SCHED, b2=0.99, eps=1e-6, weight_decay=0.02, mask=MASK)),
    "lars": (dict(weight_decay=1e-4, momentum=0.9, trust_coefficient=0.02),
             optax.lars(SCHED, weight_decay=1e-4, weight_decay_mask=MASK, trust_coefficient=0.02,
                        trust_ratio_mask=MASK, momentum=0.9)),
    "lion": (dict(b2=0.99, weight_decay=0.1),
             optax.lion(SCHED, b2=0.99, weight_decay=0.1, mask=MASK)),
    # EfficientNet's TF recipe: decay 0.9, eps 1e-3 inside the root, momentum 0.9, ms from 1.
    "rmsprop": (dict(rms_decay=0.9, eps=1e-3, eps_in_sqrt=True, momentum=0.9,
                     rms_initial_scale=1.0, centered=True, weight_decay=1e-5),
                optax.chain(optax.add_decayed_weights(1e-5, MASK),
                            optax.rmsprop(SCHED, decay=0.9, eps=1e-3, initial_scale=1.0,
                                          eps_in_sqrt=True, centered=True, momentum=0.9))),
    "adafactor": (dict(weight_decay=0.01),
                  optax.adafactor(SCHED, weight_decay_rate=0.01, weight_decay_mask=MASK)),
    "muon": (dict(momentum=0.95, nesterov=True, weight_decay=0.01),
             optax.contrib.muon(SCHED, beta=0.95, nesterov=True, weight_decay=0.01,
                                weight_decay_mask=MASK,
                                muon_weight_dimension_numbers=optim.muon_dimensions("^head/"))),
    "schedule_free_adamw": (dict(weight_decay=0.01, b1=0.85),
                            optax.contrib.schedule_free_adamw(SCHED, b1=0.85, weight_decay=0.01)),
    "schedule_free_sgd": (dict(momentum=0.9, weight_decay=1e-3),
                          optax.contrib.schedule_free_sgd(SCHED, b1=0.9, weight_decay=1e-3)),
}


def test_every_optimizer_has_a_reference():
    assert set(REFERENCES) == set(optim.OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_each_optimizers_first_updates_equal_optax_called_directly(name):
    fields, ref = REFERENCES[name]
    tx = optim.make_optimizer(_cfg(name=name, **fields), SCHED)
    params = p_ref = _params()
    s, r = tx.init(params), ref.init(params)
    for seed in (1, 2):  # the first update and one that reads the state it left
        u, s = tx.update(_grads(seed), s, params)
        v, r = ref.update(_grads(seed), r, p_ref)
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        assert any(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(u))
        params = p_ref = optax.apply_updates(params, u)


def test_lars_leaves_batchnorm_scales_and_biases_out_of_decay_and_trust_ratio():
    params, grads = _params(), _grads(1)
    tx = optim.make_optimizer(_cfg(name="lars", weight_decay=0.1, momentum=0.9), SCHED)
    u, _ = tx.update(grads, tx.init(params), params)
    # plain momentum SGD on the first step: -lr * g
    np.testing.assert_allclose(u["bn"]["scale"], -0.05 * grads["bn"]["scale"], rtol=1e-6)
    np.testing.assert_allclose(u["dense"]["bias"], -0.05 * grads["dense"]["bias"], rtol=1e-6)
    # kernels: trust ratio 0.001 * ||w|| / ||g + wd w|| scales the step
    w, g = params["conv"]["kernel"], grads["conv"]["kernel"] + 0.1 * params["conv"]["kernel"]
    ratio = 0.001 * jnp.linalg.norm(w) / jnp.linalg.norm(g)
    np.testing.assert_allclose(u["conv"]["kernel"], -0.05 * ratio * g, rtol=1e-5)


def test_muon_orthogonalises_conv_and_hidden_kernels_and_leaves_the_rest_to_adam():
    dims = optim.muon_dimensions("^head/")(_params())
    assert dims["conv"]["kernel"] == optax.contrib.MuonDimensionNumbers((0, 1, 2), 3)
    assert dims["dense"]["kernel"] == optax.contrib.MuonDimensionNumbers((0,), 1)
    assert dims["head"]["kernel"] is None and dims["dense"]["bias"] is None
    assert dims["bn"]["scale"] is None


def _curve(s, n):
    return np.array([float(s(i)) for i in range(n)])


# (fields, steps per epoch, total steps, Optax's schedule of the same run)
SCHEDULE_REFERENCES = {
    "constant": (dict(), 10, 100, optax.constant_schedule(0.4)),
    "cosine": (dict(warmup_epochs=1.5), 10, 100, optax.join_schedules(
        [optax.linear_schedule(0.0, 0.4, 15), optax.cosine_decay_schedule(0.4, 85)], [15])),
    "piecewise": (dict(boundaries_epochs=(3.0, 6.0), decay_factor=0.5), 10, 100,
                  optax.piecewise_constant_schedule(0.4, {30: 0.5, 60: 0.5})),
    "linear": (dict(final_lr_fraction=0.25, warmup_steps=7), 10, 100, optax.join_schedules(
        [optax.linear_schedule(0.0, 0.4, 7), optax.linear_schedule(0.4, 0.1, 93)], [7])),
    "polynomial": (dict(power=3.0), 10, 100, optax.polynomial_schedule(0.4, 0.0, 3.0, 100)),
    "exponential": (dict(decay_factor=0.97, decay_epochs=2.4, staircase=True), 10, 100,
                    optax.exponential_decay(0.4, 24, 0.97, staircase=True)),
    "onecycle": (dict(pct_start=0.25, div_factor=10.0, final_div_factor=100.0), 10, 100,
                 optax.cosine_onecycle_schedule(100, 0.4, 0.25, 10.0, 100.0)),
    "cosine_restarts": (dict(restart_epochs=2.0, restart_mult=2.0, warmup_epochs=1.0), 10, 100,
                        optax.join_schedules([optax.linear_schedule(0.0, 0.4, 10),
                                              optax.sgdr_schedule(
                            [dict(init_value=0.4, peak_value=0.4, decay_steps=n, warmup_steps=0,
                                  end_value=0.0) for n in (20, 40, 80)])], [10])),
}


def test_every_schedule_has_a_reference():
    assert set(SCHEDULE_REFERENCES) == set(optim.SCHEDULES)


@pytest.mark.parametrize("name", sorted(SCHEDULE_REFERENCES))
def test_each_schedules_curve_equals_optax(name):
    fields, spe, total, ref = SCHEDULE_REFERENCES[name]
    s = optim.make_schedule(_cfg(schedule=name, learning_rate=0.4, **fields), spe, total)
    np.testing.assert_allclose(_curve(s, total + 5), _curve(ref, total + 5), rtol=1e-6,
                               atol=1e-9)


def test_schedules_count_updates_under_accumulation():
    cfg = _cfg(schedule="cosine", learning_rate=0.4, accumulate_steps=4, warmup_steps=8)
    s = optim.make_schedule(cfg, 10, 100)  # 2.5 updates an epoch, 25 in all, 2 of warm-up
    ref = optax.join_schedules([optax.linear_schedule(0.0, 0.4, 2),
                                optax.cosine_decay_schedule(0.4, 23)], [2])
    np.testing.assert_allclose(_curve(s, 30), _curve(ref, 30), rtol=1e-6, atol=1e-9)
    per_step = optim.step_schedule(cfg, s)
    assert [float(per_step(i)) for i in (0, 3, 4, 7, 8)] == pytest.approx(
        [float(ref(0)), float(ref(0)), float(ref(1)), float(ref(1)), float(ref(2))])


# ------------------------------------------------------------------ schedule-free weights


def test_schedule_free_eval_params_are_optax_s_average():
    params = _params()
    for name in optim.SCHEDULE_FREE:
        tx = optim.make_optimizer(_cfg(name=name, grad_clip_norm=1.0), SCHED)
        s = tx.init(params)
        for seed in (1, 2, 3):
            u, s = tx.update(_grads(seed), s, params)
            params = optax.apply_updates(params, u)
        inner = s[-1]  # the chain: clipping, then the schedule-free state
        expected = optax.contrib.schedule_free_eval_params(inner, params)
        got = optim.eval_params(s, params)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
            np.testing.assert_array_equal(a, b)
        assert not np.allclose(got["conv"]["kernel"], params["conv"]["kernel"])
        # the same from the state as a checkpoint holds it: plain dicts of its fields
        raw = [None, {f: getattr(inner, f) for f in inner._fields}]
        for a, b in zip(jax.tree.leaves(optim.eval_params(raw, params)),
                        jax.tree.leaves(expected), strict=True):
            np.testing.assert_array_equal(a, b)
    tx = optim.make_optimizer(_cfg(name="adamw"), SCHED)
    assert optim.eval_params(tx.init(params), params) is params


def test_schedule_free_with_a_frozen_backbone_keeps_the_backbone():
    params = _params()
    tx = optim.make_optimizer(_cfg(name="schedule_free_sgd", freeze_backbone=True), SCHED)
    s = tx.init(params)
    for seed in (1, 2):  # after one step the average is still the iterate itself
        u, s = tx.update(_grads(seed), s, params)
        params = optax.apply_updates(params, u)
    got = optim.eval_params(s, params)
    np.testing.assert_array_equal(got["conv"]["kernel"], params["conv"]["kernel"])
    assert not np.allclose(got["head"]["kernel"], params["head"]["kernel"])


# ------------------------------------------------------------------ layer-wise rate decay


def test_layer_depths_follow_the_forward_pass_of_a_zoo_model():
    from cnnjax import models

    model = models.get_model("resnet18", num_classes=10)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                               train=False))["params"]
    depths = optim.layer_depths(model, (32, 32, 3), "^head/")(params)
    blocks = ["conv1", "bn1", "layer1_0", "layer1_1", "layer2_0", "layer2_1", "layer3_0",
              "layer3_1", "layer4_0", "layer4_1"]
    got = {b: {d for d in jax.tree.leaves(depths[b])} for b in blocks}
    assert got == {b: {len(blocks) - i} for i, b in enumerate(blocks)}
    assert set(jax.tree.leaves(depths["head"])) == {0}


def test_layer_decay_scales_each_depth_on_top_of_the_backbone_scale():
    params = _params()
    order = {"conv": 3, "bn": 2, "dense": 1, "head": 0}

    def depths(p):
        return {k: jax.tree.map(lambda _, d=order[k]: d, v) for k, v in p.items()}

    cfg = _cfg(name="sgd", momentum=0.0, layer_decay=0.5, backbone_lr_scale=0.8)
    tx = optim.make_optimizer(cfg, optax.constant_schedule(0.1), depths)
    grads = _grads(1)
    u, _ = tx.update(grads, tx.init(params), params)
    for k, d in order.items():
        scale = 1.0 if k == "head" else 0.8 * 0.5 ** d
        for a, g in zip(jax.tree.leaves(u[k]), jax.tree.leaves(grads[k]), strict=True):
            np.testing.assert_allclose(a, -0.1 * scale * g, rtol=1e-6)


# ------------------------------------------------- SAM and accumulation through the step


def _step_setup(**fields):
    """A BatchNorm-free CNN, its train step on one device (no augmentation) and 8x8 batches."""
    from cnnjax import models, parallel, steps

    mesh = parallel.make_mesh(jax.devices()[:1])
    model = models.get_model("cnn", num_classes=3, features=(4,), dense=(8,),
                             axis_name=parallel.AXIS)
    cfg = _cfg(name="sgd", learning_rate=0.1, momentum=0.0, **fields)
    schedule = optim.make_schedule(cfg, 10, 100)
    tx = optim.make_optimizer(cfg, schedule)
    state = steps.init_state(model, tx, 0, (8, 8, 1), mesh)
    step = steps.make_train_step(mesh, model=model, tx=tx,
                                 schedule=optim.step_schedule(cfg, schedule), mean=(100.0,),
                                 std=(50.0,), sam_rho=cfg.sam_rho)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, 16).astype(np.int32)

    def batch(lo, hi):
        return parallel.global_batch({"images": images[lo:hi], "labels": labels[lo:hi]}, mesh)

    def loss(params, lo, hi):
        x = (images[lo:hi].astype(np.float32) - 100.0) / 50.0
        logits = model.apply({"params": params}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels[lo:hi]).mean()

    return state, step, batch, loss


def test_sam_update_is_the_gradient_at_the_perturbed_point():
    rho = 0.05
    state, step, batch, loss = _step_setup(sam_rho=rho)
    params = jax.device_get(state.params)
    g = jax.grad(loss)(params, 0, 16)
    norm = optax.tree.norm(g)
    ascent = jax.tree.map(lambda p, gi: p + rho * gi / norm, params, g)
    expected = jax.tree.map(lambda p, gi: p - 0.1 * gi, params, jax.grad(loss)(ascent, 0, 16))
    new, _ = step(state, batch(0, 16))
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    plain = jax.tree.map(lambda p, gi: p - 0.1 * gi, params, g)
    assert not np.allclose(new.params["head"]["kernel"], plain["head"]["kernel"])


def test_accumulating_k_batches_equals_one_step_on_a_k_times_larger_batch():
    state, step, batch, _ = _step_setup(accumulate_steps=4)
    big_state, big_step, _, _ = _step_setup()
    before = jax.device_get(state.params)
    rates = []
    for i in range(4):
        state, m = step(state, batch(4 * i, 4 * i + 4))
        rates.append(float(m["learning_rate"]))
        if i < 3:  # no update until the fourth batch
            for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before), strict=True):
                np.testing.assert_array_equal(a, b)
    big_state, m = big_step(big_state, batch(0, 16))
    assert rates == [float(m["learning_rate"])] * 4  # the rate of the update they make
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(big_state.params),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(state.params["head"]["kernel"], before["head"]["kernel"])


# ------------------------------------------------------------------ through training.run


@pytest.mark.e2e  # three launches of training.run and an evaluation: about 12 s on a free CPU
def test_schedule_free_accumulated_run_resumes_exactly_and_evaluates_its_average(tmp_path,
                                                                                 data_dir):
    import os
    import types

    from cnnjax import checkpoint, training
    from cnnjax import run as run_lib
    from cnnjax.metrics import read_jsonl
    from tests.helpers import tiny_config

    config = tiny_config(data_dir, num_steps=8, eval_every_steps=0, checkpoint_every_steps=100,
                         plots=False)
    config.optimizer.name, config.optimizer.learning_rate = "schedule_free_adamw", 0.01
    config.optimizer.accumulate_steps = 2
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    training.run(config, straight)
    training.run(config, resumed, stop_at_step=5)  # half-way through an accumulation
    summary = training.run(config, resumed)
    states = [checkpoint.read_step(os.path.join(w, "checkpoints"), 8)[0]
              for w in (straight, resumed)]
    a, b = (jax.tree.leaves(s) for s in states)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)  # bit for bit
    assert read_jsonl(os.path.join(straight, "metrics.jsonl"))[-1]["eval_accuracy"] \
        == summary["eval_accuracy"]

    # What evaluation reads is the method's average x = (y - (1 - b1) z) / b1 of the
    # checkpoint, and the loop's last evaluation was of those weights.
    state = states[0]
    inner = state["opt_state"]["inner_opt_state"][-1]
    expected = optax.contrib.schedule_free_eval_params(
        types.SimpleNamespace(b1=inner["b1"], z=inner["z"]), state["params"])
    run = run_lib.load(straight)
    for x, y in zip(jax.tree.leaves(run.variables["params"]), jax.tree.leaves(expected),
                    strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(run.variables["params"]["head"]["kernel"],
                           state["params"]["head"]["kernel"])
    got = run_lib.evaluate_run(run)
    assert got["eval_accuracy"] == summary["eval_accuracy"]


SWEPT = ("sgd", "adamw", "lamb", "lars", "lion", "rmsprop", "muon", "schedule_free_adamw")


@pytest.mark.e2e
def test_launch_sweeps_the_optimizers_over_the_default_experiment(tmp_path, data_dir):
    import csv
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workdir = str(tmp_path / "optimizers")
    env = {**os.environ, "TFDS_DATA_DIR": data_dir,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    result = subprocess.run(
        [sys.executable, os.path.join(root, "launch.py"),
         f"--sweep=optimizer.name={','.join(SWEPT)}", "--config.train.num_steps=6",
         "--config.train.plots=False", f"--workdir={workdir}"],
        capture_output=True, text=True, env=env, cwd=root, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(workdir, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["optimizer.name"] for r in rows] == list(SWEPT)
    for r in rows:
        assert r["status"] == "finished" and r["step"] == "6", r
        assert 0.0 <= float(r["eval_accuracy"]) <= 1.0 and np.isfinite(float(r["eval_loss"]))
    assert "8 of 8 points finished" in open(os.path.join(workdir, "results.md")).read()
