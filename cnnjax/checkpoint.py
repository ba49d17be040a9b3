"""Orbax checkpoints that make a run resumable bit for bit.

A checkpoint at step ``s`` holds two items:

* ``state``: the whole ``TrainState`` (params, batch stats, optimizer state, step, rng);
* ``progress``: JSON with the data position (the loaders are pure functions of the step,
  so the position is the step; it is recorded for loaders that keep more state), the
  train-metric sums accumulated since the last log line, and the config of the run.

Saves are asynchronous: training continues while the arrays are written. Orbax writes into a
temporary directory and renames it when complete, so ``latest_step`` never names a partial
checkpoint. A save that cannot be written (a full disk) raises ``errors.WriteError`` naming
its step, wherever Orbax reports it (the next save, ``wait`` or ``close``), once its temporary
directory is removed; the checkpoints committed before it are left as they are.

``BestCheckpoint`` keeps the state with the best ``train.best_metric`` in ``W/best_checkpoint``
(its own Orbax manager holding one checkpoint) and names it in ``W/best.json``. The regular
checkpoints are never touched, so resuming stays exact; the best value so far travels in every
checkpoint's progress JSON, so a resumed run compares against the best of the run it resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from cnnjax import errors, files
from cnnjax.errors import first_line

BEST_DIR = "best_checkpoint"


def complete_steps(directory: str) -> list[int]:
    """The steps of the complete checkpoints in ``directory``, oldest first, read from the
    folder names alone: Orbax renames a checkpoint's temporary folder to its step once it is
    complete."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _handlers() -> dict[str, Any]:
    return {"state": ocp.StandardCheckpointHandler(), "progress": ocp.JsonCheckpointHandler()}


def _read(manager: ocp.CheckpointManager, step: int) -> tuple[Any, dict[str, Any]]:
    # Every array lands on this process's first device, whatever devices or processes wrote
    # it (a template-less restore insists on the saving topology), then on the host.
    metadata = manager.item_metadata(step).state
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata
    )
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), progress=ocp.args.JsonRestore()
        ),
    )
    return jax.tree.map(np.asarray, restored.state), restored.progress


def read_step(directory: str, step: int) -> tuple[Any, dict[str, Any]]:
    """``(state, progress)`` of checkpoint ``step`` in ``directory`` as numpy arrays.

    Read-only (a run still training there keeps its in-flight saves) and independent of the
    devices and processes that wrote it.
    """
    manager = ocp.CheckpointManager(
        os.path.abspath(directory), item_handlers=_handlers(),
        options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                             save_interval_steps=0),
    )
    try:
        return _read(manager, step)
    finally:
        manager.close()


