"""ImageNet (ILSVRC-2012) with ResNet-50: the standard 90-epoch recipe, >= 76.1% top-1.

76.1% is the top-1 accuracy (single 224x224 centre crop of the 256-pixel resize, 50,000
validation images) of the reference ResNet-50 trained for 90 epochs (torchvision's
ResNet-50: 76.13%). The recipe combines Goyal et al., "Accurate, Large Minibatch SGD"
(2017): learning rate 0.1 x batch / 256 with a 5-epoch linear warm-up, momentum 0.9, weight
decay 1e-4, 90 epochs, the last BatchNorm scale of each residual block initialised to zero;
with He et al., "Bag of Tricks for Image Classification" (CVPR 2019): Nesterov momentum,
cosine decay, label smoothing 0.1 and no weight decay on biases and BatchNorm parameters
(cnnjax decays kernels only). Inputs: Inception-style random-resized crops (8-100% of the
area) to 224x224 and horizontal flips, decoded and cropped by Grain workers (the streaming
loader); evaluation resizes the central 87.5% square to 224x224.

Hardware: 8 GPUs (global batch 1024, 128 per GPU) on one host with at least 16 cores for the
input pipeline (``data.workers``); the computation runs in bfloat16.

    python -m cnnjax.data.prepare --name=imagenet2012 --manual_dir=DIR_WITH_THE_TARS  # once
    python launch.py --config=experiments/imagenet_resnet50.py --workdir=workdirs/rn50
"""

from cnnjax.config import defaults, model_config

BATCH = 1024


def get_config():
    config = defaults()
    config.model = model_config("resnet50", zero_init_residual=True, dtype="bfloat16")
    config.data.name = "imagenet2012"  # eval on 'validation', 224x224 (cnnjax/data/catalog.py)
    config.data.batch_size = BATCH
    config.data.eval_batch_size = 1024
    config.data.flip = True
    config.data.loader = "streaming"  # 1.28M decoded images do not fit in host memory
    config.data.workers = 16
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1 * BATCH / 256
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_epochs = 5.0
    config.train.num_epochs = 90
    config.train.label_smoothing = 0.1
    config.train.log_every_steps = 100
    config.train.checkpoint_every_steps = 1251  # one epoch (1,281,167 // 1024 steps)
    return config
