"""experiments.benchmarks.benchmark: the real train step timed on tiny models, FLOPs against an
analytic count, the PyTorch references' parameter counts, the JSON file, and the CPU compiler
options."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest

from cnnjax import models, parallel
from experiments.benchmarks import benchmark


def _num_params(name: str, image_shape, **kwargs) -> int:
    model = models.get_model(name, num_classes=10, **kwargs)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape)))
    return sum(x.size for x in jax.tree.leaves(shapes["params"]))


def test_tiny_mlp_result_fields_flops_and_json(tmp_path):
    path = tmp_path / "out.json"
    batch = 256
    result = benchmark.benchmark(
        "mlp", batch_size=batch, image_size=8, channels=1, num_classes=10, steps=3, warmup=1,
        model_kwargs={"hidden": (256,)}, peak_tflops=1.0, json_path=str(path),
    )
    j = result["jax"]
    assert j["num_params"] == 64 * 256 + 256 + 256 * 10 + 10
    assert j["devices"] == jax.local_device_count()
    for key in ("lower_s", "compile_s", "images_per_s", "pipelined_images_per_s",
                "peak_memory_bytes", "achieved_tflops"):
        assert j[key] > 0, key
    assert 0 < j["step"]["best_s"] <= j["step"]["median_s"]
    assert j["images_per_s"] == pytest.approx(batch / j["step"]["median_s"])
    assert j["mfu"] == pytest.approx(j["achieved_tflops"] / 1.0)
    assert jnp.isfinite(j["loss_after_warmup"])
    # Dense layers: forward 2*b*in*out each; backward the weight gradient (same again) and the
    # input gradient (same again) for all but the first layer. The rest (softmax, ReLU, the
    # optimizer on every device) is small next to that.
    analytic = 2 * batch * (64 * 256 * 2 + 256 * 10 * 3)
    assert 1.0 <= j["flops_per_step"] / analytic <= 1.3
    loader = result["loader"]
    assert loader["images_per_s"] > 0 and loader["best_s"] <= loader["median_s"]
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    text = benchmark.table(result)
    assert "cnnjax images/s" in text and "loader images/s" in text


def test_tiny_conv_flops_and_same_run_torch_reference():
    pytest.importorskip("torch")
    batch = 64  # 8x8x1 -> conv 3x3 SAME to 8 channels -> dense 10
    result = benchmark.benchmark(
        "cnn", batch_size=batch, image_size=8, channels=1, num_classes=10, steps=2, warmup=1,
        model_kwargs={"features": (8,), "pool": "none", "dense": ()},
        torch=True, torch_compile=False, loader=False,
    )
    # Conv: forward and weight gradient, 2 * b * h * w * k*k*c_in * c_out each (no input
    # gradient for the first layer); dense head as above.
    analytic = 2 * batch * 64 * 9 * 8 * 2 + 2 * batch * 512 * 10 * 3
    assert 1.0 <= result["jax"]["flops_per_step"] / analytic <= 1.3
    assert result["jax"]["mfu"] is None  # no known peak for a CPU
    eager = result["torch"]["eager"]
    assert eager["images_per_s"] > 0 and eager["first_step_s"] > 0
    assert result["torch"]["compile"].startswith("n/a")
    ratio = result["ratios"]["cnnjax / torch eager"]
    assert ratio["median"] > 0 and ratio["best"] > 0
    assert result["ratios"]["cnnjax / torch compile"] is None


def test_default_peaks():
    assert benchmark.default_peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert benchmark.default_peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert benchmark.default_peak_tflops("cpu", "float32") is None
    assert benchmark.resolve_dtype("auto", "cpu") == "float32"
    assert benchmark.resolve_dtype("auto", "gpu") == "bfloat16"


@pytest.mark.parametrize("name, kwargs, image_shape", [
    ("cnn", {"batch_norm": True}, (8, 8, 1)),  # the default experiment's digits CNN
    ("cnn", {"features": (4, 6), "padding": "SAME", "strides": 2, "kernel_size": 4}, (28, 28, 2)),
    ("lenet5", {}, (32, 32, 1)),
    ("mlp", {}, (8, 8, 1)),
    ("cifar_resnet20", {}, (32, 32, 3)),
    ("cifar_resnet20", {"shortcut": "B"}, (32, 32, 3)),
])
def test_torch_reference_has_the_same_parameter_count(name, kwargs, image_shape):
    pytest.importorskip("torch")
    from experiments.benchmarks import benchmark_torch

    expected = _num_params(name, image_shape, **kwargs)
    h, _, c = image_shape
    module = benchmark_torch.reference_model(name, kwargs, 10, c, h, expected_params=expected)
    assert sum(p.numel() for p in module.parameters()) == expected
    with pytest.raises(AssertionError, match="parameters"):
        benchmark_torch.reference_model(name, kwargs, 10, c, h, expected_params=expected + 1)


def test_cpu_compiler_options(monkeypatch):
    mesh = parallel.make_mesh(jax.local_devices()[:1])
    monkeypatch.setenv("XLA_FLAGS", "")
    assert parallel.compiler_options(mesh) == parallel.CPU_COMPILER_OPTIONS
    # A user's own setting of the option in XLA_FLAGS wins.
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
    assert parallel.compiler_options(mesh) is None


@pytest.mark.e2e
def test_gpu_benchmark_script_runs_and_the_relaunch_loads_the_step_from_the_cache(tmp_path):
    # experiments/gpu_benchmark.sh on a tiny CNN (the CPU it runs on here): cold run, cached
    # relaunch, same-process comparison with PyTorch; the variants are skipped.
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "OUT": str(tmp_path), "BENCH_VARIANTS": "0", "BENCH_BATCH": "16",
           "BENCH_ARGS": "--model=cnn --image_size=8 --channels=1 --num_classes=10"}
    env.pop("XLA_FLAGS", None)  # one device, as a plain launch has
    proc = subprocess.run(["bash", "experiments/gpu_benchmark.sh", sys.executable], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cold, cached, vs_torch = (json.load(open(tmp_path / f"resnet50{s}.json"))
                              for s in ("", "_cached", "_vs_torch"))
    assert cold["jax"]["images_per_s"] > 0 and cold["loader"]["images_per_s"] > 0
    assert "profile" in cold  # XLA:CPU traces hold no device kernels: reported, not raised
    # the relaunch loads the compiled step from JAX's compilation cache instead of compiling it
    assert cold["jax"]["executable"] == "compiled" and cold["jax"]["compile_s"] > 0
    assert cached["jax"]["executable"] == "loaded from the compilation cache"
    assert 0 < cached["jax"]["process_start_to_first_step_s"] < 120
    assert vs_torch["ratios"]["cnnjax / torch eager"]["median"] > 0
    assert "== 3." in (tmp_path / "log.txt").read_text()


@pytest.mark.e2e
def test_zoo_benchmark_times_cnnjax_and_torchvision_in_one_process(capsys):
    from experiments.benchmarks import zoo

    zoo.main(["--models=mobilenet_v3_small", "--batch_size=8", "--image_size=32", "--steps=1",
              "--rounds=1", "--no_torch_compile"])
    line = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert line[0] == "mobilenet_v3_small" and float(line[1]) > 0 and float(line[2]) > 0
    assert line[3].endswith("x") and float(line[3][:-1]) > 0  # cnnjax over torch eager
    assert "skipped" in " ".join(line[4:])  # torch.compile left out as asked
