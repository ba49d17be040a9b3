"""torchvision's classification zoo beyond ResNet: parameter counts and eval-mode logits.

Every model's parameter count equals torchvision's, both as published and as torchvision
builds it. The smallest member of each family matches torchvision's logits at 224x224 and at
an odd size; the others run with ``python -m pytest -m zoo tests/test_zoo.py`` (heavy compiles,
left out of the default suite).
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
}
SMALLEST = ["resnext50_32x4d", "wide_resnet50_2", "vgg11", "vgg11_bn"]


def count_params(arch):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(expected_variables(arch)["params"]))


@pytest.mark.parametrize("arch", sorted(PUBLISHED))
def test_parameter_counts_equal_torchvisions(arch):
    with torch.device("meta"):  # shapes only, no weights allocated
        reference = getattr(torchvision.models, arch)()
    # BatchNorm running statistics are buffers in torch and batch_stats here: not counted.
    assert count_params(arch) == sum(p.numel() for p in reference.parameters()) == PUBLISHED[arch]


def random_torchvision(arch, seed=0):
    """torchvision's ``arch`` in eval mode, its BatchNorms away from their defaults (random
    running statistics and affine parameters), so a wrong BatchNorm mapping shows in the
    logits."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.0)
                m.bias.normal_(0.0, 0.1)
            if isinstance(m, torchvision.models.resnet.Bottleneck):
                m.bn3.weight.data.uniform_(0.2, 0.5)  # keeps deep logits of a useful size
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
        logits = np.asarray(model.apply(variables, nhwc))
        relative = np.abs(logits - expected).max() / np.abs(expected).max()
        print(f"{arch} {size}x{size}: max |logit| {np.abs(expected).max():.3f}, "
              f"relative error {relative:.1e}")
        assert np.abs(expected).max() > 0.05 and relative < 1e-5, (arch, size, relative)


@pytest.mark.parametrize("arch", SMALLEST)
def test_logits_equal_torchvisions(arch):
    check_parity(arch, (224, 97))  # 97: odd sides through every stride and pool


@pytest.mark.zoo
@pytest.mark.parametrize("arch", sorted(set(PUBLISHED) - set(SMALLEST)))
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
