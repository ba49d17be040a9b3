"""Datasets by name, and the loaders that turn them into this process's training batches.

``build(cfg, seed, process_index, process_count)`` opens the dataset of config section
``data`` and returns a ``Data``: what the loop needs to build a model (classes, image shape)
and to normalise inputs (per-channel mean and std), a training loader and the evaluation
batches.

Names: any TFDS image-classification dataset prepared as ArrayRecord (``mnist``, ``cifar10``,
``imagenet2012``, ...; see ``catalog`` for the per-dataset table and ``prepare`` for the
one-time preparation), ``digits`` (ships with scikit-learn, prepared on first use),
``npz:/path/file.npz`` and ``folder:/path/dir`` (see ``local``).

Loaders (``data.loader``): ``memory`` decodes both splits once into host arrays and reads
batches that are a pure function of (seed, step); ``streaming`` reads the same batches with
Grain worker processes (see ``streaming``); ``dali`` decodes them with NVIDIA DALI, on the GPU
where there is one (see ``dali``; an optional extra); ``auto`` takes ``memory`` when the
decoded splits fit under ``data.max_memory_mb``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from cnnjax.data import augment as augment_lib
from cnnjax.data import local
from cnnjax.data.loader import InMemoryLoader, eval_batches
from cnnjax.data.sources import (
    BUILTIN,
    CorruptImageError,
    DataNotPreparedError,
    Source,
    open_tfds,
    prepare_builtin,
    resolve_data_dir,
)
from cnnjax.data.transforms import Framing
from cnnjax.errors import ConfigError, warn

# The loaders a config may name (data.loader): auto picks memory when the decoded dataset fits
# under data.max_memory_mb, else streaming (choose_loader).
LOADERS = ("auto", "memory", "streaming", "dali")
__all__ = [
    "CorruptImageError", "Data", "DataNotPreparedError", "DatasetInfo", "InMemoryLoader",
    "LOADERS", "Split", "build", "describe", "eval_batches", "load", "names",
]

STATS_SAMPLE = 2048  # training images that normalisation statistics are measured on


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


# Dataset sources by the prefix of ``data.name`` (``npz:/path``, ``folder:/path``); any other
# name is a TFDS dataset. A new source is one entry: ``(path, skip_corrupt=, name=) -> Source``.
SOURCES: dict[str, Callable[..., Source]] = {"npz": local.open_npz, "folder": local.open_folder}


def open_source(cfg) -> Source:
    """Opens the dataset of config section ``data`` (``name``, ``data_dir``, ``skip_corrupt``)."""
    kind, sep, path = cfg.name.partition(":")
    if sep and kind in SOURCES:
        if not path.strip():
            raise ConfigError(f"data.name={cfg.name!r} needs a path: {kind}:/path/to/data")
        return SOURCES[kind](os.path.expanduser(path), skip_corrupt=cfg.skip_corrupt,
                             name=cfg.name)
    return open_tfds(cfg.name, cfg.data_dir)


def names() -> list[str]:
    """Names that need no preparation step (the rest of the TFDS catalog works once prepared)."""
    return sorted(BUILTIN)


def load(name: str, split: str, data_dir: str = "") -> Split:
    """Reads split ``split`` of dataset ``name`` into host memory with ``tfds.data_source``."""
    import tensorflow_datasets as tfds  # 1 s to import: only once a dataset is read

    data_dir = resolve_data_dir(data_dir)
    if name in BUILTIN:
        prepare_builtin(name, data_dir)
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
      augment: the augmentation left to the train step on device (``steps.make_train_step``
        keyword arguments: ``augment``, the ``data.augment`` string of every op the loader
        did not do).
      loader: which loader was chosen, ``"memory"`` or ``"streaming"``.
    """

    info: DatasetInfo
    train: TrainLoader
    eval_batches: Callable[[int], Iterator[dict[str, np.ndarray]]]
    num_train: int
    num_eval: int
    augment: dict[str, Any] = dataclasses.field(default_factory=dict)
    loader: str = "memory"


def framing_for(source: Source, cfg) -> Framing:
    """The input shape and framing of ``source``'s images under config section ``data``."""
    spec = source.spec
    size = cfg.image_size or spec.image_size
    if size:
        height = width = size
    elif source.native_shape is not None:
        height, width = source.native_shape[:2]
    else:  # only a folder of mixed sizes gets here (TFDS datasets get a fallback size)
        raise ConfigError(
            f"the images of {source.name} differ in size; choose the training size with "
            "--config.data.image_size=N (N x N pixels)"
        )
    return Framing(
        height=int(height), width=int(width), channels=source.channels,
        crop_fraction=spec.crop_fraction, random_resized_crop=spec.random_resized_crop,
        flip=cfg.flip or "flip" in dict(augment_lib.chain(cfg)),
    )


def choose_loader(cfg, source: Source, framing: Framing) -> str:
    """``data.loader``, with ``auto`` resolved by the decoded size of both splits."""
    if cfg.loader != "auto":
        return cfg.loader
    decoded = (len(source.train) + len(source.eval)) * int(np.prod(framing.shape))
    return "memory" if decoded <= cfg.max_memory_mb * 2**20 else "streaming"


