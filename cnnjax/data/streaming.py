"""The streaming loader: Grain reads, decodes and frames images in worker processes.

Training: a ``grain.python.DataLoader`` over the training records with an ``IndexSampler``
that gives each JAX process its own shard (``ShardOptions(process_index, process_count)``:
disjoint, together the whole split) and shuffles it afresh every epoch from the run's seed.
Each record is decoded (by TFDS, or PIL for image folders) and framed on the host
(``Framing.train``: random-resized crop and flip where configured, resize to the training
size), then ``data.workers`` processes build this process's batches, uint8 throughout:
normalisation happens on device. Record ``i`` of the sampled sequence draws its randomness
from ``Philox(seed + i)``, so batches do not depend on timing.

The data position is Grain's iterator state (JSON text), saved in the checkpoint by
``state(step)`` and restored by ``restore``: a resumed run reads the identical next batch.
The checkpoint holds process 0's position; every other process shifts it to its own shard.
The batches a worker builds depend on the worker count, so a position restores only into a
loader with the same ``data.workers``.

An epoch is ``len(train) // global_batch_size`` steps; since each process's shard is read as
one endless shuffled sequence, a batch may straddle two epochs (no example is dropped).

Evaluation: ``eval_batches`` reads each of this process's slices of the global evaluation
batches as one Grain record, framed by ``Framing.eval`` (as the in-memory loader does), so
every example is seen exactly once and the last batch is padded with ``mask`` 0.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

import grain.python as grain
import numpy as np
from absl import flags

from cnnjax.data.sources import Records
from cnnjax.data.transforms import Framing
from cnnjax.errors import ConfigError

# Records each worker reads ahead with its threads; decoding happens while reading.
_READ_THREADS = 4


def _flags_parsed() -> None:
    # Grain's worker processes read absl flags; outside an absl app nothing has parsed them.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class _TrainMap(grain.RandomMapTransform):
    """Decoded record -> ``{"image": [h, w, c] uint8, "label": int32}`` with random framing."""

    def __init__(self, framing: Framing):
        self.framing = framing

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return {"image": self.framing.train(element["image"], rng),
                "label": np.int32(element["label"])}


class StreamingLoader:
    """Training batches read by Grain (see the module docstring); a ``TrainLoader``."""

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
        shard_size = len(records) // process_count
        self.local_batch_size = global_batch_size // process_count
        if self.local_batch_size > shard_size:
            raise ConfigError(
                f"data.batch_size={global_batch_size} is larger than the {len(records)} "
                "training examples; pass a smaller --config.data.batch_size, or use more data"
            )
        self.steps_per_epoch = len(records) // global_batch_size
        self.workers = workers
        self._shard = shard = grain.ShardOptions(process_index, process_count, drop_remainder=True)
        self._sampler = sampler = grain.IndexSampler(
            len(records), shard_options=shard, shuffle=True, num_epochs=None,
            seed=seed % 2**31,
        )
        if workers:
            _flags_parsed()
        batch = grain.Batch(self.local_batch_size, drop_remainder=True)
        self._loader = grain.DataLoader(
            data_source=records,
            sampler=sampler,
            operations=[_TrainMap(framing), batch],
            worker_count=workers,
            worker_buffer_size=2,
            shard_options=shard,
            read_options=grain.ReadOptions(
                num_threads=_READ_THREADS, prefetch_buffer_size=2 * self.local_batch_size
            ),
        )
        self._iterator = None
        self._step = 0

    def _iter(self):
        if self._iterator is None:
            self._iterator = iter(self._loader)
        return self._iterator

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """``{"images": [b, h, w, c] uint8, "labels": [b] int32}``: this process's next batch."""
        if step != self._step:
            raise ValueError(
                f"the streaming loader reads batches in order: asked for step {step}, next is "
                f"{self._step} (restore a saved position to start elsewhere)"
            )
        batch = next(self._iter())
        self._step += 1
        return {"images": batch["image"], "labels": batch["label"]}

    def state(self, step: int) -> dict[str, Any]:
        """The position after ``step`` batches: Grain's iterator state as JSON text."""
        if step != self._step:
            raise ValueError(f"state asked for step {step}; the loader is at step {self._step}")
        return {
            "step": step,
            "workers": self.workers,
            "grain": self._iter().get_state().decode(),
        }

    def restore(self, step: int, state: dict[str, Any]) -> None:
        """Continues from a position saved by ``state(step)``."""
        if "grain" not in state:
            raise ConfigError(
                f"the checkpoint at step {step} holds no streaming data position (it was "
                "written by the in-memory loader); resume with --config.data.loader=memory"
            )
        if state["workers"] != self.workers:
            raise ConfigError(
                f"the checkpoint's data position was saved with data.workers={state['workers']} "
                "(batches depend on the worker count); resume with "
                f"--config.data.workers={state['workers']}"
            )
        grain_state = json.loads(state["grain"])
        if grain_state.get("sampler") != repr(self._sampler):
            grain_state = self._from_other_process(grain_state)
        self._iterator = iter(self._loader)
        self._iterator.set_state(json.dumps(grain_state).encode())
        self._step = step

    def _from_other_process(self, grain_state: dict[str, Any]) -> dict[str, Any]:
        """Process 0's position (the one the checkpoint holds) as this process's position.

        Grain (state version 2) records, per worker, the last position read in the sampler's
        sequence, where process ``p``'s records sit at ``p, p + P, p + 2P, ...``. Processes
        read in lockstep, so this process's positions are process 0's shifted by the shard
        difference.
        """
        saved = re.search(r"shard_index=(\d+)", grain_state.get("sampler", ""))
        if grain_state.get("version") != 2 or saved is None:
            raise ConfigError(
                "the checkpoint's streaming position was written by another Grain version or "
                "loader; resume with the same cnnjax and grain versions"
            )
        shift = self._shard.shard_index - int(saved.group(1))
        grain_state = dict(grain_state, sampler=repr(self._sampler))
        grain_state["last_seen_indices"] = {
            k: v + shift for k, v in grain_state["last_seen_indices"].items()
        }
        return grain_state


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
