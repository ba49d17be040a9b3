"""A full disk while a run writes its checkpoints, metrics, summary or plots: one line,
``error: ...``, naming what and where with the space left, exit status 75; the committed
checkpoints intact and no partial one left behind; once space is freed, the same command
resumes exactly, as if never interrupted.

The disk fills for real (a small tmpfs, where the tests may mount one: as root) and by
injection (tests/diskfull.py fails the writes as a full disk does), which runs everywhere.
"""

import glob
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from cnnjax import errors
from cnnjax.checkpoint import complete_steps
from cnnjax.metrics import read_jsonl
from tests.test_reliability import final_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.train.num_steps=24", "--config.train.log_every_steps=4",
        "--config.train.eval_every_steps=6", "--config.train.checkpoint_every_steps=6",
        "--config.train.keep_checkpoints=1",
        "--config.model.features=(8,16)", "--config.model.dense=(32,)"]
TIMING = ("steps_per_sec", "images_per_sec")
FREE = r"\((\d+(\.\d)?) [MG]B free\)"


def launch(workdir, data_dir, *args, at=None):
    env = {**os.environ, "TFDS_DATA_DIR": data_dir,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    cmd = [sys.executable, os.path.join(ROOT, "launch.py")]
    if at:
        cmd = [sys.executable, os.path.join(ROOT, "tests", "diskfull.py"), f"--at={at}", "--"]
    return subprocess.run([*cmd, *TINY, f"--workdir={workdir}", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def records(workdir):
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def best(workdir):
    with open(os.path.join(workdir, "best.json")) as f:
        return f.read(), complete_steps(os.path.join(workdir, "best_checkpoint"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """An uninterrupted run: its workdir, final checkpoint and metrics."""
    workdir = str(tmp_path_factory.mktemp("disk_full") / "reference")
    result = launch(workdir, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, final_state(workdir), records(workdir)


def stopped_on_full_disk(result, workdir, what, then):
    """The run ended with the one line, exit status 75, and no partial checkpoint."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == 75, output[-3000:]
    line = (f"error: no space left on device writing {re.escape(what.format(w=workdir))} "
            f"{FREE}; free space, then relaunch the same command to {re.escape(then)}")
    assert re.fullmatch(line, result.stderr.strip()), result.stderr
    assert not glob.glob(os.path.join(workdir, "*checkpoint*", "*tmp*"))
    assert not os.path.exists(os.path.join(workdir, "summary.json"))


def resumes_exactly(workdir, data_dir, reference, *args):
    again = launch(workdir, data_dir, *args)
    assert again.returncode == 0 and again.stderr == "", again.stderr[-3000:]
    assert again.stdout.strip().splitlines()[-1].startswith("done: test accuracy")
    (step, leaves), (step_ref, leaves_ref) = final_state(workdir), reference[1]
    assert step == step_ref == 24
    for a, b in zip(leaves, leaves_ref, strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit
    assert records(workdir) == reference[2]
    return again


@pytest.mark.e2e
@pytest.mark.parametrize("at, what, then, committed", [
    # Orbax's background write fails; the error surfaces at the next save
    ("checkpoint:12", "checkpoint step 12 in {w}/checkpoints", "resume from step 6", [6]),
    ("best:12", "best checkpoint step 12 in {w}/best_checkpoint", "resume from step 12", [12]),
    ("jsonl:3", "{w}/metrics.jsonl", "resume from step 6", [6]),  # half a line written
    ("tensorboard", "{w}/tensorboard", "start the run from step 0", []),
    ("summary", "{w}/summary.json", "resume from step 24", [24]),
    ("run", "{w}/run.json", "start the run from step 0", []),
    ("plots", "the plots in {w}/plots", "resume from step 24", [24]),
])
def test_a_full_disk_is_one_line_and_the_relaunch_resumes_exactly(
        tmp_path, data_dir, reference, at, what, then, committed):
    workdir = str(tmp_path / "run")
    result = launch(workdir, data_dir, at=at)
    stopped_on_full_disk(result, workdir, what, then)
    assert complete_steps(os.path.join(workdir, "checkpoints")) == committed
    resumes_exactly(workdir, data_dir, reference)
    # the best checkpoint is the uninterrupted run's, also when its own save failed
    assert best(workdir) == best(reference[0])
    assert sorted(os.listdir(os.path.join(workdir, "plots"))) == sorted(
        os.listdir(os.path.join(reference[0], "plots")))


@pytest.fixture
def small_filesystem(tmp_path):
    """A tmpfs of its own (skipped where mounting is not allowed), unmounted afterwards."""
    mount = str(tmp_path / "fs")
    os.mkdir(mount)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mount],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", mount], check=False)


def pages(paths):
    """The tmpfs space that files take (whole 4 KiB pages)."""
    return sum(-(-os.path.getsize(p) // 4096) * 4096 for p in paths if os.path.isfile(p))


@pytest.mark.e2e
def test_a_real_filesystem_filling_during_a_checkpoint(small_filesystem, data_dir, reference):
    # One checkpoint (C bytes) and the small files fit, with half a checkpoint to spare: the
    # second checkpoint fills the filesystem half-way through its write.
    ref = reference[0]
    checkpoint = pages(glob.glob(os.path.join(ref, "checkpoints", "24", "**"), recursive=True))
    small = pages([os.path.join(ref, f)
                   for f in ("config.json", "metrics.jsonl", "lock", "run.json")])
    small += pages(glob.glob(os.path.join(ref, "tensorboard", "*")))
    stat = os.statvfs(small_filesystem)
    ballast = os.path.join(small_filesystem, "ballast")  # what the user deletes to free space
    with open(ballast, "wb") as f:
        f.write(b"\0" * (stat.f_bavail * stat.f_frsize - small - checkpoint * 3 // 2))
    workdir = os.path.join(small_filesystem, "run")
    args = ["--config.train.best_metric=", "--noconfig.train.plots"]  # the checkpoints only
    result = launch(workdir, data_dir, *args)
    stopped_on_full_disk(result, workdir, "checkpoint step 12 in {w}/checkpoints",
                         "resume from step 6")
    assert complete_steps(os.path.join(workdir, "checkpoints")) == [6]
    os.remove(ballast)
    again = resumes_exactly(workdir, data_dir, reference, *args)
    assert f"resumed from {workdir}/checkpoints/6" in again.stdout


def test_write_errors_are_recognised_however_they_are_wrapped(tmp_path):
    tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing "a" in OCDBT database: Failed '
                             "to write 4096 bytes: No space left on device [os_error_code='28']")
    assert errors.os_error_code(tensorstore) == 28
    assert errors.os_error_code(RuntimeError("RESOURCE_EXHAUSTED: quota")) == 28
    assert errors.os_error_code(RuntimeError("RESOURCE_EXHAUSTED: Out of memory")) is None
    wrapped = RuntimeError("commit failed")
    wrapped.__cause__ = OSError(122, "Disk quota exceeded")
    assert errors.os_error_code(wrapped) == 122
    assert errors.os_error_code(ValueError("shape mismatch")) is None

    with pytest.raises(ValueError, match="shape"), errors.writing("x"):
        raise ValueError("shape mismatch")  # not a write failure: unchanged
    with pytest.raises(errors.WriteError) as e, errors.writing("the file", str(tmp_path)):
        raise wrapped
    assert e.value.resumable and str(e.value).startswith(
        "disk quota exceeded writing the file (")
    with pytest.raises(errors.WriteError) as e, errors.writing(str(tmp_path / "a.json")):
        raise PermissionError(13, "Permission denied")
    assert not e.value.resumable  # exit status 2: make it writable
    assert str(e.value) == (f"cannot write {tmp_path}/a.json (Permission denied); make "
                            f"{tmp_path}/a.json writable or pass another --workdir, then "
                            "relaunch the same command")