def load_arrays(records, framing: Framing, skip_corrupt: bool = False) -> Split:
    """Decodes and frames (``Framing.eval``) every record into host memory, with threads."""
    images = getattr(records, "images", None)
    if images is not None and images.shape[1:] == framing.shape:  # already arrays
        return Split(images=images, labels=records.labels)

    def read(i: int):
        try:
            record = records[i]
        except CorruptImageError as e:
            if not skip_corrupt:
                raise
            warn(f"skipping {e}")
            return None
        return framing.eval(record["image"]), record["label"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        read_records = [r for r in pool.map(read, range(len(records))) if r is not None]
    if not read_records:
        return Split(np.zeros((0, *framing.shape), np.uint8), np.zeros(0, np.int32))
    return Split(
        images=np.stack([r[0] for r in read_records]),
        labels=np.asarray([r[1] for r in read_records], np.int32),
    )


def stats_sample(n: int) -> np.ndarray:
    """The fixed, evenly spaced training indices normalisation statistics are measured on."""
    return np.unique(np.linspace(0, n - 1, min(n, STATS_SAMPLE)).round().astype(np.int64))


def _statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64)
    std = np.maximum(pixels.std(0), 1.0)  # a constant channel must not divide by zero
    return tuple(float(m) for m in pixels.mean(0)), tuple(float(s) for s in std)


def build(cfg, seed: int, process_index: int = 0, process_count: int = 1) -> Data:
    """The data of a run from the ``data`` section of its config."""
    source = open_source(cfg)
    framing = framing_for(source, cfg)
    kind = choose_loader(cfg, source, framing)
    ops = augment_lib.chain(cfg)
    if kind == "memory":
        train = load_arrays(source.train, framing, cfg.skip_corrupt)
        test = load_arrays(source.eval, framing, cfg.skip_corrupt)
        loader = InMemoryLoader(
            train.images, train.labels, cfg.batch_size, seed, process_index, process_count
        )
        evals = lambda batch_size: eval_batches(  # noqa: E731
            test.images, test.labels, batch_size, process_index, process_count
        )
        sample = lambda: train.images[stats_sample(len(train))]  # noqa: E731
        num_train, num_eval = len(train), len(test)
    else:
        from cnnjax.data import streaming  # Grain, 1.3 s to import: only for this loader

        if kind == "dali":
            from cnnjax.data import dali

            loader = dali.DaliLoader(source.train, framing, cfg.batch_size, seed,
                                     process_index, process_count, threads=max(cfg.workers, 1),
                                     device_id=dali.local_gpu())
        else:
            loader = streaming.StreamingLoader(
                source.train, framing, cfg.batch_size, seed, process_index, process_count,
                cfg.workers,
            )
        evals = lambda batch_size: streaming.eval_batches(  # noqa: E731
            source.eval, framing, batch_size, process_index, process_count, cfg.workers
        )
        sample = lambda: _sample(source, framing, cfg.skip_corrupt)  # noqa: E731
        num_train, num_eval = len(source.train), len(source.eval)
        ops = augment_lib.without(ops, "flip")  # flipped on the host, with the crop
    return Data(info=_info(source, framing, sample), train=loader, eval_batches=evals,
                num_train=num_train, num_eval=num_eval,
                augment={"augment": augment_lib.format_chain(ops)}, loader=kind)


@dataclasses.dataclass(frozen=True)
class EvalData:
    """The test split alone (``eval_batches`` as ``Data``'s), for a trained run."""

    info: DatasetInfo
    eval_batches: Callable[[int], Iterator[dict[str, np.ndarray]]]
    num_eval: int


def build_eval(cfg, info: DatasetInfo, process_index: int = 0,
               process_count: int = 1) -> EvalData:
    """The test split of the ``data`` section ``cfg``, without reading the training split;
    ``info``: ``describe(cfg)``, as the run was trained with."""
    source = open_source(cfg)
    framing = framing_for(source, cfg)
    if choose_loader(cfg, source, framing) == "memory":
        test = load_arrays(source.eval, framing, cfg.skip_corrupt)
        return EvalData(info, lambda batch_size: eval_batches(
            test.images, test.labels, batch_size, process_index, process_count), len(test))
    from cnnjax.data import streaming  # Grain, 1.3 s to import: only for this loader

    return EvalData(info, lambda batch_size: streaming.eval_batches(
        source.eval, framing, batch_size, process_index, process_count, cfg.workers),
        len(source.eval))


def describe(cfg) -> DatasetInfo:
    """The ``DatasetInfo`` that ``build(cfg, ...)`` gives, without loading the dataset."""
    source = open_source(cfg)
    framing = framing_for(source, cfg)
    return _info(source, framing, lambda: _sample(source, framing, cfg.skip_corrupt))


def _sample(source: Source, framing: Framing, skip_corrupt: bool) -> np.ndarray:
    subset = _Subset(source.train, stats_sample(len(source.train)))
    return load_arrays(subset, framing, skip_corrupt).images


def _info(source: Source, framing: Framing, sample: Callable[[], np.ndarray]) -> DatasetInfo:
    spec = source.spec
    if spec.mean and len(spec.mean) == framing.channels:
        mean, std = spec.mean, spec.std
    else:  # not in the table (or listed for another channel count): measured
        mean, std = _statistics(sample())
    return DatasetInfo(
        name=source.name, num_classes=source.num_classes, image_shape=framing.shape,
        mean=tuple(mean), std=tuple(std),
    )


class _Subset:
    def __init__(self, records, index: np.ndarray):
        self.records, self.index = records, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        return self.records[int(self.index[i])]
