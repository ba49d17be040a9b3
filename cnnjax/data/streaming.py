"""The streaming loader: Grain reads, decodes and frames images in worker processes.

Training batches are a pure function of (seed, step), as the in-memory loader's: epoch ``e``
visits the examples in ``epoch_permutation(seed, e)`` (the same order as the in-memory
loader), and step ``s`` takes its slice of that order. One Grain record is one process's
slice of one global batch (``_TrainBatches``): its examples are read, decoded and framed
together (``Framing.train``: random-resized crop and flip where configured, resize to the
training size) by ``data.workers`` processes, each with a few threads, into one uint8 array:
normalisation happens on device. Example ``i`` of epoch ``e`` draws its randomness from
``default_rng([seed, e, i])``, so batches depend on neither timing nor the worker count.

Records that can give their encoded bytes (image folders, TFDS ``Image`` features) are framed
by ``transforms.train_encoded``: the random crop is drawn from the JPEG header and the image
decoded at the smallest DCT scale that covers it, then cropped and resized in one pass.

The data position is the step: a resumed run rebuilds the batches from the step it resumes
at, the identical next batch on every process, whatever the worker count. An epoch is
``len(train) // global_batch_size`` steps; the incomplete last batch is dropped.

Evaluation: ``eval_batches`` reads each of this process's slices of the global evaluation
batches as one Grain record, framed by ``Framing.eval`` (as the in-memory loader does), so
every example is seen exactly once and the last batch is padded with ``mask`` 0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import grain.python as grain
import numpy as np
from absl import flags

from cnnjax.data.loader import StepPosition, check_batch_size, epoch_permutation
from cnnjax.data.sources import CorruptImageError, Records
from cnnjax.data.transforms import Framing, train_encoded

# Batches each worker (or this process, without workers) builds at once, one per thread:
# decoding and resizing release the GIL.
_READ_THREADS = 2


def _flags_parsed() -> None:
    # Grain's worker processes read absl flags; outside an absl app nothing has parsed them.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@functools.lru_cache(maxsize=2)
def _order(seed: int, epoch: int, n: int) -> np.ndarray:
    return epoch_permutation(seed, epoch, n)


class _TrainBatches:
    """Record ``k``: this process's slice of global training batch ``first_step + k``."""

    def __init__(self, records: Records, framing: Framing, global_batch_size: int, seed: int,
                 process_index: int, process_count: int, first_step: int):
        self.records, self.framing, self.seed = records, framing, seed
        self.global_batch_size = global_batch_size
        self.local = global_batch_size // process_count
        self.offset = process_index * self.local
        self.steps_per_epoch = len(records) // global_batch_size
        self.first_step = first_step
        self.encoded = (getattr(records, "encoded", None) if framing.random_resized_crop
                        else None)

    def __len__(self) -> int:
        return 2**31 - 1 - self.first_step

    def indices(self, step: int) -> tuple[int, np.ndarray]:
        """(epoch, the dataset indices this process reads at ``step``)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        start = i * self.global_batch_size + self.offset
        return epoch, _order(self.seed, epoch, len(self.records))[start:start + self.local]

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        epoch, index = self.indices(self.first_step + int(k))
        images = np.empty((len(index), *self.framing.shape), np.uint8)
        labels = np.empty(len(index), np.int32)
        for j, i in enumerate(map(int, index)):
            rng = np.random.default_rng([self.seed, epoch, i])
            if self.encoded is not None:
                record = self.encoded(i)
                try:
                    images[j] = train_encoded(self.framing, record["encoded"], rng)
                except Exception as e:  # noqa: BLE001 - decoders raise many types
                    raise CorruptImageError(
                        f"corrupt image {record['name']}: {type(e).__name__}: {e}; remove or "
                        "replace it") from None
            else:
                record = self.records[i]
                images[j] = self.framing.train(record["image"], rng)
            labels[j] = record["label"]
        return {"images": images, "labels": labels}

    def __repr__(self) -> str:
        return (f"_TrainBatches({self.records!r}, batch={self.global_batch_size}, "
                f"offset={self.offset}, from={self.first_step})")


class StreamingLoader(StepPosition):
    """Training batches read by Grain (see the module docstring); a ``TrainLoader``."""

    name = "streaming"

    def __init__(
        self,
        records: Records,
        framing: Framing,
        global_batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        workers: int = 0,
    ):
        self.local_batch_size = global_batch_size // process_count
        check_batch_size(global_batch_size, len(records))
        self.steps_per_epoch = len(records) // global_batch_size
        self.workers = workers
        self._batches = functools.partial(_TrainBatches, records, framing, global_batch_size,
                                          seed % 2**32, process_index, process_count)
        if workers:
            _flags_parsed()
        self._iterator = None
        self._step = 0

    def _iter(self):
        if self._iterator is None:  # from the step the loader is at
            source = self._batches(self._step)
            self._iterator = iter(grain.DataLoader(
                data_source=source,
                sampler=grain.IndexSampler(len(source), shard_options=grain.NoSharding(),
                                           shuffle=False, num_epochs=1),
                worker_count=self.workers,
                worker_buffer_size=1,
                shard_options=grain.NoSharding(),
                read_options=grain.ReadOptions(num_threads=_READ_THREADS,
                                               prefetch_buffer_size=_READ_THREADS),
            ))
        return self._iterator

    def indices(self, step: int) -> np.ndarray:
        """The dataset indices this process reads at global step ``step``."""
        return self._batches(0).indices(step)[1]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """``{"images": [b, h, w, c] uint8, "labels": [b] int32}``: this process's next batch."""
        self._check_next(step)
        batch = next(self._iter())
        self._step += 1
        return batch

    def _reset(self) -> None:
        self._iterator = None


class _EvalBatchRecords:
    """Record ``j``: this process's slice of global evaluation batch ``j``, framed and masked."""

    def __init__(self, records: Records, framing: Framing, global_batch_size: int,
                 process_index: int, process_count: int):
        self.records, self.framing = records, framing
        self.global_batch_size = global_batch_size
        self.local = global_batch_size // process_count
        self.offset = process_index * self.local

    def __len__(self) -> int:
        return math.ceil(len(self.records) / self.global_batch_size)

    def __getitem__(self, j: int) -> dict[str, np.ndarray]:
        n = len(self.records)
        start = int(j) * self.global_batch_size + self.offset
        index = np.arange(start, start + self.local)
        mask = (index < n).astype(np.float32)
        records = [self.records[int(i)] for i in np.minimum(index, n - 1)]
        return {
            "images": np.stack([self.framing.eval(r["image"]) for r in records]),
            "labels": np.asarray([r["label"] for r in records], np.int32),
            "mask": mask,
        }

    def __repr__(self) -> str:
        return f"_EvalBatchRecords({self.records!r}, batch={self.global_batch_size})"


def eval_batches(
    records: Records,
    framing: Framing,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    workers: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example exactly once, in order; ``{"images", "labels", "mask"}`` per batch."""
    source = _EvalBatchRecords(records, framing, global_batch_size, process_index, process_count)
    if not len(source):
        return
    if workers:
        _flags_parsed()
    loader = grain.DataLoader(
        data_source=source,
        sampler=grain.IndexSampler(len(source), shuffle=False, num_epochs=1),
        worker_count=min(workers, len(source)),
        shard_options=grain.NoSharding(),
        read_options=grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=4),
    )
    yield from loader
