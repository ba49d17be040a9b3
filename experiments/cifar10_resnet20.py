"""CIFAR-10 with ResNet-20: aims for 91.25% test accuracy (He et al. 2016, table 6).

The recipe of He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016),
section 4.2: ResNet-20 with parameter-free (option A) shortcuts, SGD with momentum 0.9,
weight decay 1e-4, batch 128, learning rate 0.1 divided by 10 at 32k and 48k iterations,
64k iterations in all (164 epochs); 4-pixel zero padding with random 32x32 crops and
horizontal flips. The schedule was chosen on a 45k/5k train/validation split; this trains on
all 50k training images, and normalises per channel where the paper subtracted the
per-pixel mean.

Hardware: one GPU (the model has 0.27M parameters; the in-memory loader feeds it).

    python -m cnnjax.data.prepare --name=cifar10      # once; needs TensorFlow (see docs/data.md)
    python launch.py --config=experiments/cifar10_resnet20.py --workdir=workdirs/resnet20
"""

from cnnjax.config import defaults, model_config

BATCH = 128
STEPS_PER_EPOCH = 50_000 // BATCH  # 390


def get_config():
    config = defaults()
    config.model = model_config("cifar_resnet20", shortcut="A")
    config.data.name = "cifar10"
    config.data.batch_size = BATCH
    config.data.eval_batch_size = 1000
    config.data.crop_padding = 4
    config.data.flip = True
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = "piecewise"
    config.optimizer.boundaries_epochs = (32_000 / STEPS_PER_EPOCH, 48_000 / STEPS_PER_EPOCH)
    config.optimizer.decay_factor = 0.1
    config.train.num_steps = 64_000
    config.train.log_every_steps = STEPS_PER_EPOCH
    config.train.checkpoint_every_steps = 10 * STEPS_PER_EPOCH
    return config
