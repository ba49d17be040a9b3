"""Pictures: written at the end of training and by --mode=visualize, for a CNN and a ResNet."""

import ast
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from cnnjax import models, plot_data, training, viz
from cnnjax import run as run_lib
from cnnjax.config import model_config
from tests.helpers import tiny_config
from tests.runs import tiny_run  # noqa: F401 (a fixture)

PNGS = ("curves.png", "first_conv_filters.png", "feature_maps.png", "confusion_matrix.png")


def _check_pngs(directory):
    for name in PNGS:
        with Image.open(os.path.join(directory, name)) as im:
            pixels = np.asarray(im.convert("L"))
        assert im.format == "PNG" and min(im.size) >= 300, name
        assert pixels.std() > 10, f"{name} is blank"  # something was drawn


def test_training_writes_every_picture(tiny_run):  # noqa: F811
    workdir, _, _ = tiny_run
    plots = os.path.join(workdir, "plots")
    _check_pngs(plots)
    initial = np.load(os.path.join(plots, plot_data.INIT_KERNEL))
    assert initial.shape == (3, 3, 1, 8)  # tiny_config: 3x3 convolutions, 8 filters first


def test_visualize_any_checkpoint(tiny_run):  # noqa: F811
    workdir, _, _ = tiny_run
    written = run_lib.run_visualize(workdir, "10")
    assert sorted(os.path.basename(p) for p in written) == sorted(PNGS)
    _check_pngs(os.path.join(workdir, "plots", "10"))


def test_initial_filters_are_recovered_without_the_saved_file(tiny_run, tmp_path):  # noqa: F811
    workdir, _, _ = tiny_run

    run = run_lib.load(workdir)
    kernel = plot_data.initial_kernel(str(tmp_path), run.config, (8, 8, 1), 10)  # re-initialised
    saved = np.load(os.path.join(workdir, "plots", plot_data.INIT_KERNEL))
    np.testing.assert_array_equal(kernel, saved)


def test_first_conv_and_stages_are_found_in_a_resnet_by_execution_order():
    model = models.get_model("resnet18", num_classes=10, stage_sizes=(1, 1))
    images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    started, finished = plot_data.trace(model, variables, images, abstract=True)
    # In the sorted parameter tree 'bn1' and 'head' come before 'conv1'; in execution, not.
    assert plot_data._conv_path(started, variables["params"]) == ("conv1",)
    labels = [label for label, _ in plot_data.stages([(p, np.zeros(o.shape)) for p, o in finished])]
    assert labels == ["conv1 .. bn1  16x16x64", "layer1_0  8x8x64", "layer2_0  4x4x128"]


def test_a_tiny_resnet_run_writes_every_picture(data_dir, tmp_path):
    config = tiny_config(data_dir, num_steps=2, eval_every_steps=0, log_every_steps=1)
    config.model = model_config("cifar_resnet20", depth=8)  # 3 stages of one block, 8x8 input
    workdir = str(tmp_path / "resnet")
    training.run(config, workdir)
    plots = os.path.join(workdir, "plots")
    _check_pngs(plots)
    assert np.load(os.path.join(plots, plot_data.INIT_KERNEL)).shape == (3, 3, 1, 16)


def test_confusion_matrix_of_1000_classes_stays_a_bounded_picture(tmp_path):
    # An uncapped figure grew with the class count: 45,000 pixels a side, gigabytes of memory.
    cm = np.random.default_rng(0).integers(0, 5, (1000, 1000))
    path = str(tmp_path / "cm.png")
    viz.plot_confusion(cm, path)
    width, height = Image.open(path).size
    assert 0 < width <= 2000 and 0 < height <= 2000


def test_viz_draws_the_arrays_it_is_given_and_imports_no_model_code(tmp_path):
    rng = np.random.default_rng(0)
    shown = viz.Pictures(
        title="given", step=3,
        records=[{"step": 1, "train_loss": 1.0, "train_accuracy": 0.5},
                 {"step": 3, "eval_loss": 0.5, "eval_accuracy": 0.8}],
        confusion=rng.integers(0, 5, (3, 3)), image=rng.integers(0, 255, (8, 8, 1), np.uint8),
        stages=[("conv  4x4x2", rng.random((4, 4, 2)))],
        kernel=rng.normal(size=(3, 3, 1, 4)), initial_kernel=rng.normal(size=(3, 3, 1, 4)))
    written = viz.write_plots(str(tmp_path), shown)
    assert sorted(os.path.basename(p) for p in written) == sorted(PNGS)
    _check_pngs(str(tmp_path))
    imported = set()
    for node in ast.walk(ast.parse(open(viz.__file__).read())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "dataclasses", "os", "typing", "numpy", "matplotlib"}