class Checkpointer:
    """A thin ``ocp.CheckpointManager`` for ``<workdir>/checkpoints``."""

    def __init__(self, directory: str, keep: int, barrier_prefix: str | None = None,
                 what: str = "checkpoint"):
        """``barrier_prefix`` names the multi-process barriers of a second manager that saves
        the same steps concurrently (the best checkpoint), so that theirs do not collide;
        ``what`` names its checkpoints in a ``WriteError``."""
        self.directory = os.path.abspath(directory)
        self._what = what
        self._in_flight: int | None = None  # the step of the save not yet known committed
        self._failed = False
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_handlers=_handlers(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=True,
                # leftovers of a save that was killed half-way are removed at start-up
                cleanup_tmp_directories=True,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix=barrier_prefix
                ),
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    @property
    def in_flight(self) -> int | None:
        """The step of the last save started and not yet waited for (None: none)."""
        return self._in_flight

    def all_steps(self) -> list[int]:
        """The steps of every complete checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, progress: dict[str, Any]) -> None:
        """Starts an asynchronous save of ``state`` and ``progress`` at ``step``."""
        self.wait()  # Orbax would wait for the previous save anyway; its failure is its own
        self._in_flight = step
        with self._writing(step):
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)
                ),
                force=True,
            )

    @contextlib.contextmanager
    def _writing(self, step: int):
        """A failure to write the save of ``step``, raised as a ``WriteError`` naming it once
        what it wrote is removed."""
        try:
            with errors.writing(f"{self._what} step {step} in {self.directory}",
                                self.directory):
                yield
        except errors.WriteError:
            self._failed, self._in_flight = True, None
            self.remove_partial()
            raise

    def remove_partial(self) -> None:
        """Removes the temporary directories of saves that never completed, as Orbax does
        at the next launch (``cleanup_tmp_directories``)."""
        if jax.process_index() != 0:
            return
        for path in glob.glob(os.path.join(glob.escape(self.directory),
                                           "*.orbax-checkpoint-tmp*")):
            shutil.rmtree(path, ignore_errors=True)

    def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        """Restores step ``step`` with the structure, dtypes and shardings of ``like``.

        For a dataclass state, a field is what ``like`` says when the two disagree on whether
        it holds anything: a field the checkpoint lacks or saved empty (a checkpoint older
        than ``TrainState.ema``, or one of a run without it) keeps ``like``'s value, and one
        that ``like`` holds empty is restored empty. So a run resumes across an upgrade, and
        across turning ``train.ema_decay`` on or off.
        """
        abstract: Any = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        if not dataclasses.is_dataclass(like):
            return self._restore(step, abstract)
        saved = self._manager.item_metadata(step).state
        sharding = jax.tree.leaves(abstract)[0].sharding  # the state is replicated throughout
        target = {}
        for name in (f.name for f in dataclasses.fields(like)):
            if name not in saved:
                continue
            if not jax.tree.leaves(saved[name]):
                target[name] = {}
            elif not jax.tree.leaves(getattr(abstract, name)):  # read as saved, then dropped
                target[name] = jax.tree.map(
                    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                    saved[name])
            else:
                target[name] = getattr(abstract, name)
        state, progress = self._restore(step, target)
        kept = {name: value for name, value in state.items()
                if jax.tree.leaves(value) and jax.tree.leaves(getattr(like, name))}
        return dataclasses.replace(like, **kept), progress

    def _restore(self, step: int, abstract: Any) -> tuple[Any, dict[str, Any]]:
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()
            ),
        )
        return restored.state, restored.progress

    def restore_latest(
        self, like: Any, warn: Callable[[str], None] = print
    ) -> tuple[Any, dict[str, Any]] | None:
        """Restores the newest readable checkpoint, or returns None when there is none.

        An unreadable checkpoint (truncated or missing files) is moved aside to
        ``<checkpoints>/../checkpoints_damaged/<step>-<time>`` (never deleted) with a warning
        naming its path, and the next newest is tried.
        """
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                return self.restore(step, like)
            except Exception as e:  # any read failure means: fall back to an older one
                path = os.path.join(self.directory, str(step))
                reason = first_line(e)
                aside = self._move_aside(step)
                warn(
                    f"warning: checkpoint {path} is unreadable ({type(e).__name__}: {reason}); "
                    f"moved it to {aside} and falling back to an older checkpoint"
                )
        return None

    def _move_aside(self, step: int) -> str:
        damaged = os.path.join(os.path.dirname(self.directory), "checkpoints_damaged")
        target = os.path.join(damaged, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        if jax.process_index() == 0:
            os.makedirs(damaged, exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), target)
        self._manager.reload()
        return target

    def read(self, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores step ``step`` (default: the newest) as numpy arrays; see ``read_step``."""
        return _read(self._manager, self.latest_step() if step is None else step)

    def wait(self) -> None:
        """Blocks until every started save is committed to disk."""
        step, self._in_flight = self._in_flight, None
        if step is not None:
            with self._writing(step):
                self._manager.wait_until_finished()

    def close(self) -> None:
        """Commits the save in flight, then closes. After a failed save it only returns:
        Orbax raises that failure again from every wait, and there is nothing to commit."""
        if self._failed:
            return
        self.wait()
        self._manager.close()


class BestCheckpoint:
    """Saves the state whenever ``metric`` improves (``mode`` ``"max"`` or ``"min"``).

    ``previous``: the ``record`` stored in the checkpoint a run resumes from, if any.
    """

    def __init__(self, workdir: str, metric: str, mode: str, previous: dict | None = None):
        self.workdir, self.metric, self.mode = workdir, metric, mode
        self.record = previous
        self._ckpt = Checkpointer(os.path.join(workdir, BEST_DIR), keep=1, barrier_prefix="best",
                                  what="best checkpoint")

    def improves(self, metrics: dict[str, float]) -> bool:
        if self.metric not in metrics:
            return False
        if self.record is None:
            return True
        value, best = metrics[self.metric], self.record["value"]
        return value > best if self.mode == "max" else value < best

    def update(self, step: int, metrics: dict[str, float]) -> None:
        """Records ``metrics`` of ``step`` as the best; call ``save`` with its state next."""
        self.record = {"metric": self.metric, "mode": self.mode, "step": step,
                       "value": metrics[self.metric]}

    def save(self, state: Any, progress: dict[str, Any]) -> None:
        step = self.record["step"]
        if self._ckpt.latest_step() != step:  # a resumed run may reach a saved best again
            self._ckpt.save(step, state, progress)
        if jax.process_index() == 0:
            files.write_json(os.path.join(self.workdir, "best.json"), self.record)

    def commit_before(self, step: int) -> None:
        """Commits a save started before ``step``, so that its failure (a full disk) stops the
        run before a regular checkpoint of ``step``, whose progress names it as the best, is
        written."""
        if self._ckpt.in_flight is not None and self._ckpt.in_flight < step:
            self._ckpt.wait()

    def lost(self, step: int) -> bool:
        """Whether the best is the state of ``step`` (the checkpoint a run resumes from) but
        its save did not complete: the run stopped on a full disk before it was committed."""
        return (self.record is not None and self.record["step"] == step
                and self._ckpt.latest_step() != step)

    def close(self) -> None:
        self._ckpt.close()
