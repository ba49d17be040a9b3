"""ImageNet with ResNet-50 at batch 32,768 with LARS: aims at 76.3% top-1 in 90 epochs.

LARS (You, Gitman and Ginsburg, "Large Batch Training of Convolutional Networks", 2017)
scales each layer's step by a trust ratio ``eta * ||w|| / (||g|| + wd * ||w||)`` so that the
learning rate can grow with the batch; with a linear warm-up and a polynomial (power 2)
decay it trains ResNet-50 at batch 32K. Ying et al., "Image Classification at Supercomputer
Scale" (2018), reach 76.3% top-1 at batch 32,768 in 90 epochs on a TPU v3 Pod with the
settings of the TPU reference implementation (tensorflow/tpu, ``models/official/resnet/
lars_util.py``, which MLPerf's LARS ResNet-50 submissions follow): peak learning rate 34.0
reached by a linear warm-up over 12 epochs, then polynomial decay of power 2 to 0, momentum
0.9, trust coefficient 0.001, weight decay 1e-4 skipping BatchNorm parameters and biases,
label smoothing 0.1. (MLPerf's quality target for ResNet-50 is 75.9%.)

Inputs as in ``experiments/imagenet_resnet50.py``: random-resized crops to 224x224 and flips;
evaluation on the central 87.5% square.

Hardware: batch 32,768 needs a pod (256 TPU v3 chips or GPUs at 128 each), one process per
host (README: several hosts take three flags, or none under SLURM). On fewer devices,
``optimizer.accumulate_steps`` averages the gradients of several smaller batches into one
update of the same size (BatchNorm statistics are then those of the smaller batches).

    python -m cnnjax.data.prepare --name=imagenet2012 --manual_dir=DIR_WITH_THE_TARS  # once
    python launch.py --config=experiments/imagenet_resnet50_lars.py --workdir=workdirs/lars
"""

from cnnjax.config import defaults, model_config

BATCH = 32_768
STEPS_PER_EPOCH = 1_281_167 // BATCH  # 39


def get_config():
    config = defaults()
    config.model = model_config("resnet50", dtype="bfloat16")
    config.data.name = "imagenet2012"  # random-resized crops on the host (catalog.py)
    config.data.batch_size = BATCH
    config.data.eval_batch_size = 4096
    config.data.loader = "streaming"
    config.data.workers = 16
    config.data.augment = "flip"
    config.optimizer.name = "lars"
    config.optimizer.learning_rate = 34.0
    config.optimizer.momentum = 0.9
    config.optimizer.trust_coefficient = 0.001
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = "polynomial"
    config.optimizer.power = 2.0
    config.optimizer.final_lr_fraction = 0.0
    config.optimizer.warmup_epochs = 12.0
    config.train.label_smoothing = 0.1
    config.train.num_epochs = 90
    config.train.log_every_steps = STEPS_PER_EPOCH
    config.train.checkpoint_every_steps = 5 * STEPS_PER_EPOCH
    return config
