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

from cnnjax.config import defaults, model_config


def get_config():
    config = defaults()
    config.model = model_config("efficientnet_b0")
    config.data.name = "cifar10"
    config.data.image_size = 128
    config.data.flip = True
    config.data.batch_size = 256
    config.init.checkpoint = ""  # required: --config.init.checkpoint=pretrained/efficientnet_b0
    config.init.exclude = "^head/"  # the 1000-class head gives way to a fresh 10-class one
    config.optimizer.freeze_backbone = True
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.schedule = "cosine"
    config.train.num_epochs = 10
    config.train.log_every_steps = 50
    config.train.checkpoint_every_steps = 1000
    return config
