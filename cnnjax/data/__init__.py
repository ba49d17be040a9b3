"""Datasets by name, and loaders whose batches are a pure function of (seed, step).

``load(name, split, data_dir)`` returns a split's images and labels as host arrays;
``DatasetInfo`` tells the loop what it needs to build a model (classes, image shape) and to
normalise inputs (per-channel mean and std of the training images).

Built in: ``digits`` (ships with scikit-learn; prepared locally into TFDS's data_dir on first
use). Any other name is looked up in TensorFlow Datasets' catalog and read with
``tfds.data_source``; it must have been prepared beforehand (see the README).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from cnnjax.data.loader import InMemoryLoader, eval_batches

__all__ = [
    "Data", "DatasetInfo", "InMemoryLoader", "Split", "build", "eval_batches", "load", "names",
]

# Datasets whose builder ships in cnnjax: name -> module that registers the builder.
_BUILTIN = {"digits": "cnnjax.data.builders.digits"}


@dataclasses.dataclass(frozen=True)
class Split:
    """One split held in host memory.

    Attributes:
      images: ``[n, height, width, channels] uint8``.
      labels: ``[n] int32`` class indices.
    """

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]  # per channel, in uint8 units
    std: tuple[float, ...]


def names() -> list[str]:
    """Names that need no preparation step (the rest of the TFDS catalog works once prepared)."""
    return sorted(_BUILTIN)


def resolve_data_dir(data_dir: str) -> str:
    """An empty ``data_dir`` means TFDS's default (``$TFDS_DATA_DIR`` or ~/tensorflow_datasets)."""
    if data_dir:
        return os.path.expanduser(data_dir)
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def _prepare_builtin(name: str, data_dir: str) -> None:
    import importlib

    import tensorflow_datasets as tfds

    importlib.import_module(_BUILTIN[name])
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        tfds.disable_progress_bar()
        builder.download_and_prepare()


def load(name: str, split: str, data_dir: str = "") -> Split:
    """Reads split ``split`` of dataset ``name`` into host memory with ``tfds.data_source``."""
    import tensorflow_datasets as tfds

    data_dir = resolve_data_dir(data_dir)
    if name in _BUILTIN:
        _prepare_builtin(name, data_dir)
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    records = source.__getitems__(range(len(source)))
    images = np.stack([r["image"] for r in records])
    labels = np.asarray([r["label"] for r in records], dtype=np.int32)
    if images.ndim == 3:  # [n, h, w] greyscale without a channel axis
        images = images[..., None]
    return Split(images=images, labels=labels)


def info_from(name: str, train: Split, num_classes: int | None = None) -> DatasetInfo:
    """Describes a dataset from its training split (normalisation statistics included)."""
    pixels = train.images.reshape(-1, train.images.shape[-1]).astype(np.float64)
    return DatasetInfo(
        name=name,
        num_classes=int(num_classes or train.labels.max() + 1),
        image_shape=tuple(int(d) for d in train.images.shape[1:]),
        mean=tuple(float(m) for m in pixels.mean(0)),
        std=tuple(float(s) for s in pixels.std(0)),
    )


class TrainLoader(Protocol):
    """What the training loop needs of a loader: this process's slice of global batch ``step``.

    ``batch`` is called with consecutive steps. ``state``/``restore`` carry the data position
    in the checkpoint (JSON); a loader that is a pure function of the step may return ``{}``.
    """

    steps_per_epoch: int

    def batch(self, step: int) -> dict[str, np.ndarray]: ...

    def state(self, step: int) -> dict[str, Any]: ...

    def restore(self, step: int, state: dict[str, Any]) -> None: ...


@dataclasses.dataclass
class Data:
    """Everything a run needs from its data.

    Attributes:
      info: classes, image shape, normalisation statistics.
      train: the training loader.
      eval_batches: ``eval_batches(global_batch_size)`` yields this process's slices of the
        test split, every example exactly once, padding masked (``mask`` = 0).
      num_train, num_eval: split sizes.
    """

    info: DatasetInfo
    train: TrainLoader
    eval_batches: Callable[[int], Iterator[dict[str, np.ndarray]]]
    num_train: int
    num_eval: int


def build(cfg, seed: int, process_index: int = 0, process_count: int = 1) -> Data:
    """The data of a run from the ``data`` section of its config."""
    train = load(cfg.name, "train", cfg.data_dir)
    test = load(cfg.name, "test", cfg.data_dir)
    loader = InMemoryLoader(
        train.images, train.labels, cfg.batch_size, seed, process_index, process_count
    )
    return Data(
        info=info_from(cfg.name, train),
        train=loader,
        eval_batches=lambda batch_size: eval_batches(
            test.images, test.labels, batch_size, process_index, process_count
        ),
        num_train=len(train),
        num_eval=len(test),
    )
