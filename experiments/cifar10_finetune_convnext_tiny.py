"""Fine-tuning ImageNet ConvNeXt-T on CIFAR-10, with the recipe ConvNeXt was trained with:
AdamW, warm-up, cosine decay, label smoothing, stochastic depth and an average of the weights.

One-time set-up (torchvision's weights, downloaded yourself, e.g. `convnext_tiny-983f1562.pth`):

    python -m cnnjax.models.pretrained --arch=convnext_tiny \\
        --torch_weights=convnext_tiny-983f1562.pth --out=pretrained/convnext_tiny
    python -m cnnjax.data.prepare --name=cifar10       # needs TensorFlow for this step only

Run (one GPU; images upsampled to 128x128, so the last stage sees 4x4):

    python launch.py --config=experiments/cifar10_finetune_convnext_tiny.py \\
        --config.init.checkpoint=pretrained/convnext_tiny --workdir=workdirs/finetune_cnxt

The 1000-class head gives way to a fresh 10-class one; every other layer starts from the
ImageNet weights and trains at the same rate. Evaluate the average with `--mode=eval --ema`.
"""

from cnnjax.config import defaults, model_config


def get_config():
    config = defaults()
    config.model = model_config("convnext_tiny")  # stochastic depth 0.1, as torchvision's
    config.data.name = "cifar10"
    config.data.image_size = 128
    config.data.crop_padding = 16
    config.data.flip = True
    config.data.batch_size = 128
    config.init.checkpoint = ""  # required: --config.init.checkpoint=pretrained/convnext_tiny
    config.init.exclude = "^head/"
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 2e-4
    config.optimizer.weight_decay = 0.05
    config.optimizer.warmup_epochs = 1.0
    config.optimizer.schedule = "cosine"
    config.optimizer.grad_clip_norm = 1.0
    config.train.label_smoothing = 0.1
    config.train.ema_decay = 0.999
    config.train.num_epochs = 10
    config.train.log_every_steps = 50
    config.train.checkpoint_every_steps = 1000
    return config
