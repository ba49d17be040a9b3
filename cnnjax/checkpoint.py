"""Orbax checkpoints that make a run resumable bit for bit.

A checkpoint at step ``s`` holds two items:

* ``state``: the whole ``TrainState`` (params, batch stats, optimizer state, step, rng);
* ``progress``: JSON with the data position (the loaders are pure functions of the step,
  so the position is the step; it is recorded for loaders that keep more state), the
  train-metric sums accumulated since the last log line, and the config of the run.

Saves are asynchronous: training continues while the arrays are written. Orbax writes into a
temporary directory and renames it when complete, so ``latest_step`` never names a partial
checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """A thin ``ocp.CheckpointManager`` for ``<workdir>/checkpoints``."""

    def __init__(self, directory: str, keep: int):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_names=("state", "progress"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=True
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, progress: dict[str, Any]) -> None:
        """Starts an asynchronous save of ``state`` and ``progress`` at ``step``."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)
            ),
            force=True,
        )

    def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        """Restores step ``step`` with the structure, dtypes and shardings of ``like``."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()
            ),
        )
        return restored.state, restored.progress

    def read(self, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores step ``step`` (default: the newest) as host arrays, without a template."""
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), progress=ocp.args.JsonRestore()
            ),
        )
        return restored.state, restored.progress

    def wait(self) -> None:
        """Blocks until every started save is committed to disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
