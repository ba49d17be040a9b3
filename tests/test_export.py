"""Export (``cnnjax export``, ``run.export``): the StableHLO file, loaded back from its bytes,
gives the JAX model's logits for any batch; BatchNorm folding is exact; every zoo family's
smallest model exports within 1e-5, as StableHLO and (-m onnx) as ONNX with the default CNN; a
file over the tolerance, an unknown format, a workdir without a checkpoint or a missing extra
writes nothing and is one line."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnnjax
from cnnjax import export
from cnnjax.data import DatasetInfo
from cnnjax.models import get_model, layers
from tests.helpers import assert_refused, command, snapshot
from tests.runs import tiny_run  # noqa: F401


def test_the_stablehlo_file_gives_the_models_logits_for_any_batch(tiny_run, capsys,  # noqa: F811
                                                                 tmp_path):
    workdir = str(shutil.copytree(tiny_run[0], tmp_path / "run"))
    result = command(capsys, "export", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr
    path = os.path.join(workdir, "export", "step20.stablehlo")
    assert result.stdout.startswith(f"{path}: stablehlo, logits within ")
    assert "(tolerance 1e-05; 2 BatchNorms folded)" in result.stdout
    with open(f"{path}.json") as f:
        meta = json.load(f)
    assert meta["difference"] <= 1e-5 and meta["folded_batchnorms"] == 2
    assert meta["input"]["shape"] == ["batch", 8, 8, 1] and meta["step"] == 20
    run = cnnjax.load(workdir, "latest")
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1)).astype(np.uint8)
    with open(path, "rb") as f:
        program = jax.export.deserialize(bytearray(f.read()))
    assert set(program.platforms) == {"cpu", "cuda"}
    want = run.model.apply(run.variables, (images - run.info.mean[0]) / run.info.std[0])
    for n in (1, 5):  # the batch is symbolic
        got = np.asarray(program.call(jnp.asarray(images[:n])))
        np.testing.assert_allclose(got, want[:n], rtol=1e-5, atol=1e-5 * np.abs(want).max())
    probs = jax.nn.softmax(program.call(jnp.asarray(images)))
    np.testing.assert_allclose(probs, run.predict(images), atol=1e-6)


@pytest.mark.heavy  # .ci/run runs it; the bare suite covers the same more cheaply
def test_folded_batchnorms_give_the_unfolded_logits():
    model = get_model("resnet18", num_classes=10)
    variables = _with_random_statistics(model, 32)
    apply, folded, count = export.fold_batchnorm(model, variables, (32, 32, 3))
    assert count == 20  # every BatchNorm of resnet18 follows a convolution
    assert "batch_stats" in folded and not np.array_equal(
        folded["params"]["conv1"]["kernel"], variables["params"]["conv1"]["kernel"])
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    want = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    got = jax.jit(apply)(folded, x)
    assert export.relative_difference(got, want) < 1e-5
    assert jnp.abs(want).max() > 0.1


def _with_random_statistics(model, side, seed=0, channels=3):
    """Variables with BatchNorm statistics and scales away from their defaults, so that a
    wrong fold shows in the logits."""
    variables = jax.device_get(model.init(jax.random.key(seed),
                                          jnp.zeros((1, side, side, channels))))
    rng = np.random.default_rng(seed)

    def randomise(path, x):
        name = path[-1].key
        if name == "mean":
            return rng.normal(0, 0.1, x.shape).astype(x.dtype)
        if name == "var":
            return rng.uniform(0.5, 1.5, x.shape).astype(x.dtype)
        if name == "scale" and path[0].key == "params":
            return rng.uniform(0.5, 1.0, x.shape).astype(x.dtype)
        return x

    return jax.tree_util.tree_map_with_path(randomise, variables)


FAMILIES = ["resnet18"]  # the default suite; -m zoo exports the rest
ZOO = ["mobilenet_v3_small", "resnext50_32x4d", "wide_resnet50_2", "vgg11", "vgg11_bn",
       "convnext_tiny", "efficientnet_b0", "efficientnet_v2_s", "mobilenet_v2", "densenet121",
       "regnet_x_400mf", "regnet_y_400mf"]


def _family(arch, side=32, channels=3):
    """``(model, variables with random statistics, dataset info, 4 uint8 images)``."""
    model = get_model(arch, num_classes=10)
    variables = _with_random_statistics(model, side, channels=channels)
    info = DatasetInfo("random", 10, (side, side, channels), (120.0, 115.0, 100.0)[:channels],
                       (60.0, 62.0, 64.0)[:channels])
    images = np.random.default_rng(1).integers(0, 256, (4, side, side, channels)).astype(
        np.uint8)
    return model, variables, info, images


def _check_family(arch):
    model, variables, info, images = _family(arch)
    blob, difference, count = export.convert(model, variables, info, images, "stablehlo")
    print(f"{arch}: {len(blob)} bytes, {count} BatchNorms folded, difference {difference:.1e}")
    assert difference <= 1e-5
    if "batch_stats" in variables:
        assert count > 0


@pytest.mark.parametrize("arch", FAMILIES)
def test_each_familys_smallest_model_exports_within_1e_5(arch):
    _check_family(arch)


@pytest.mark.zoo
@pytest.mark.parametrize("arch", ZOO)
def test_each_familys_smallest_model_exports_within_1e_5_zoo(arch):
    _check_family(arch)


def test_a_file_over_the_tolerance_is_not_written(tiny_run, capsys, monkeypatch):  # noqa: F811
    workdir = tiny_run[0]
    before = snapshot(workdir)
    stablehlo = export.FORMATS["stablehlo"]  # a format whose file runs 0.1% off
    monkeypatch.setitem(export.FORMATS, "stablehlo", dataclasses.replace(
        stablehlo, run=lambda blob, x: stablehlo.run(blob, x) * 1.001))
    result = command(capsys, "export", f"--workdir={workdir}", "--checkpoint=10")
    assert result.returncode == 2
    assert result.stderr.startswith("error: the stablehlo export of cnn differs from the JAX "
                                    "model by 1.00e-03") and "tolerance 1e-05" in result.stderr
    assert result.stderr.count("\n") == 1
    assert snapshot(workdir) == before


@pytest.mark.parametrize("args, message", [
    (["export", "--workdir={run}", "--format=tflite"],
     "unknown export format 'tflite'; choose one of stablehlo, onnx"),
    (["export", "--workdir={empty}"], "no checkpoint in"),
    (["export"], "--mode=export needs --workdir=W"),
    (["export", "--workdir={run}", "--tolerance=-1"], "tolerance must be a number >= 0"),
    (["export", "--workdir={run}", "--checkpoint=7"], "no checkpoint at step 7"),
    (["export", "--workdir={run}", "--ema"], "holds no average of the weights"),
    (["--mode=eval", "--workdir={run}", "--tolerance=1"], "--tolerance is for --mode=export"),
    (["export", "--workdir={run}", "--format=onnx"], "--format=onnx needs jax2onnx"),
])
def test_bad_export_inputs_are_one_line_and_write_nothing(tiny_run, capsys, tmp_path,  # noqa: F811
                                                          monkeypatch, args, message):
    monkeypatch.setattr(export, "onnx_available", lambda: False)  # a missing extra
    assert_refused(capsys, tiny_run[0], args, message, empty=str(tmp_path))


# ONNX needs the export extra and jax2onnx (docs/deploy.md), which .ci/run installs and then
# runs these (-m onnx); the bare suite leaves them out.
DEFAULT_CNN = ("cnn", 8, 1)  # the default run's model, on its 8x8 grey digits


def _onnx_parity(arch, side=32, channels=3):
    """The ONNX file of ``arch``'s smallest model, run by onnxruntime on batches of 1 and 4,
    against the JAX model's own logits (its CPU switches on, as a run computes them)."""
    model, variables, info, images = _family(arch, side, channels)
    blob, difference, _ = export.convert(model, variables, info, images, "onnx")
    assert difference <= 1e-5
    import onnx

    batch = onnx.load_from_string(blob).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"  # symbolic, not a number
    x = (images - np.asarray(info.mean, np.float32)) / np.asarray(info.std, np.float32)
    want = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
    worst = 0.0
    for n in (1, 4):
        worst = max(worst, export.relative_difference(export.run_onnx(blob, images[:n]),
                                                      want[:n]))
    print(f"{arch}: onnx {len(blob)} bytes, logits within {worst:.1e} of JAX")
    assert worst <= 1e-5


