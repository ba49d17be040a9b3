"""CIFAR-10 with a Wide ResNet-28-10, AutoAugment and erasing: aims at 97.4% test accuracy.

Cubuk et al., "AutoAugment: Learning Augmentation Policies from Data" (CVPR 2019), Table 2:
Wide-ResNet-28-10 reaches 2.6% test error (97.4%) with the learned CIFAR-10 policy applied
after the standard pad-4-and-crop and flip, followed by Cutout of a 16x16 square (3.1% error,
96.9%, with Cutout alone; 3.9%, 96.1%, with neither). Training as in the paper: SGD with
momentum 0.9, learning rate 0.1 with cosine decay over 200 epochs, weight decay 5e-4,
batch 128.

Cutout (DeVries and Taylor 2017) is random erasing (Zhong et al. 2020) with its randomness
pinned: every image (``p=1``) loses a square (aspect ratio 1) of a quarter of its area (16x16
of 32x32), filled with the mean (zero after normalisation). Unlike Cutout, erasing keeps the
square inside the image, so a little more of the image is erased on average.

Hardware: one GPU (36.5M parameters; several hours).

    python -m cnnjax.data.prepare --name=cifar10      # once; needs TensorFlow (see docs/data.md)
    python launch.py --config=experiments/cifar10_wrn28_10_autoaugment.py --workdir=workdirs/wrn_aa
"""

from cnnjax.config import defaults, model_config

BATCH = 128
STEPS_PER_EPOCH = 50_000 // BATCH  # 390


def get_config():
    config = defaults()
    config.model = model_config("wrn28_10")
    config.data.name = "cifar10"
    config.data.batch_size = BATCH
    config.data.eval_batch_size = 1000
    config.data.augment = ("crop(padding=4) flip autoaugment(policy=cifar10) "
                           "erasing(p=1.0,scale=(0.25,0.25),ratio=(1.0,1.0),value=0)")
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "cosine"
    config.train.num_epochs = 200
    config.train.log_every_steps = STEPS_PER_EPOCH
    config.train.checkpoint_every_steps = 10 * STEPS_PER_EPOCH
    return config
