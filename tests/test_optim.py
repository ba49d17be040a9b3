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
