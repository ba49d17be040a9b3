"""Loader throughput on synthetic data: images per second for each loader and worker count.

    python -m experiments.benchmarks.loaders         # 32x32 and 224x224, 1 and 2 workers
    python -m experiments.benchmarks.loaders --sizes=224 --workers=0,1,2,4,8 --batches=40

The in-memory loader gathers batches from uint8 arrays. The streaming loader reads JPEG files
held in memory (encoded with PIL, quality 90, 1.25x the training size: the decoding work of a
real dataset without its disk), decodes them with PIL in Grain workers, and frames them as it
would the dataset (224: random-resized crop and flip, like ImageNet; 32: decode only, like
CIFAR). Each measurement starts after a first batch (worker start-up excluded) and counts
``--batches`` batches of ``--batch_size`` images. Nothing touches an accelerator: the numbers
are what the host can feed.
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
from absl import app, flags

_SIZES = flags.DEFINE_list("sizes", ["32", "224"], "Training image sizes (square).")
_WORKERS = flags.DEFINE_list("workers", ["1", "2"], "Grain worker counts for streaming.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Global batch size.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Batches timed per measurement.")
_IMAGES = flags.DEFINE_integer("images", 2048, "Distinct synthetic images.")


def synthetic_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``[n, h, w, 3] uint8``: smooth random colour fields plus noise (photo-like JPEG sizes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        smooth = np.asarray(Image.fromarray(coarse[i]).resize((width, height), Image.BICUBIC))
        noise = rng.normal(0, 12, smooth.shape)
        out[i] = np.clip(smooth + noise, 0, 255).astype(np.uint8)
    return out


class JpegRecords:
    """``Records`` of JPEG bytes held in memory, decoded with PIL on access."""

    def __init__(self, images: np.ndarray, quality: int = 90):
        from PIL import Image

        self.encoded = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
            self.encoded.append(buffer.getvalue())

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image

        with Image.open(io.BytesIO(self.encoded[index])) as im:
            image = np.asarray(im.convert("RGB"))
        return {"image": image, "label": int(index % 10)}

    def __repr__(self) -> str:
        return f"JpegRecords(n={len(self)})"


def _rate(loader, batches: int) -> float:
    loader.batch(0)  # start-up (workers, first reads) is not timed
    start = time.perf_counter()
    for step in range(1, batches + 1):
        images = loader.batch(step)["images"]
    elapsed = time.perf_counter() - start
    return batches * len(images) / elapsed


def measure(size: int, workers: list[int], batch_size: int, batches: int,
            n: int) -> list[tuple[str, float]]:
    """``[(loader description, images per second)]`` at ``size`` x ``size``."""
    from cnnjax.data.loader import InMemoryLoader
    from cnnjax.data.streaming import StreamingLoader
    from cnnjax.data.transforms import Framing

    natural = size >= 64  # ImageNet-like framing for large images, CIFAR-like for small
    source_size = int(round(size * 1.25)) if natural else size
    images = synthetic_images(n, source_size, source_size)
    labels = (np.arange(n) % 10).astype(np.int32)
    framed = np.ascontiguousarray(images[:, :size, :size])  # decoded, at the training size
    results = [("memory", _rate(InMemoryLoader(framed, labels, batch_size, 0), batches))]
    records = JpegRecords(images)
    framing = Framing(size, size, 3, crop_fraction=0.875 if natural else 1.0,
                      random_resized_crop=natural, flip=True)
    kb = np.mean([len(e) for e in records.encoded]) / 1024
    for w in workers:
        loader = StreamingLoader(records, framing, batch_size, 0, workers=w)
        label = f"streaming, {w} worker{'s' if w != 1 else ''} (JPEG {source_size}px, {kb:.0f} KB)"
        results.append((label, _rate(loader, batches)))
        del loader
    return results


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import os

    print(f"host: {os.cpu_count()} CPUs; global batch {_BATCH.value}, "
          f"{_BATCHES.value} batches per measurement")
    for size in map(int, _SIZES.value):
        for label, rate in measure(size, list(map(int, _WORKERS.value)), _BATCH.value,
                                   _BATCHES.value, _IMAGES.value):
            print(f"{size:>4}x{size:<4} {label:<52} {rate:>10,.0f} images/s", flush=True)
    return 0


if __name__ == "__main__":
    app.run(main)
