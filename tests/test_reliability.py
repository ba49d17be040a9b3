"""Faults: SIGKILL at many moments, preemption signals, damaged checkpoints, NaNs,
several processes and a changed device count. Each run is a real process (tests/driver.py).
"""

import glob
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from cnnjax.checkpoint import Checkpointer
from cnnjax.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRIC_KEYS = ("step", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy")

pytestmark = pytest.mark.e2e  # every run a real process, killed, signalled or several at once


def drive(workdir, data_dir, *args, devices=2, log=None):
    """Runs tests/driver.py; with ``log`` (a path), in the background, output to that file."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    cmd = [sys.executable, os.path.join(ROOT, "tests", "driver.py"),
           f"--workdir={workdir}", f"--data_dir={data_dir}", *args]
    if log:
        # a file, not a pipe: a process blocked on a full pipe would stall the collectives
        with open(log, "w") as f:
            return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def final_state(workdir):
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=2)
    step = ckpt.latest_step()
    state, _ = ckpt.read(step)
    ckpt.close()
    return step, [np.asarray(x) for x in jax.tree.leaves(state)]


def metrics(workdir):
    return [{k: r[k] for k in METRIC_KEYS if k in r}
            for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """An uninterrupted 24-step run on 2 devices."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    result = drive(workdir, data_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    return final_state(workdir), metrics(workdir)


def assert_same_run(workdir, reference):
    (step_ref, leaves_ref), metrics_ref = reference
    step, leaves = final_state(workdir)
    assert step == step_ref == 24
    for a, b in zip(leaves, leaves_ref, strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit
    assert metrics(workdir) == metrics_ref


def test_sigkill_at_many_moments_then_relaunch_is_bit_identical(tmp_path, data_dir, reference):
    workdir = str(tmp_path / "run")
    moments = [
        "step:3",        # before the first checkpoint: starts over
        "save:5",        # while checkpoint 5 is being written asynchronously
        "jsonl:3",       # half-way through a metrics line
        "eval:1",        # during an evaluation
        "committed:20",  # right after a checkpoint is committed
        "restore",       # right after resuming
        "step:22",       # between checkpoints
    ]
    for moment in moments:
        result = drive(workdir, data_dir, f"--kill={moment}")
        assert result.returncode == -9, (moment, result.stderr[-2000:])
        if moment == "save:5":
            # the kill landed mid-write: an uncommitted temporary directory is left behind
            assert glob.glob(os.path.join(workdir, "checkpoints", "5.orbax-checkpoint-tmp*"))
    result = drive(workdir, data_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not glob.glob(os.path.join(workdir, "checkpoints", "*tmp*"))
    assert_same_run(workdir, reference)


@pytest.mark.parametrize("signal_name", ["term", "int"])
def test_preemption_saves_exits_75_and_resumes_exactly(tmp_path, data_dir, reference, signal_name):
    workdir = str(tmp_path / "run")
    result = drive(workdir, data_dir, f"--kill={signal_name}:12")
    assert result.returncode == 75, result.stderr[-2000:]
    assert f"SIG{signal_name.upper()}" in result.stdout
    # the signal lands before step 13 is read: that step finishes, then it saves
    assert "preempted: saved and committed the checkpoint of step 13" in result.stdout
    assert Checkpointer(os.path.join(workdir, "checkpoints"), 2).latest_step() == 13
    result = drive(workdir, data_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_run(workdir, reference)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_newest_checkpoint_falls_back_to_an_older_one(tmp_path, data_dir, reference,
                                                             damage):
    workdir = str(tmp_path / "run")
    assert drive(workdir, data_dir).returncode == 0
    newest = os.path.join(workdir, "checkpoints", "24")
    files = [f for f in glob.glob(os.path.join(newest, "state", "**"), recursive=True)
             if os.path.isfile(f) and "ocdbt" in f or "/d/" in f]
    assert files
    for f in files:
        if damage == "truncate":
            with open(f, "r+b") as fh:
                fh.truncate(os.path.getsize(f) // 2)
        else:
            os.remove(f)
    os.remove(os.path.join(workdir, "summary.json"))  # as if killed before its summary
    result = drive(workdir, data_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"warning: checkpoint {newest} is unreadable" in result.stdout
    assert "resumed from" in result.stdout and "/checkpoints/20" in result.stdout
    assert glob.glob(os.path.join(workdir, "checkpoints_damaged", "24-*"))  # kept, not deleted
    assert_same_run(workdir, reference)


def test_nan_policy_stop_names_the_step_and_keeps_only_finite_checkpoints(tmp_path, data_dir):
    workdir = str(tmp_path / "run")
    result = drive(workdir, data_dir, "--kill=poison:12")
    assert result.returncode == 3, result.stderr[-2000:]
    assert "loss or gradients are not finite at step 13" in result.stdout
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), 2)
    assert ckpt.all_steps() == [5, 10]
    for step in ckpt.all_steps():
        state, _ = ckpt.read(step)
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(workdir, data_dir, *args):
    port = free_port()
    logs = [f"{workdir}.{i}.log" for i in range(2)]
    procs = [
        drive(workdir, data_dir, f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
              f"--process_id={i}", *args, log=logs[i])
        for i in range(2)
    ]
    for p in procs:
        p.wait(timeout=300)
    outs = []
    for p, log in zip(procs, logs, strict=True):
        with open(log) as f:
            outs.append(f.read())
        assert p.returncode == 0, outs[-1][-3000:]
    return outs


def test_two_processes_match_one_process_and_resume(tmp_path, data_dir):
    single = str(tmp_path / "single")
    assert drive(single, data_dir, devices=4).returncode == 0
    multi = str(tmp_path / "multi")
    outs = run_two_processes(multi, data_dir, "--stop_at=10")  # 2 processes x 2 devices
    assert "on 4 device(s)" in outs[0] and "step 10/24" in outs[0]
    assert "step 10/24" not in outs[1]  # process 0 alone prints progress
    run_two_processes(multi, data_dir)
    (step_a, a), (step_b, b) = final_state(single), final_state(multi)
    assert step_a == step_b == 24
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    ma, mb = metrics(single), metrics(multi)
    assert [m["step"] for m in ma] == [m["step"] for m in mb]
    for x, y in zip(ma, mb, strict=True):
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-5), k


def test_a_checkpoint_from_8_devices_continues_on_1_and_on_4(tmp_path, data_dir):
    base = str(tmp_path / "eight")
    assert drive(base, data_dir, "--stop_at=10", devices=8).returncode == 0
    straight = str(tmp_path / "straight")
    assert drive(straight, data_dir, devices=8).returncode == 0
    for devices in (1, 4):
        moved = str(tmp_path / f"on{devices}")
        shutil.copytree(base, moved)
        result = drive(moved, data_dir, devices=devices)
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"on {devices} device(s)" in result.stdout and "resumed from" in result.stdout
        for x, y in zip(final_state(moved)[1], final_state(straight)[1], strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
