"""torchvision's classification zoo beyond ResNet: parameter counts and eval-mode logits.

Every model's parameter count equals torchvision's, both as published and as torchvision
builds it. The smallest member of each family matches torchvision's logits at 224x224 and at
an odd size; the others run with ``python -m pytest -m zoo tests/test_zoo.py`` (heavy compiles,
left out of the default suite; CI runs them).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from cnnjax.models import get_model
from cnnjax.models.pretrained import convert_torchvision, expected_variables

# torchvision's published parameter counts (its model documentation, ImageNet heads).
PUBLISHED = {
    "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272, "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "vgg11": 132_863_336, "vgg11_bn": 132_868_840, "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736, "vgg16": 138_357_544, "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240, "vgg19_bn": 143_678_248,
    "convnext_tiny": 28_589_128, "convnext_small": 50_223_688, "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
    "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232, "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784, "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960, "efficientnet_v2_s": 21_458_488,
    "efficientnet_v2_m": 54_139_356, "efficientnet_v2_l": 118_515_272,
    "mobilenet_v2": 3_504_872, "mobilenet_v3_small": 2_542_856, "mobilenet_v3_large": 5_483_032,
    "densenet121": 7_978_856, "densenet161": 28_681_000, "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "regnet_y_400mf": 4_344_144, "regnet_y_800mf": 6_432_512, "regnet_y_1_6gf": 11_202_430,
    "regnet_y_3_2gf": 19_436_338, "regnet_y_8gf": 39_381_472, "regnet_y_16gf": 83_590_140,
    "regnet_y_32gf": 145_046_770, "regnet_y_128gf": 644_812_894,
    "regnet_x_400mf": 5_495_976, "regnet_x_800mf": 7_259_656, "regnet_x_1_6gf": 9_190_136,
    "regnet_x_3_2gf": 15_296_552, "regnet_x_8gf": 39_572_648, "regnet_x_16gf": 54_278_536,
    "regnet_x_32gf": 107_811_560,
}
SMALLEST = ["resnext50_32x4d", "wide_resnet50_2", "vgg11", "vgg11_bn", "convnext_tiny",
            "efficientnet_b0", "efficientnet_v2_s", "mobilenet_v2", "mobilenet_v3_small",
            "densenet121", "regnet_x_400mf", "regnet_y_400mf"]


def count_params(arch):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(expected_variables(arch)["params"]))


@pytest.fixture
def meta_regnets(monkeypatch):
    """torchvision computes RegNet widths with tensor arithmetic, which a meta device cannot
    run: done on the CPU, while the model itself is built without weights."""
    from torchvision.models.regnet import BlockParams

    original = BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return original(cls, *args, **kwargs)

    monkeypatch.setattr(BlockParams, "from_init_params", classmethod(on_cpu))


@pytest.mark.parametrize("arch", sorted(PUBLISHED))
def test_parameter_counts_equal_torchvisions(arch, meta_regnets):
    with torch.device("meta"):  # shapes only, no weights allocated
        reference = getattr(torchvision.models, arch)()
    # BatchNorm running statistics are buffers in torch and batch_stats here: not counted.
    assert count_params(arch) == sum(p.numel() for p in reference.parameters()) == PUBLISHED[arch]


def random_torchvision(arch, seed=0):
    """torchvision's ``arch`` in eval mode with every normalisation away from its defaults
    (random BatchNorm statistics, random norm scales and offsets, ConvNeXt's layer scales
    raised from 1e-6 so that its blocks count) and dense layers scaled to give logits near
    1, so that a wrong mapping shows in the logits."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.0)
                m.bias.normal_(0.0, 0.1)
            if isinstance(m, torchvision.models.resnet.Bottleneck):
                m.bn3.weight.data.uniform_(0.2, 0.5)  # keeps deep logits of a useful size
            if isinstance(m, torch.nn.Linear):  # torchvision's N(0, 0.01): tiny logits
                m.weight.normal_(0.0, m.in_features ** -0.5)
                m.bias.normal_(0.0, 0.1)
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.uniform_(0.1, 0.3)
    return model.eval()


