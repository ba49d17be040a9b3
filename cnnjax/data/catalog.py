"""What cnnjax knows about a dataset beyond its TFDS metadata: the per-dataset table.

For each dataset the table gives the split evaluated on, the image size used for training
and evaluation, how evaluation frames the image, whether streaming training uses
Inception-style random-resized crops, and the per-channel normalisation statistics (in uint8
units, as ``DatasetInfo`` expects). A dataset not in the table gets ``fallback``: its native
size if all its images share one (else 224 with the ImageNet framing), the ``test`` split
(else ``validation``, else the last 10% of ``train``), and statistics measured on a fixed
sample of its training images.
"""

from __future__ import annotations

import dataclasses

# ImageNet statistics (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) in uint8 units: also the
# usual choice for natural-image datasets fine-tuned from ImageNet.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

# Evaluation of natural images: resize the shorter side to size / 0.875 (256 for 224), then
# take the central size x size crop (He et al. 2016; the torchvision and Flax recipes).
CENTER_CROP = 0.875


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How cnnjax trains and evaluates on one dataset.

    Attributes:
      eval_split: the TFDS split evaluated on (``""``: found from the dataset's splits).
      image_size: training and evaluation height = width in pixels (0: the native size).
      crop_fraction: evaluation resizes the shorter side to ``image_size / crop_fraction``
        and takes the central crop; 1.0 resizes the whole image (small fixed-size datasets).
      random_resized_crop: the streaming loader trains on random-resized crops (area 8-100%,
        aspect 3/4-4/3) instead of the evaluation framing.
      mean, std: per channel, uint8 units; ``None`` = measured on the training images.
    """

    eval_split: str = ""
    image_size: int = 0
    crop_fraction: float = 1.0
    random_resized_crop: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def _natural(eval_split: str, size: int = 224) -> DatasetSpec:
    return DatasetSpec(eval_split, size, CENTER_CROP, True, IMAGENET_MEAN, IMAGENET_STD)


TABLE: dict[str, DatasetSpec] = {
    # Small fixed-size datasets: trained at native size; crop/flip happen on device.
    "mnist": DatasetSpec("test", 28, mean=(33.33,), std=(78.57,)),
    "fashion_mnist": DatasetSpec("test", 28, mean=(72.93,), std=(90.02,)),
    "cifar10": DatasetSpec(
        "test", 32, mean=(125.31, 122.96, 113.86), std=(62.99, 62.09, 66.70)
    ),
    "cifar100": DatasetSpec(
        "test", 32, mean=(129.31, 124.06, 112.43), std=(68.16, 65.38, 70.43)
    ),
    "svhn_cropped": DatasetSpec(
        "test", 32, mean=(111.61, 113.17, 120.56), std=(50.49, 51.26, 50.24)
    ),
    "stl10": DatasetSpec("test", 96),
    "imagenet_resized/32x32": DatasetSpec("validation", 32, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "imagenet_resized/64x64": DatasetSpec("validation", 64, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    # Natural images of varying size: 224 x 224, random-resized crops, central-crop eval.
    "imagenet2012": _natural("validation"),
    "imagenette": _natural("validation"),
    "imagewang": _natural("validation"),
    "oxford_flowers102": _natural("test"),
    "oxford_iiit_pet": _natural("test"),
    "food101": _natural("validation"),
    "caltech101": _natural("test"),
    "stanford_dogs": _natural("test"),
    "dtd": _natural("test"),
}

FALLBACK_NATURAL_SIZE = 224  # for datasets whose images differ in size and that are not listed


def lookup(name: str) -> DatasetSpec | None:
    """The table entry for TFDS name ``name`` (``"imagenette/320px-v2"`` finds ``imagenette``)."""
    if name in TABLE:
        return TABLE[name]
    base = name.split("/")[0].split(":")[0]
    return TABLE.get(base)


def fallback(fixed: bool) -> DatasetSpec:
    """The spec of an unlisted dataset: native size if its images share one (``fixed``)."""
    if fixed:
        return DatasetSpec()
    return DatasetSpec(
        image_size=FALLBACK_NATURAL_SIZE, crop_fraction=CENTER_CROP, random_resized_crop=True
    )


def eval_split_from(available: list[str]) -> str:
    """The split to evaluate on, from a dataset's split names (an empty list: ``test``)."""
    for split in ("test", "validation", "valid", "val"):
        if split in available or not available:
            return split
    return "train[90%:]"  # only a train split: TFDS slicing holds out its last 10%
