"""Grad-CAM and saliency (``--mode=explain``, ``run.explain``): the heat map of a network
trained to find a bright square lands on the square; the PNGs and their titles; bad input."""

import dataclasses
import os
import shutil

import numpy as np
import pytest

import cnnjax
from cnnjax import explain, training
from cnnjax.config import defaults, model_config
from tests.helpers import assert_refused, command
from tests.runs import tiny_run  # noqa: F401

SIDE, SQUARE = 24, 6


def squares(n, seed):
    """Noise images; half hold a bright SQUARE x SQUARE square somewhere (class 1)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 110, (n, SIDE, SIDE, 1)).astype(np.uint8)
    labels = np.arange(n) % 2
    corners = rng.integers(0, SIDE - SQUARE + 1, (n, 2))
    for i in np.flatnonzero(labels):
        r, c = corners[i]
        images[i, r:r + SQUARE, c:c + SQUARE] = rng.integers(220, 256, (SQUARE, SQUARE, 1))
    return images, labels, corners


@pytest.fixture(scope="module")
def square_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("squares")
    images, labels, _ = squares(1200, 0)
    test_images, test_labels, _ = squares(200, 1)
    path = root / "squares.npz"
    np.savez(path, images=images, labels=labels, test_images=test_images,
             test_labels=test_labels)
    c = defaults()
    c.data.name = f"npz:{path}"
    c.data.batch_size = 64
    c.data.eval_batch_size = 200
    c.model = model_config("cnn", features=(8, 16), dense=(32,))
    c.optimizer.learning_rate = 0.05
    c.train.num_steps = 150
    c.train.eval_every_steps = 150
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 150
    c.train.plots = False
    workdir = str(root / "run")
    summary = training.run(c, workdir)
    assert summary["eval_accuracy"] > 0.95, summary
    return workdir


def test_the_heat_map_of_a_square_detector_lands_on_the_square(square_run):
    images, labels, corners = squares(100, 2)
    run = cnnjax.load(square_run)
    shown = run.explain(images, write=False)
    assert shown.gradcam.shape == shown.saliency.shape == (100, SIDE, SIDE)
    assert shown.layer.startswith("Conv_1") and shown.layer.endswith("12x12x16"), shown.layer
    np.testing.assert_allclose(shown.probability, run.predict(images).max(-1), rtol=1e-5)
    hits, brighter = [], []
    for i in np.flatnonzero(labels):
        r, c = corners[i]
        peak = np.unravel_index(np.argmax(shown.gradcam[i]), (SIDE, SIDE))
        hits.append(r <= peak[0] < r + SQUARE and c <= peak[1] < c + SQUARE)
        inside = np.zeros((SIDE, SIDE), bool)
        inside[r:r + SQUARE, c:c + SQUARE] = True
        brighter.append(shown.saliency[i][inside].mean() > 2 * shown.saliency[i][~inside].mean())
    print(f"Grad-CAM peak on the square: {np.mean(hits):.2f}; saliency twice as high on it as "
          f"off it: {np.mean(brighter):.2f}")
    assert np.mean(hits) >= 0.9 and np.mean(brighter) >= 0.9
    np.testing.assert_array_equal(shown.predicted[labels == 1], 1)


def test_a_random_networks_heat_map_misses_the_square(square_run):
    """The same measure on the untrained network: far from 90%, so the test above can fail."""
    import jax

    images, labels, corners = squares(100, 2)
    run = cnnjax.load(square_run)
    variables = run.model.init(jax.random.key(7), images[:1].astype(np.float32))
    run = dataclasses.replace(run, variables=jax.device_get(variables))  # a loaded run is frozen
    shown = run.explain(images, write=False)
    hits = [r <= p[0] < r + SQUARE and c <= p[1] < c + SQUARE
            for i in np.flatnonzero(labels)
            for (r, c), p in [(corners[i], np.unravel_index(np.argmax(shown.gradcam[i]),
                                                             (SIDE, SIDE)))]]
    assert np.mean(hits) < 0.6, np.mean(hits)


def test_explain_mode_writes_titled_pngs_beside_the_plots(tiny_run, capsys, tmp_path):  # noqa: F811
    workdir = str(shutil.copytree(tiny_run[0], tmp_path / "run"))
    result = command(capsys, "--mode=explain", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("checkpoint latest (step 20); Grad-CAM of BatchNorm_1")
    assert len(lines) == 1 + explain.DEFAULT_COUNT
    for i, line in enumerate(lines[1:]):
        path = os.path.join(workdir, "plots", f"explain_{i}.png")
        assert line.startswith(f"test image {i}: class ") and line.endswith(f"-> {path}")
        assert ", true class " in line
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # the word form, a checkpoint other than the latest, image files as inputs
    from PIL import Image

    png = tmp_path / "seven.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(png)
    result = command(capsys, "explain", f"--workdir={workdir}", "--checkpoint=10",
                     f"--images={png}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[1].startswith(f"{png}: class ")
    assert os.path.isfile(os.path.join(workdir, "plots", "10", "explain_0.png"))


def test_an_mlp_gets_saliency_only(data_dir, tmp_path):
    c = defaults()
    c.data.data_dir = data_dir
    c.model = model_config("mlp", hidden=(16,))
    c.train.num_steps = 2
    c.train.plots = False
    training.run(c, str(tmp_path / "mlp"))
    shown = cnnjax.load(str(tmp_path / "mlp")).explain()
    assert shown.gradcam is None and shown.layer is None
    assert shown.saliency.shape == (explain.DEFAULT_COUNT, 8, 8)
    assert np.allclose(shown.saliency.max(axis=(1, 2)), 1.0)
    assert len(shown.paths) == explain.DEFAULT_COUNT and all(map(os.path.isfile, shown.paths))


@pytest.mark.parametrize("args, message", [
    (["--mode=explain"], "--mode=explain needs --workdir=W"),
    (["--mode=explain", "--workdir={empty}"], "no checkpoint in"),
    (["--mode=explain", "--workdir={run}", "--images={missing}"], "not found"),
    (["--mode=explain", "--workdir={run}", "--format=onnx"], "--format is for --mode=export"),
    (["--mode=eval", "--workdir={run}", "--images={missing}"], "--inputs is for"),
    (["explain", "--mode=eval", "--workdir={run}"], "explain and --mode=eval ask for two"),
    (["explain", "extra", "--workdir={run}"], "unexpected arguments: extra"),
])
def test_bad_explain_inputs_are_one_line_and_write_nothing(tiny_run, capsys, tmp_path,  # noqa: F811
                                                           args, message):
    assert_refused(capsys, tiny_run[0], args, message, empty=str(tmp_path),
                   missing=str(tmp_path / "none.png"))