def check_parity(arch, sizes):
    reference = random_torchvision(arch)
    variables = convert_torchvision(reference.state_dict(), arch)
    model = get_model(arch)
    for size in sizes:
        torch.manual_seed(size)
        images = torch.randn(2, 3, size, size)
        with torch.no_grad():
            expected = reference(images).numpy()
        nhwc = jnp.asarray(images.numpy().transpose(0, 2, 3, 1))
        logits = np.asarray(jax.jit(model.apply)(variables, nhwc))
        relative = np.abs(logits - expected).max() / np.abs(expected).max()
        print(f"{arch} {size}x{size}: max |logit| {np.abs(expected).max():.3f}, "
              f"relative error {relative:.1e}")
        assert np.abs(expected).max() > 0.05 and relative < 1e-5, (arch, size, relative)


@pytest.mark.parametrize("arch", SMALLEST)
def test_logits_equal_torchvisions(arch):
    check_parity(arch, (97,))  # odd sides through every stride and pool; -m zoo adds 224


@pytest.mark.zoo
@pytest.mark.parametrize("arch", sorted(PUBLISHED))
def test_logits_equal_torchvisions_every_model(arch):
    check_parity(arch, (224, 97))


def test_fields_that_cannot_build_the_model_are_refused_before_any_work():
    from cnnjax.config import ConfigError, defaults, model_config, validate

    for name, field, value, message in [
        ("vgg11", "cfg", "Z", "model.cfg of VGG must be one of A, B, D, E"),
        ("resnet18", "groups", 32, "model.groups and model.width_per_group need "
                                   "model.block='bottleneck'"),
    ]:
        config = defaults()
        config.model = model_config(name)
        config.model[field] = value
        with pytest.raises(ConfigError, match=message):
            validate(config)


def test_convnext_drops_whole_residual_branches_in_training_only():
    """Stochastic depth, torchvision's "row" mode: per example, the branch is dropped with
    probability p, or kept and scaled by 1 / (1 - p); evaluation keeps every branch."""
    from cnnjax.models.convnext import Block

    block = Block(dim=8, layer_scale=0.5, drop=0.5)
    x = jax.random.normal(jax.random.key(0), (256, 4, 4, 8))
    variables = block.init(jax.random.key(1), x)
    branch = block.apply(variables, x) - x
    trained = block.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)}) - x
    dropped = np.all(np.asarray(trained) == 0, axis=(1, 2, 3))
    kept = ~dropped
    np.testing.assert_allclose(np.asarray(trained)[kept], 2 * np.asarray(branch)[kept],
                               rtol=1e-6, atol=1e-6)
    assert 0.35 < dropped.mean() < 0.65  # 256 examples: a loose bound on a fair coin


@pytest.mark.e2e
def test_the_convnext_fine_tuning_example_runs_from_converted_weights(tmp_path, data_dir):
    """experiments/cifar10_finetune_convnext_tiny.py for two steps on mock CIFAR-10, from a
    converted torchvision ConvNeXt-T: every layer but the head is transferred."""
    import tensorflow_datasets as tfds

    from cnnjax import checkpoint, training
    from cnnjax.models.pretrained import save_pretrained
    from experiments.cifar10_finetune_convnext_tiny import get_config

    reference = random_torchvision("convnext_tiny")
    pretrained = save_pretrained(convert_torchvision(reference.state_dict(), "convnext_tiny"),
                                 tmp_path / "pretrained")
    config = get_config()
    config.init.checkpoint = pretrained
    config.data.update(data_dir=data_dir, image_size=32, crop_padding=4, batch_size=8,
                       eval_batch_size=8, loader="memory")
    config.optimizer.learning_rate = 1e-9  # the weights barely move: compare them below
    config.train.update(num_steps=2, plots=False, log_every_steps=1)
    with tfds.testing.mock_data(num_examples=16):
        summary = training.run(config, str(tmp_path / "run"))
    assert summary["step"] == 2 and "eval_ema_accuracy" in summary
    state, _ = checkpoint.read_step(str(tmp_path / "run" / "checkpoints"), 2)
    stem = reference.state_dict()["features.0.0.weight"].numpy().transpose(2, 3, 1, 0)
    np.testing.assert_allclose(state["params"]["features_0_0"]["kernel"], stem, atol=1e-6)
    assert state["params"]["head"]["kernel"].shape == (768, 10)


