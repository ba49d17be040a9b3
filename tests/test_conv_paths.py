"""experiments.benchmarks.conv_paths: every convolution formulation against
lax.conv_general_dilated (values and both gradients), the convolutions read from a model
against its parameters, the substitution inside a model, and the command on a tiny model."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnnjax import models
from experiments.benchmarks import conv_paths

GEOMETRIES = [  # image shape, kernel shape, strides, explicit padding
    ((2, 6, 6, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1))),
    ((2, 7, 7, 3), (3, 3, 3, 4), (2, 2), ((1, 1), (1, 1))),
    ((2, 6, 8, 3), (3, 3, 3, 5), (1, 1), ((0, 0), (0, 0))),
    ((2, 6, 6, 3), (3, 3, 3, 4), (1, 1), ((2, 0), (1, 1))),
    ((2, 5, 5, 3), (1, 1, 3, 4), (1, 1), ((0, 0), (0, 0))),
    ((1, 9, 9, 2), (5, 3, 2, 3), (2, 1), ((2, 2), (1, 1))),
]


def _reference(x, w, strides, pads):
    return lax.conv_general_dilated(x, w, strides, pads,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("path", list(conv_paths.PATHS))
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[0]}-{g[1]}-s{g[2]}-p{g[3]}")
def test_every_path_is_lax_convolution_with_its_gradients(path, geometry):
    x_shape, w_shape, strides, pads = geometry
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
    w = jnp.asarray(rng.standard_normal(w_shape, np.float32))
    y_ref, vjp_ref = jax.vjp(lambda a, b: _reference(a, b, strides, pads), x, w)
    g = jnp.asarray(rng.standard_normal(y_ref.shape, np.float32))
    y, vjp = jax.vjp(lambda a, b: conv_paths.conv(path, a, b, strides, pads), x, w)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    for got, want in zip((y, *vjp(g)), (y_ref, *vjp_ref(g)), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_winograd_covers_only_3x3_stride_1_with_even_outputs():
    covers = conv_paths.covers
    assert covers("winograd", (2, 8, 8, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)))
    assert not covers("winograd", (2, 8, 8, 3), (3, 3, 3, 4), (2, 2), ((1, 1), (1, 1)))
    assert not covers("winograd", (2, 7, 7, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)))
    assert not covers("winograd", (2, 8, 8, 3), (1, 1, 3, 4), (1, 1), ((0, 0), (0, 0)))
    assert all(covers(p, (2, 7, 7, 3), (5, 5, 3, 4), (2, 2), ((2, 2), (2, 2)))
               for p in ("xla", "im2col", "taps", "tap_dw"))
    with pytest.raises(ValueError, match="unknown convolution path 'fft'.*winograd"):
        conv_paths.conv("fft", jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)))


def _kernels(params) -> list[tuple[int, ...]]:
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sorted(tuple(v.shape) for k, v in leaves if k[-1].key == "kernel" and v.ndim == 4)


@pytest.mark.parametrize("name,kwargs,image_shape", [
    ("cifar_resnet20", {}, (32, 32, 3)),
    ("cnn", {"features": (4, 8), "dense": (16,), "batch_norm": True}, (8, 8, 1)),
])
def test_conv_shapes_are_the_models_convolution_kernels(name, kwargs, image_shape):
    model = models.get_model(name, num_classes=10, **kwargs)
    found = conv_paths.conv_shapes(model, image_shape, batch_size=2)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape)))["params"]
    assert sorted(tuple(s["w"]) for s in found for _ in range(s["count"])) == _kernels(params)
    assert all(s["plain"] and s["x"][0] == 2 for s in found)
    if name == "cifar_resnet20":  # 3 stages of 3 blocks of 2 convolutions, and the stem
        assert sum(s["count"] for s in found) == 19
        assert {tuple(s["strides"]) for s in found} == {(1, 1), (2, 2)}


def _conv_count(fn, *args) -> int:
    jaxpr = jax.make_jaxpr(fn)(*args)
    return sum(eqn.primitive.name == "conv_general_dilated"
               for eqn in conv_paths._equations(jaxpr.jaxpr))


@pytest.mark.heavy  # .ci/run runs it; the bare suite covers the same more cheaply
def test_substituted_changes_the_models_program_not_its_function():
    model = models.get_model("cifar_resnet20", num_classes=10)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3), np.float32))
    variables = jax.jit(lambda k, x: model.init(k, x))(jax.random.key(0), x)

    def loss(params, stats):
        logits, _ = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                mutable=["batch_stats"])
        return jnp.sum(logits ** 2)

    def run(path):
        with conv_paths.substituted(path):
            count = _conv_count(jax.grad(loss), variables["params"], variables["batch_stats"])
            # Fresh functions, so that each is traced here, under this path.
            value, grads = jax.jit(jax.value_and_grad(lambda p, s: loss(p, s)))(
                variables["params"], variables["batch_stats"])
            if path == "winograd":  # initialisation is left alone (checked under one path)
                jax.tree.map(np.testing.assert_array_equal, variables,
                             jax.jit(lambda k, x: model.init(k, x))(jax.random.key(0), x))
        return count, value, grads

    shapes = conv_paths.conv_shapes(model, (8, 8, 3), 2)
    uncovered = sum(s["count"] for s in shapes if not conv_paths.covers(
        "winograd", s["x"], s["w"], s["strides"], s["pads"]))
    xla_count, want, want_grads = run("xla")
    # 19 forward passes and kernel gradients, and input gradients for all but the stem's
    assert xla_count == 19 + 18 + 19
    for path, expected in (("taps", 0), ("im2col", 0), ("winograd", 3 * uncovered)):
        count, value, grads = run(path)
        assert count == expected, path
        np.testing.assert_allclose(value, want, rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                     grads, want_grads)
    assert 0 < uncovered < 19


@pytest.mark.e2e
def test_command_times_convolutions_and_steps_on_a_tiny_model(tmp_path, capsys):
    out = tmp_path / "paths.json"
    result = conv_paths.main([
        "--model=cnn", '--model_kwargs={"features": [4, 8], "dense": [16]}', "--image_size=8",
        "--channels=1", "--batch_size=8", "--paths=xla,tap_dw,winograd", "--torch",
        "--repeats=1", "--steps=2", "--warmup=1", "--rounds=1", f"--json={out}"])
    saved = json.loads(out.read_text())
    assert saved["totals_ms"].keys() == {"xla", "tap_dw", "winograd", "torch"}
    for shape in saved["convolutions"]:
        for path in ("xla", "tap_dw", "torch"):
            assert set(shape["ms"][path]) == {"fwd", "dx", "dw"}
            assert all(v > 0 for v in shape["ms"][path].values())
    assert saved["steps"].keys() == {"xla", "tap_dw", "winograd"}
    losses = [r["loss_after_warmup"] for r in result["steps"].values()]
    np.testing.assert_allclose(losses, losses[0], rtol=1e-4)  # one function, three programs
    assert all(r["images_per_s"] > 0 for r in result["steps"].values())
    text = capsys.readouterr().out
    assert "images/s" in text and "kernel grad" in text


def test_command_rejects_an_unknown_path_before_measuring(capsys):
    with pytest.raises(SystemExit):
        conv_paths.main(["--paths=xla,fft"])
    assert "unknown ['fft']" in capsys.readouterr().err