@pytest.mark.onnx
@pytest.mark.parametrize("arch", FAMILIES + ZOO)
def test_each_familys_smallest_model_exports_to_onnx_within_1e_5(arch):
    _onnx_parity(arch)


@pytest.mark.onnx
def test_the_default_cnn_exports_to_onnx_within_1e_5():
    _onnx_parity(*DEFAULT_CNN)


@pytest.mark.onnx
def test_the_onnx_file_of_a_run_gives_its_logits_for_any_batch(tiny_run, capsys,  # noqa: F811
                                                               tmp_path):
    import onnx

    workdir = str(shutil.copytree(tiny_run[0], tmp_path / "run"))
    result = command(capsys, "export", f"--workdir={workdir}", "--format=onnx")
    assert result.returncode == 0, result.stderr
    path = os.path.join(workdir, "export", "step20.onnx")
    assert result.stdout.startswith(f"{path}: onnx, logits within ")
    assert result.stdout.count("\n") == 1 and result.stderr == ""
    meta = export.read_meta(path)
    assert meta["difference"] <= 1e-5 and meta["platforms"] == ["onnxruntime"]
    with open(path, "rb") as f:
        blob = f.read()
    onnx.checker.check_model(onnx.load_from_string(blob), full_check=True)
    run = cnnjax.load(workdir, "latest")
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1)).astype(np.uint8)
    want = run.model.apply(run.variables, (images - run.info.mean[0]) / run.info.std[0])
    for n in (1, 5):  # the batch is symbolic
        got = export.run_onnx(blob, images[:n])
        np.testing.assert_allclose(got, want[:n], rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.onnx
def test_an_onnx_file_over_the_tolerance_is_not_written(tiny_run, capsys,  # noqa: F811
                                                        monkeypatch):
    workdir = tiny_run[0]
    before = snapshot(workdir)
    onnx_format = export.FORMATS["onnx"]
    monkeypatch.setitem(export.FORMATS, "onnx", dataclasses.replace(
        onnx_format, run=lambda blob, x: onnx_format.run(blob, x) * 1.001))
    result = command(capsys, "export", f"--workdir={workdir}", "--format=onnx")
    assert result.returncode == 2
    assert result.stderr.startswith("error: the onnx export of cnn differs from the JAX "
                                    "model by 1.00e-03") and "tolerance 1e-05" in result.stderr
    assert result.stderr.count("\n") == 1
    assert snapshot(workdir) == before


@pytest.mark.onnx
def test_an_onnx_export_jax2onnx_cannot_write_is_one_line_and_writes_nothing(
        tiny_run, capsys, monkeypatch):  # noqa: F811
    # With its CPU switches left on, the CNN's fused max-pool (strided slices) needs a
    # constant batch in jax2onnx 0.17.1: the converter's refusal is one line.
    monkeypatch.setitem(export.FORMATS, "onnx", dataclasses.replace(
        export.FORMATS["onnx"], switches=layers.Performance()))
    workdir = tiny_run[0]
    before = snapshot(workdir)
    result = command(capsys, "export", f"--workdir={workdir}", "--format=onnx")
    assert result.returncode == 2
    assert result.stderr.startswith("error: cnn cannot be exported as onnx (")
    assert result.stderr.endswith("; nothing was written\n") and result.stderr.count("\n") == 1
    assert snapshot(workdir) == before
