"""torchvision -> cnnjax ResNet conversion: logits parity, error messages, checkpoints, command."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from cnnjax.models import get_model
from cnnjax.models.pretrained import (
    convert_torchvision_resnet,
    expected_variables,
    load_pretrained,
    load_torch_state_dict,
    save_pretrained,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_torchvision(arch, num_classes=1000, seed=0):
    """A randomly initialised torchvision ResNet whose BatchNorms are not at their defaults.

    Random running statistics and affine parameters make a wrong BN mapping (swapped mean and
    var, scale and bias, a missed layer) visible in the logits. Scales in [0.5, 1], and in
    [0.2, 0.5] for the last BN of each residual branch, keep the logits of every depth (18 to
    152) around 1, where an absolute 1e-4 tolerance is a tight, relative-1e-4 one.
    """
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(num_classes=num_classes)
    resnet = torchvision.models.resnet
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.0)
                m.bias.normal_(0.0, 0.1)
        for m in model.modules():
            if isinstance(m, resnet.Bottleneck):
                m.bn3.weight.uniform_(0.2, 0.5)
            elif isinstance(m, resnet.BasicBlock):
                m.bn2.weight.uniform_(0.2, 0.5)
    return model.eval()


def check_parity(arch, size):
    reference = random_torchvision(arch)
    torch.manual_seed(1)
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = reference(images).numpy()
    variables = convert_torchvision_resnet(reference.state_dict(), arch)

    abstract = expected_variables(arch)
    assert jax.tree.structure(variables) == jax.tree.structure(abstract)
    for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(abstract), strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype

    logits = jax.jit(get_model(arch).apply)(
        variables, jnp.asarray(images.numpy().transpose(0, 2, 3, 1)))
    error = float(np.abs(np.asarray(logits) - expected).max())
    print(f"{arch} {size}x{size}: max |logits| {np.abs(expected).max():.3f}, "
          f"max abs error {error:.2e}")
    assert np.abs(expected).max() > 0.3  # logits of a useful size for the tolerance
    assert error < 1e-4


@pytest.mark.parametrize("arch,size", [("resnet18", 64), ("resnet18", 45), ("resnet50", 64)])
def test_logits_match_torchvision(arch, size):
    check_parity(arch, size)  # 45: odd sides all the way down exercise the explicit padding


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet34", "resnet101", "resnet152"])
def test_logits_match_torchvision_deep(arch):
    check_parity(arch, 64)


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def test_missing_and_unexpected_keys_are_named(resnet18_state):
    state = dict(resnet18_state)
    del state["layer1.0.conv1.weight"]
    del state["layer2.0.downsample.1.running_var"]
    state["foo"] = torch.zeros(3)
    with pytest.raises(ValueError) as info:
        convert_torchvision_resnet(state, "resnet18")
    message = str(info.value)
    assert "\n" not in message
    assert "missing: layer1.0.conv1.weight, layer2.0.downsample.1.running_var" in message
    assert "unexpected: foo" in message
    assert "num_batches_tracked" not in message  # ignored, never reported


def test_shape_mismatch_is_named():
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    with pytest.raises(ValueError) as info:
        convert_torchvision_resnet(state, "resnet18")
    message = str(info.value)
    assert ("shape mismatch: fc.weight (10, 512) vs expected (1000, 512), "
            "fc.bias (10,) vs expected (1000,)") in message
    assert "missing" not in message and "unexpected" not in message
    variables = convert_torchvision_resnet(state, "resnet18", num_classes=10)
    assert variables["params"]["head"]["kernel"].shape == (512, 10)


def test_wrong_architecture_lists_keys(resnet18_state):
    with pytest.raises(ValueError) as info:
        convert_torchvision_resnet(resnet18_state, "resnet50")
    message = str(info.value)
    assert "missing: layer1.0.bn3.weight, layer1.0.bn3.bias, " in message
    assert "layer1.0.downsample.0.weight, layer1.0.downsample.1.weight" in message
    assert "unexpected" not in message  # every resnet18 key has a namesake in resnet50
    assert "shape mismatch: fc.weight (1000, 512) vs expected (1000, 2048)" in message
    with pytest.raises(ValueError, match="unsupported arch 'cifar_resnet20'"):
        convert_torchvision_resnet(resnet18_state, "cifar_resnet20")


def test_numpy_state_dict_and_layouts(resnet18_state):
    variables = convert_torchvision_resnet(
        {k: v.numpy() for k, v in resnet18_state.items()}, "resnet18")
    params, stats = variables["params"], variables["batch_stats"]
    np.testing.assert_array_equal(  # OIHW -> HWIO
        params["layer2_0"]["downsample_conv"]["kernel"],
        resnet18_state["layer2.0.downsample.0.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["head"]["kernel"], resnet18_state["fc.weight"].numpy().T)
    np.testing.assert_array_equal(stats["layer3_1"]["bn2"]["var"],
                                  resnet18_state["layer3.1.bn2.running_var"].numpy())


def test_save_and_load_pretrained_round_trip(resnet18_state, tmp_path):
    variables = convert_torchvision_resnet(resnet18_state, "resnet18")
    path = save_pretrained(variables, tmp_path / "ckpt")
    assert os.path.isdir(path)
    restored = load_pretrained(tmp_path / "ckpt")
    assert jax.tree.structure(restored) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(variables), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_load_torch_state_dict(resnet18_state, tmp_path):
    torch.save({"state_dict": resnet18_state, "epoch": 3}, tmp_path / "ckpt.pth")
    loaded = load_torch_state_dict(tmp_path / "ckpt.pth")
    assert loaded.keys() == resnet18_state.keys()
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cannot read .*junk.pth"):
        load_torch_state_dict(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_torch_state_dict(tmp_path / "nope.pth")


def run_command(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, "-m", "cnnjax.models.pretrained", *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )


def test_command_writes_a_checkpoint(resnet18_state, tmp_path):
    weights, out = tmp_path / "resnet18.pth", tmp_path / "ckpt"
    torch.save(resnet18_state, weights)
    result = run_command("--arch=resnet18", f"--torch_weights={weights}", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout and "11,689,512 parameters" in result.stdout
    restored = load_pretrained(out)
    expected = convert_torchvision_resnet(resnet18_state, "resnet18")
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--arch=resnet18", "--torch_weights={tmp}/missing.pth", "--out={tmp}/ckpt"],
         "no such file"),
        (["--arch=resnet19", "--torch_weights={tmp}/missing.pth", "--out={tmp}/ckpt"],
         "unsupported arch 'resnet19'"),
        (["--arch=resnet18", "--torch_weights={tmp}/missing.pth", "--out={tmp}/ckpt",
          "--num_classes=0"], "--num_classes=0 must be >= 1"),
        (["--arch=resnet18", "--torch_weights={tmp}/missing.pth", "--out=/proc/ckpt"],
         "--out=/proc/ckpt: /proc is not a writable folder"),
        (["--arch=resnet18", "--torch_weights={tmp}/notes.txt", "--out={tmp}/ckpt"],
         "cannot read {tmp}/notes.txt as a PyTorch state_dict of tensors"),
        (["--arch=resnet18"], "the following arguments are required: --torch_weights, --out"),
    ],
)
def test_command_bad_input_is_one_line_and_exit_2(args, needle, tmp_path, capsys):
    # in this process: the command's main, as `python -m cnnjax.models.pretrained` calls it
    from cnnjax.models import pretrained

    (tmp_path / "notes.txt").write_text("not weights")
    capsys.readouterr()
    try:
        status = pretrained.main([a.format(tmp=tmp_path) for a in args])
    except SystemExit as e:  # argparse's usage errors
        status = e.code
    assert status == 2
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert needle.format(tmp=tmp_path) in lines[0], stderr
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.e2e
def test_safetensors_weights_convert_without_torch(tmp_path):
    """A .safetensors state_dict (written by safetensors' own torch writer) converts in a
    process where torch cannot be imported; the logits equal torchvision's."""
    from safetensors.torch import save_file

    from tests.test_zoo import random_torchvision

    reference = random_torchvision("mobilenet_v3_small")
    weights, out = tmp_path / "mobilenet_v3_small.safetensors", tmp_path / "ckpt"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, weights)
    code = ("import sys; sys.modules['torch'] = None; "  # any `import torch` now fails
            "from cnnjax.models.pretrained import main; sys.exit(main(sys.argv[1:]))")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(
        [sys.executable, "-c", code, "--arch=mobilenet_v3_small", f"--torch_weights={weights}",
         f"--out={out}"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    images = torch.randn(2, 3, 97, 97)
    with torch.no_grad():
        expected = reference(images).numpy()
    logits = jax.jit(get_model("mobilenet_v3_small").apply)(
        load_pretrained(out), jnp.asarray(images.numpy().transpose(0, 2, 3, 1)))
    assert np.abs(np.asarray(logits) - expected).max() / np.abs(expected).max() < 1e-5

    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    bad = run_command("--arch=mobilenet_v3_small", f"--torch_weights={tmp_path}/bad.safetensors",
                      f"--out={tmp_path}/ckpt2")
    assert bad.returncode == 2
    assert bad.stderr.startswith(f"error: cannot read {tmp_path}/bad.safetensors as a "
                                 "safetensors file") and bad.stderr.count("\n") == 1
