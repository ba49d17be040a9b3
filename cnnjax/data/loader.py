"""The in-memory loader: batches are a pure function of (seed, step).

Epoch ``e`` visits the training examples in the order ``permutation(seed, e)``; step ``s``
of a run takes global positions ``[i*B, (i+1)*B)`` of epoch ``s // steps_per_epoch``'s
order (``i = s % steps_per_epoch``). So the data position of a run *is* its step: resuming
at any step, mid-epoch included, yields the identical next batch. The incomplete last batch
of an epoch is dropped (every step sees a full global batch).

With several processes, each reads the contiguous slice of the global batch that belongs to
its devices, so processes see disjoint examples that together form the global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from cnnjax.errors import ConfigError


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of epoch ``epoch``: a permutation of ``range(n)`` fixed by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def check_batch_size(global_batch_size: int, num_examples: int) -> None:
    """Every step takes a full global batch: the training split must hold one."""
    if global_batch_size > num_examples:
        raise ConfigError(
            f"data.batch_size={global_batch_size} is larger than the {num_examples} "
            "training examples; pass a smaller --config.data.batch_size, or use more data")


class StepPosition:
    """The data position of a loader that reads its batches in order, each a pure function
    of the step: ``state`` names the loader, ``restore`` moves it to a step (``_reset``)."""

    name = ""
    steps_per_epoch = 1
    _step = 0

    def _check_next(self, step: int) -> None:
        if step != self._step:
            raise ValueError(
                f"the {self.name} loader reads batches in order: asked for step {step}, next "
                f"is {self._step} (restore a saved position to start elsewhere)")

    def state(self, step: int) -> dict[str, Any]:
        """The position after ``step`` batches (the step alone fixes it)."""
        if step != self._step:
            raise ValueError(f"state asked for step {step}; the loader is at step {self._step}")
        epoch, index = divmod(step, self.steps_per_epoch)
        return {"loader": self.name, "epoch": epoch, "index_in_epoch": index}

    def restore(self, step: int, state: dict[str, Any]) -> None:
        """Continues from step ``step`` of a position saved by ``state(step)``."""
        if state.get("loader") != self.name:
            written = ("an older cnnjax's streaming loader" if "grain" in state else
                       f"the {state.get('loader', 'memory')} loader")
            hint = ("start a new --workdir" if "grain" in state else
                    f"resume with --config.data.loader={state.get('loader', 'memory')}")
            raise ConfigError(f"the checkpoint at step {step} holds no {self.name} data "
                              f"position (it was written by {written}); {hint}")
        self._reset()
        self._step = step

    def _reset(self) -> None:
        raise NotImplementedError


class InMemoryLoader:
    """Training batches from arrays held in host memory."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        global_batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        check_batch_size(global_batch_size, len(labels))
        self.images, self.labels = images, labels
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.seed = seed
        self._offset = process_index * self.local_batch_size
        self.steps_per_epoch = len(labels) // global_batch_size
        self._cached_epoch, self._order = -1, np.empty(0, np.int64)

    def indices(self, step: int) -> np.ndarray:
        """The dataset indices this process reads at global step ``step``."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._cached_epoch:
            self._order = epoch_permutation(self.seed, epoch, len(self.labels))
            self._cached_epoch = epoch
        start = i * self.global_batch_size + self._offset
        return self._order[start : start + self.local_batch_size]

    def state(self, step: int) -> dict[str, int]:
        """The data position after ``step`` steps (informational: the step alone fixes it)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        return {"epoch": epoch, "index_in_epoch": index}

    def restore(self, step: int, state: dict[str, int]) -> None:
        del step, state  # batches are a pure function of the step

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """``{"images": [b, h, w, c] uint8, "labels": [b] int32}`` for this process."""
        idx = self.indices(step)
        return {"images": self.images[idx], "labels": self.labels[idx]}


def eval_batches(
    images: np.ndarray,
    labels: np.ndarray,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example exactly once, in order; the last batch is padded and masked out.

    Yields ``{"images", "labels", "mask"}`` for this process's slice of each global batch;
    ``mask`` is 1.0 for real examples and 0.0 for padding.
    """
    n = len(labels)
    local = global_batch_size // process_count
    for start in range(0, n, global_batch_size):
        idx = np.arange(start + process_index * local, start + (process_index + 1) * local)
        mask = (idx < n).astype(np.float32)
        idx = np.minimum(idx, n - 1)
        yield {"images": images[idx], "labels": labels[idx], "mask": mask}
