"""ImageNet-shaped synthetic JPEGs, written once as an image folder and as a TFDS dataset
prepared as ArrayRecord (``experiments.benchmarks.loaders`` measures the loaders on them).

Sides drawn around ImageNet's average of 400x350 (long side log-normal about 420 pixels,
ImageNet's aspect ratios); photo-like content (coarse-to-fine colour fields and noise); PIL,
quality 90. Preparing needs neither TensorFlow nor a network.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

CLASSES = 10
QUALITY = 90
# ImageNet's aspect ratios (width / height) and how often they occur, roughly.
RATIOS, RATIO_P = (4 / 3, 3 / 4, 3 / 2, 1.0, 2 / 3), (0.55, 0.15, 0.15, 0.1, 0.05)


def imagenet_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """``(height, width)`` of ``n`` images shaped as ImageNet's: about 400x350 on average."""
    rng = np.random.default_rng(seed)
    long_side = np.clip(rng.lognormal(np.log(420), 0.25, n), 120, 1600)
    ratio = rng.choice(RATIOS, size=n, p=RATIO_P)
    sizes = []
    for side, r in zip(long_side, ratio, strict=True):
        w, h = (side, side / r) if r >= 1 else (side * r, side)
        sizes.append((max(32, int(h)), max(32, int(w))))
    return sizes


def natural_image(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """``[h, w, 3] uint8`` with a photo's mix of smooth regions, edges and texture."""
    from PIL import Image

    out = np.zeros((height, width, 3), np.float32)
    fields = ((4, 0.6), (16, 0.3), (256, 0.7))  # coarse to fine colour fields
    for cells, weight in fields:
        coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        out += weight * np.asarray(Image.fromarray(coarse).resize((width, height),
                                                                  Image.BICUBIC), np.float32)
    out = out / sum(w for _, w in fields) + rng.normal(0, 20, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def synthetic_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``[n, h, w, 3] uint8`` photo-like images of one size."""
    rng = np.random.default_rng(seed)
    return np.stack([natural_image(height, width, rng) for _ in range(n)])


def write_folder(root: str, n: int, seed: int = 0) -> dict[str, Any]:
    """``n`` training JPEGs (and ``n // 10``, at least one a class, test ones) in
    ``root/{train,test}/<class>/``, unless ``root`` already holds them (image ``i`` is a pure
    function of ``(seed, i)``; written by a thread per core); returns their mean size."""
    from PIL import Image

    marker = os.path.join(root, f"written_{n}.json")
    if os.path.exists(marker):
        return json.load(open(marker))
    sizes = imagenet_sizes(n + max(n // 10, CLASSES), seed)
    for split in ("train", "test"):
        for c in range(CLASSES):
            os.makedirs(os.path.join(root, split, f"class{c}"), exist_ok=True)

    def write(i: int) -> int:
        h, w = sizes[i]
        buffer = io.BytesIO()
        image = natural_image(h, w, np.random.default_rng([seed, i]))
        Image.fromarray(image).save(buffer, format="JPEG", quality=QUALITY)
        split = "train" if i < n else "test"
        with open(os.path.join(root, split, f"class{i % CLASSES}", f"{i:07d}.jpg"), "wb") as f:
            f.write(buffer.getvalue())
        return len(buffer.getvalue())

    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        nbytes = list(pool.map(write, range(len(sizes))))
    stats = {"images": n, "mean_height": float(np.mean([h for h, _ in sizes])),
             "mean_width": float(np.mean([w for _, w in sizes])),
             "mean_kb": float(np.mean(nbytes)) / 1024}
    with open(marker, "w") as f:
        json.dump(stats, f)
    return stats


class SyntheticJpegs(tfds.core.GeneratorBasedBuilder):
    """ImageNet-shaped synthetic JPEGs: the image folder that ``write_folder`` wrote."""

    VERSION = tfds.core.Version("1.0.0")
    FOLDER = ""  # set by write_tfds before preparing

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=CLASSES)}),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {s: self._generate_examples(s) for s in ("train", "test")}

    def _generate_examples(self, split):
        for c in range(CLASSES):
            d = os.path.join(self.FOLDER, split, f"class{c}")
            for name in sorted(os.listdir(d)):
                yield f"{c}/{name}", {"image": os.path.join(d, name), "label": c}


def write_tfds(folder: str, data_dir: str) -> str:
    """The folder's JPEGs as TFDS dataset ``synthetic_jpegs`` (ArrayRecord) in ``data_dir``."""
    SyntheticJpegs.FOLDER = folder
    builder = SyntheticJpegs(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        tfds.disable_progress_bar()
        with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints sizes it does not know
            builder.download_and_prepare()
    return "synthetic_jpegs"
