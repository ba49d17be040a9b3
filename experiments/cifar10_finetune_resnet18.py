"""Full fine-tuning: ImageNet ResNet-18 on CIFAR-10, the backbone at a tenth of the rate.

Set-up as in `cifar10_linear_probe_resnet18.py` (convert the torchvision weights once with
`python -m cnnjax.models.pretrained`, prepare cifar10 once). Run (one GPU):

    python launch.py --config=experiments/cifar10_finetune_resnet18.py \\
        --config.init.checkpoint=pretrained/resnet18 --workdir=workdirs/finetune_r18

Every layer trains; the new head at the full learning rate, the pretrained backbone at
`backbone_lr_scale` times it. Expect about 95-96% test accuracy at 128x128 after 15 epochs
(fine-tuned ImageNet ResNet-18 on upsampled CIFAR-10).
"""

from cnnjax import experiment_files


def get_config():
    config = experiment_files.load("cifar10_linear_probe_resnet18")
    config.optimizer.freeze_backbone = False
    config.optimizer.backbone_lr_scale = 0.1
    config.optimizer.learning_rate = 0.05
    config.optimizer.weight_decay = 5e-4
    config.optimizer.warmup_epochs = 1.0
    config.data.crop_padding = 16  # random crops of the 128x128 upsampled images
    config.train.num_epochs = 15
    return config
