"""Orbax checkpoints that make a run resumable bit for bit.

A checkpoint at step ``s`` holds two items:

* ``state``: the whole ``TrainState`` (params, batch stats, optimizer state, step, rng);
* ``progress``: JSON with the data position (the loaders are pure functions of the step,
  so the position is the step; it is recorded for loaders that keep more state), the
  train-metric sums accumulated since the last log line, and the config of the run.

Saves are asynchronous: training continues while the arrays are written. Orbax writes into a
temporary directory and renames it when complete, so ``latest_step`` never names a partial
checkpoint.

``BestCheckpoint`` keeps the state with the best ``train.best_metric`` in ``W/best_checkpoint``
(its own Orbax manager holding one checkpoint) and names it in ``W/best.json``. The regular
checkpoints are never touched, so resuming stays exact; the best value so far travels in every
checkpoint's progress JSON, so a resumed run compares against the best of the run it resumes.

``WorkdirLock`` makes a workdir one run's: a second launch on it stops with one line.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from cnnjax import files
from cnnjax.errors import ConfigError, WorkdirLocked

LOCK_FILE = "lock"
BEST_DIR = "best_checkpoint"


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
        options=ocp.CheckpointManagerOptions(read_only=True),
    )
    try:
        return _read(manager, step)
    finally:
        manager.close()


class Checkpointer:
    """A thin ``ocp.CheckpointManager`` for ``<workdir>/checkpoints``."""

    def __init__(self, directory: str, keep: int, barrier_prefix: str | None = None):
        """``barrier_prefix`` names the multi-process barriers of a second manager that saves
        the same steps concurrently (the best checkpoint), so that theirs do not collide."""
        self.directory = os.path.abspath(directory)
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

    def all_steps(self) -> list[int]:
        """The steps of every complete checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

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
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else repr(e)
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
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


class BestCheckpoint:
    """Saves the state whenever ``metric`` improves (``mode`` ``"max"`` or ``"min"``).

    ``previous``: the ``record`` stored in the checkpoint a run resumes from, if any.
    """

    def __init__(self, workdir: str, metric: str, mode: str, previous: dict | None = None):
        self.workdir, self.metric, self.mode = workdir, metric, mode
        self.record = previous
        self._ckpt = Checkpointer(os.path.join(workdir, BEST_DIR), keep=1, barrier_prefix="best")

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

    def close(self) -> None:
        self._ckpt.wait()
        self._ckpt.close()


class WorkdirLock:
    """An exclusive lock on a workdir for as long as a launch trains in it.

    The lock is ``flock`` on ``<workdir>/lock``, which holds who took it (process id, host,
    time) for the message a second launch prints. The kernel drops the lock when its process
    ends, however it ends, so a killed run never blocks the next launch. ``abandon`` undoes
    what ``acquire`` created (the workdir, the lock file), for a launch that stops on bad
    input after taking the lock: such a launch leaves no trace.
    """

    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_FILE)
        self._fd: int | None = None
        self._created: list[str] = []
        self._previous: bytes | None = None

    def acquire(self) -> None:
        """Takes the lock; raises ``WorkdirLocked`` naming the holder if another launch has it."""
        try:
            os.makedirs(os.path.dirname(self.workdir), exist_ok=True)
            try:
                os.mkdir(self.workdir)  # exactly one of two racing launches creates it
                self._created.append(self.workdir)
            except FileExistsError:
                pass
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                self._created.append(self.path)
            except FileExistsError:
                fd = os.open(self.path, os.O_RDWR)
        except OSError as e:
            self.abandon()
            raise ConfigError(f"workdir {self.workdir} is not writable ({e.strerror}); pass a "
                              "writable --workdir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkdirLocked(
                f"workdir {self.workdir} is in use by {holder(self.path)}; wait for that run "
                "to end (or stop it), or pass another --workdir") from None
        self._fd = fd
        if self.path not in self._created:
            self._previous = os.pread(fd, 4096, 0)
        self._write(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }).encode())

    def _write(self, content: bytes) -> None:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, content, 0)

    def abandon(self) -> None:
        """Releases the lock and undoes the launch: a workdir it created is removed with what
        it holds (nothing but this launch wrote there), else the lock file it created."""
        if self._fd is not None and self._previous is not None:
            self._write(self._previous)
        if self.workdir in self._created:
            shutil.rmtree(self.workdir, ignore_errors=True)  # while still locked
        elif self.path in self._created:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._created = []
        self.release()

    def keep(self) -> None:
        """The launch has written to the workdir: ``abandon`` now only releases the lock."""
        self._created, self._previous = [], None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None and issubclass(exc_type, ConfigError):
            self.abandon()
        else:
            self.release()


def holder(path: str) -> str:
    """Who holds lock file ``path``, in words, from what it records."""
    try:
        with open(path) as f:
            info = json.load(f)
        return f"process {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another launch (starting up)"