@pytest.mark.parametrize("arch", [a for a in sorted(PUBLISHED) if a.startswith(
    ("efficientnet", "convnext", "vgg", "mobilenet"))])
def test_training_parts_are_torchvisions(arch):
    """Norm epsilons and momenta, dropout and stochastic-depth rates, read off torchvision's
    own modules."""
    from cnnjax.models import model_fields

    with torch.device("meta"):
        reference = getattr(torchvision.models, arch)()
    fields = model_fields(arch)
    norms = {(m.eps, m.momentum) for m in reference.modules()
             if isinstance(m, torch.nn.BatchNorm2d)}
    if arch.startswith(("efficientnet", "mobilenet")):
        assert norms == {(fields["bn_eps"], fields["bn_momentum"])}
    drops = [m.p for m in reference.modules() if isinstance(m, torch.nn.Dropout)]
    if drops:
        assert set(drops) == {fields["dropout"]}
    depth = [m.p for m in reference.modules()
             if isinstance(m, torchvision.ops.StochasticDepth)]
    if depth:
        assert max(depth) == pytest.approx(fields["stochastic_depth_prob"]
                                           * (1 if arch.startswith("convnext")
                                              else (len(depth) - 1) / len(depth)))
    eps = {m.eps for m in reference.modules() if isinstance(m, torch.nn.LayerNorm)}
    assert eps <= {1e-6}


@pytest.mark.e2e
def test_the_efficientnet_probe_example_trains_the_head_alone(tmp_path, data_dir):
    """experiments/cifar10_linear_probe_efficientnet_b0.py for two steps on mock CIFAR-10,
    from converted torchvision weights: the backbone's params and BatchNorm statistics stay
    bit-identical, the head moves."""
    import tensorflow_datasets as tfds

    from cnnjax import checkpoint, training
    from cnnjax.models.pretrained import save_pretrained
    from experiments.cifar10_linear_probe_efficientnet_b0 import get_config

    converted = convert_torchvision(random_torchvision("efficientnet_b0").state_dict(),
                                    "efficientnet_b0")
    pretrained = save_pretrained(converted, tmp_path / "pretrained")
    config = get_config()
    config.init.checkpoint = pretrained
    config.data.update(data_dir=data_dir, image_size=32, batch_size=8, eval_batch_size=8,
                       loader="memory")
    config.train.update(num_steps=2, plots=False, log_every_steps=1)
    with tfds.testing.mock_data(num_examples=16):
        summary = training.run(config, str(tmp_path / "run"))
    assert summary["step"] == 2
    state, _ = checkpoint.read_step(str(tmp_path / "run" / "checkpoints"), 2)
    for collection in ("params", "batch_stats"):
        backbone = {k: v for k, v in state[collection].items() if k != "head"}
        before = {k: v for k, v in converted[collection].items() if k != "head"}
        for got, want in zip(jax.tree.leaves(backbone), jax.tree.leaves(before), strict=True):
            np.testing.assert_array_equal(got, np.asarray(want))
    assert state["params"]["head"]["kernel"].shape == (1280, 10)


def test_densenet_files_with_torchvisions_old_key_names_convert_the_same():
    """torchvision's published DenseNet files say ``denselayer1.norm.1``, not ``norm1``."""
    import re

    state = torchvision.models.densenet121().state_dict()
    old = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v
           for k, v in state.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    for a, b in zip(jax.tree.leaves(convert_torchvision(state, "densenet121")),
                    jax.tree.leaves(convert_torchvision(old, "densenet121")), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("arch, smallest", [("vgg11", 32), ("convnext_tiny", 32),
                                            ("densenet121", 29)])
def test_an_image_too_small_to_halve_is_refused_not_turned_into_nan(arch, smallest):
    """Below its smallest size a 2x2/2 step would average an empty map (NaN logits); the
    abstract trace that launch runs before any work raises instead."""
    model = get_model(arch, num_classes=10)
    init = lambda size: jax.eval_shape(  # noqa: E731
        model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    init(smallest)
    with pytest.raises(ValueError, match=f"needs images of {smallest}x{smallest} or more"):
        init(smallest - 1)
