"""``W/run.json``: what produced a run's numbers, and the data check of a resume.

The record holds the software (Python, jax, jaxlib, flax, optax, orbax-checkpoint, cnnjax
and, run from a git clone, its commit, ``dirty`` when tracked files have uncommitted
changes), the hardware (device kind and count, process count, host), the command line and
working directory of the newest launch, the fingerprint of the data
(``cnnjax.data.fingerprint``), and a history: one entry per start, resume, deliberate data
change and finish, each with the step and the UTC time (start and resume entries with their
launch's software, hardware and command line). Process 0 writes it, atomically
(``files.write_json``), when a launch has restored its state and before its first step, and
when the run finishes.

A resume whose data differs from the recorded fingerprint is refused before any work
(``check_data``) unless ``allow_data_change``; one on other software or another device kind
prints one warning line, since exact resume is promised only on the same of both.
``--mode=eval`` and export warn when the data they evaluate on is not the recorded data
(``warn_if_other_data``).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from typing import Any

import jax

from cnnjax import files
from cnnjax.checkpoint import complete_steps
from cnnjax.data import fingerprint as fingerprint_lib
from cnnjax.errors import ConfigError, first_line, warn

RUN_FILE = "run.json"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "cnnjax")
# What a bit-identical resume depends on; a change of any is worth a warning.
_SAME_FOR_EXACT = ("python", "packages", "git_commit", "device_kind")


def path(workdir: str) -> str:
    return os.path.join(workdir, RUN_FILE)


def now() -> str:
    """The UTC time, to the second: ``2026-12-07T16:13:00Z``."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git clone cnnjax is imported from; (None, None) outside one."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, ".git")):  # an installed package: no clone
        return None, None
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()

        commit = git("rev-parse", "HEAD")
        # Untracked files (workdirs, data) are not changes to the code.
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return commit, dirty
    except (OSError, subprocess.SubprocessError):  # no git, or not a usable clone
        return None, None


def environment() -> dict[str, Any]:
    """The software, hardware and command line of this launch."""
    commit, dirty = _git()
    devices = jax.devices()
    return {
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in PACKAGES},
        "git_commit": commit, "git_dirty": dirty,
        "device_kind": devices[0].device_kind, "device_count": len(devices),
        "platform": devices[0].platform, "process_count": jax.process_count(),
        "host": socket.gethostname(),
        "command": shlex.join(sys.argv), "cwd": os.getcwd(),
    }


def read(workdir: str) -> dict[str, Any] | None:
    """``W/run.json`` (None: not recorded, as in a workdir of an older cnnjax)."""
    file = path(workdir)
    if not os.path.exists(file):
        return None
    try:
        with open(file) as f:
            record = json.load(f)
        if not isinstance(record, dict) or not isinstance(record.get("history"), list):
            raise ValueError("not a cnnjax run record")
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or first_line(e)
        raise ConfigError(
            f"{file} is unreadable ({reason}); restore it, or delete it to resume without "
            "checking the data") from None
    return record


def check_data(config, workdir: str, allow_change: bool,
               current: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Refuses (``ConfigError``) to resume the run in ``workdir`` on data other than it
    recorded, unless ``allow_change``; writes nothing. Returns the data's fingerprint
    (``current`` if given, else computed)."""
    if current is None:
        current = fingerprint_lib.of(config.data)
    record = read(workdir)
    if record is None or allow_change or not complete_steps(os.path.join(workdir,
                                                                          "checkpoints")):
        return current  # nothing to resume: a launch without a checkpoint starts at step 0
    if changed := fingerprint_lib.changes(record.get("data"), current):
        raise ConfigError(
            f"the data {config.data.name} is not the data the run in {workdir} was trained on "
            f"({changed}); restore that data, pass another --workdir to start fresh, or "
            "--allow_data_change to resume on this data deliberately")
    return current


def launched(workdir: str, step: int, data: dict[str, Any] | None) -> None:
    """Records a start (step 0) or a resume of the run in ``workdir``, after a deliberate
    data change if the data differs from the recorded; warns when the software or the device
    kind differs from the last launch's. Process 0 only."""
    if jax.process_index() != 0:
        return
    env = environment()
    record = read(workdir) or {"history": []}
    history, time = record["history"], now()
    if step and "device_kind" in record:  # the newest launch's, at the top of the record
        if differ := [_difference(k, record.get(k), env[k]) for k in _SAME_FOR_EXACT
                      if record.get(k) != env[k]]:
            warn(f"resuming {workdir} on other software or hardware than its last launch "
                 f"({'; '.join(differ)}): the resumed run is not promised to match an "
                 "uninterrupted one bit for bit")
    if step and (change := fingerprint_lib.changes(record.get("data"), data)):
        history.append({"event": "data_change", "step": step, "time": time,
                        "change": change, "from": record["data"], "to": data})
    history.append({"event": "resume" if step else "start", "step": step, "time": time,
                    "environment": env})
    files.write_json(path(workdir), {**env, "data": data, "history": history})


def finished(workdir: str, step: int) -> None:
    """Records that the run in ``workdir`` reached its last step. Process 0 only."""
    if jax.process_index() != 0 or (record := read(workdir)) is None:
        return
    record["history"].append({"event": "finish", "step": step, "time": now()})
    files.write_json(path(workdir), record)


def _difference(key: str, old: Any, new: Any) -> str:
    if key == "packages" and isinstance(old, dict):
        return ", ".join(f"{p} {old.get(p)} -> {new.get(p)}" for p in new
                         if old.get(p) != new.get(p))
    return f"{key.replace('_', ' ')} {old} -> {new}"


def warn_if_other_data(workdir: str, data_config) -> None:
    """For ``--mode=eval`` and export: one warning line when the data evaluated on is not the
    data the run in ``workdir`` recorded (its numbers are then on other data)."""
    try:
        record = read(workdir)
    except ConfigError:
        record = None  # an unreadable record: nothing to compare with
    if not record or record.get("data") is None or jax.process_index() != 0:
        return
    current = fingerprint_lib.of(data_config)
    if not fingerprint_lib.same(record["data"], current):
        warn(f"the data {data_config.name} is not the data the run in {workdir} recorded "
             f"(recorded: {fingerprint_lib.describe(record['data'])}; now: "
             f"{fingerprint_lib.describe(current)}): these numbers are on other data")
