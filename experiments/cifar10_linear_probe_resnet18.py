"""Linear probe: ImageNet ResNet-18 features, a new 10-class head trained alone on CIFAR-10.

One-time set-up (the weights are torchvision's; download them yourself, e.g. from the
torchvision model zoo, as `resnet18-f37072fd.pth`):

    python -m cnnjax.models.pretrained --arch=resnet18 \\
        --torch_weights=resnet18-f37072fd.pth --out=pretrained/resnet18
    python -m cnnjax.data.prepare --name=cifar10       # needs TensorFlow for this step only

Run (one GPU; images upsampled to 128x128 so the ImageNet stem sees enough pixels):

    python launch.py --config=experiments/cifar10_linear_probe_resnet18.py \\
        --config.init.checkpoint=pretrained/resnet18 --workdir=workdirs/probe_r18

The backbone's params and BatchNorm statistics stay bit-identical (tested); only `head/*`
trains. Expect roughly 85-88% test accuracy (linear probes of ImageNet ResNet-18 features on
CIFAR-10 in the literature are in that range at this resolution).
"""

from cnnjax.config import defaults, model_config


def get_config():
    config = defaults()
    config.model = model_config("resnet18")
    config.data.name = "cifar10"
    config.data.image_size = 128
    config.data.flip = True
    config.data.batch_size = 256
    config.init.checkpoint = ""  # required: --config.init.checkpoint=pretrained/resnet18
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
