"""The workdir: one run's, and what it records of that run.

``WorkdirLock`` makes a workdir one run's: a second launch on it stops with one line naming
the holder. ``config.json`` is the resolved config a run recorded; ``summary.json``, written
when it reaches its last step, marks it finished.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import socket
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from cnnjax import config as config_lib
from cnnjax import errors, files
from cnnjax.errors import ConfigError, WorkdirLocked, first_line

LOCK_FILE = "lock"


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


@contextlib.contextmanager
def exclusive(workdir: str) -> Iterator[WorkdirLock | None]:
    """Process 0 holds the workdir's lock for the block; every process learns if it failed.

    A ``ConfigError`` raised in the block before ``lock.keep()`` removes what taking the lock
    created, so bad input found late (in the data, say) still leaves no trace.
    """
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
    error = None
    if lock:
        try:
            lock.acquire()
        except config_lib.ConfigError as e:
            error = e
    if jax.process_count() > 1:
        failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if failed and error is None:
            error = ConfigError(f"process 0 could not lock workdir {workdir}")
    if error:
        raise error
    try:
        yield lock
    except config_lib.ConfigError:
        if lock:
            lock.abandon()
        raise
    finally:
        if lock:
            lock.release()


def check_workdir(config: ml_collections.ConfigDict, workdir: str, allow_change: bool) -> None:
    """Refuses, before anything is written, a workdir that holds a run of another config."""
    previous = recorded_config(workdir)
    if previous is not None and not allow_change:
        if changed := config_lib.diff(config_lib.complete(previous), config_lib.to_dict(config)):
            raise ConfigError(
                f"workdir {workdir} holds a run with a different config ({changed}); "
                "pass another --workdir to start fresh, or --allow_config_change to resume "
                "it with the new config"
            )


def recorded_config(workdir: str) -> dict[str, Any] | None:
    """The config recorded in ``workdir/config.json`` (None: no run recorded there)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            previous = json.load(f)
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or first_line(e)
        raise ConfigError(
            f"{path} is unreadable ({reason}); restore it (the config of every checkpoint is "
            "also in its progress file), or pass another --workdir") from None
    if not isinstance(previous, dict) or not isinstance(previous.get("model"), dict):
        raise ConfigError(
            f"{path} does not hold a cnnjax config; restore it, or pass another --workdir")
    return previous


def finished_summary(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
    """The summary of the run in ``workdir`` if it is finished under ``config``, else None.

    Finished: ``summary.json`` records the last step, and ``config`` is the recorded config.
    """
    summary = read_summary(workdir)
    if not summary or summary.get("step", -1) < summary.get("total_steps", 0):
        return None
    previous = recorded_config(workdir)
    if previous is None or config_lib.diff(config_lib.complete(previous),
                                            config_lib.to_dict(config)):
        return None
    return summary


def read_summary(workdir: str) -> dict[str, Any] | None:
    """``workdir/summary.json`` (None if missing or unreadable: the run is then finished
    again from its last checkpoint, which rewrites it)."""
    try:
        with open(os.path.join(workdir, "summary.json")) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    # Summaries written before metrics had one name each called eval_* test_*.
    return {k.replace("test_", "eval_", 1) if k.startswith("test_") else k: v
            for k, v in summary.items()}


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Creates ``workdir`` and records the resolved config (atomically)."""
    path = os.path.join(workdir, "config.json")
    try:
        with errors.writing(path):
            os.makedirs(workdir, exist_ok=True)
            files.write_atomic(path, config_lib.to_json(config))
    except errors.WriteError as e:
        if e.resumable:  # a full disk: free space and relaunch
            raise
        raise ConfigError(
            f"workdir {workdir} is not writable ({e.strerror}); pass a writable --workdir"
        ) from None
