"""Linear probe: ImageNet EfficientNet-B0 features, a new 10-class head trained alone on
CIFAR-10.

One-time set-up (torchvision's weights, downloaded yourself, e.g.
`efficientnet_b0_rwightman-7f5810bc.pth`):

    python -m cnnjax.models.pretrained --arch=efficientnet_b0 \\
        --torch_weights=efficientnet_b0_rwightman-7f5810bc.pth --out=pretrained/efficientnet_b0
    python -m cnnjax.data.prepare --name=cifar10       # needs TensorFlow for this step only

Run (one GPU; images upsampled to 128x128, so the last stage sees 4x4):

    python launch.py --config=experiments/cifar10_linear_probe_efficientnet_b0.py \\
        --config.init.checkpoint=pretrained/efficientnet_b0 --workdir=workdirs/probe_effb0

The backbone's params and BatchNorm statistics stay as they were (it runs in inference mode:
no dropout, no stochastic depth); only `head/*` trains.
"""

from cnnjax import experiment_files
from cnnjax.config import model_config


def get_config():
    # the same probe: a new head on frozen features, SGD, cosine
    config = experiment_files.load("cifar10_linear_probe_resnet18")
    config.model = model_config("efficientnet_b0")
    return config
