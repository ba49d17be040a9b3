"""The handwritten digits that ship inside scikit-learn, as a TensorFlow Datasets builder.

1,797 greyscale images of 8x8 pixels, 10 classes (UCI "optdigits", pre-processed by
scikit-learn). Preparing needs no network and no TensorFlow: the examples come from
``sklearn.datasets.load_digits`` and are written as ArrayRecord with ``Tensor`` features.

Split (fixed, documented, stratified): ``test`` holds 25% of every class (450 images),
chosen by ``sklearn.model_selection.train_test_split(test_size=0.25, stratify=labels,
random_state=0)``; ``train`` holds the other 1,347.

Pixel values: scikit-learn gives integers 0..16; they are stored as uint8 0..255
(``round(v * 255 / 16)``) so that digits looks like every other image dataset.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

TEST_FRACTION = 0.25
SPLIT_SEED = 0


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images ``[n, 8, 8, 1] uint8`` and labels ``[n] int64`` of ``split`` ('train'/'test')."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        index, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    chosen = {"train": np.sort(train_idx), "test": np.sort(test_idx)}[split]
    return images[chosen], labels[chosen]


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits with a fixed stratified train/test split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Stratified 75/25 split, random_state=0."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the data ships with scikit-learn
        return {split: self._generate_examples(split) for split in ("train", "test")}

    def _generate_examples(self, split):
        images, labels = load_split(split)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": image, "label": int(label)}
