"""One run per workdir: the lock, what a second launch says, and sweeps that share a grid."""

import os
import signal
import subprocess
import sys

import pytest

from cnnjax import sweep, training
from cnnjax.errors import ConfigError, WorkdirLocked
from cnnjax.workdir import LOCK_FILE, WorkdirLock
from tests.helpers import command, snapshot, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = ("import sys, time\n"
        "from cnnjax.workdir import WorkdirLock\n"
        "WorkdirLock(sys.argv[1]).acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n")


@pytest.fixture
def holder():
    """``hold(workdir)``: another process takes the workdir's lock and keeps it."""
    procs = []

    def hold(workdir):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "locked"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_held_lock_names_its_holder_and_a_killed_holder_blocks_nobody(tmp_path, holder):
    workdir = tmp_path / "w"
    proc = holder(workdir)
    with pytest.raises(WorkdirLocked, match=rf"workdir {workdir} is in use by process "
                       rf"{proc.pid} on \S+ since 20\d\d-.*; wait for that run to end"):
        WorkdirLock(str(workdir)).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock = WorkdirLock(str(workdir))
    lock.acquire()  # the kernel dropped the dead process's lock
    assert f'"pid": {os.getpid()}' in (workdir / LOCK_FILE).read_text()
    lock.release()


def test_abandon_leaves_no_trace(tmp_path):
    fresh = tmp_path / "fresh"
    with pytest.raises(ConfigError), WorkdirLock(str(fresh)):
        (fresh / "checkpoints").mkdir()
        raise ConfigError("bad input found late")
    assert not fresh.exists()
    # An existing workdir keeps its lock file as it was.
    old = tmp_path / "old"
    old.mkdir()
    (old / LOCK_FILE).write_text('{"pid": 1, "host": "h", "since": "then"}')
    (old / "config.json").write_text("{}")
    before = snapshot(old)
    lock = WorkdirLock(str(old))
    lock.acquire()
    lock.abandon()
    assert {k: v[0] for k, v in snapshot(old).items()} == {k: v[0] for k, v in before.items()}


def test_a_second_launch_on_a_busy_workdir_is_one_line_and_writes_nothing(
        tmp_path, data_dir, holder, monkeypatch, capsys):
    # A run of launch.py's own config (the default experiment, 4 steps), stopped at step 2,
    # and another launch training in it now.
    from experiments.default import get_config

    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
    config = get_config()
    config.train.num_steps, config.train.plots = 4, False
    workdir = tmp_path / "busy"
    training.run(config, str(workdir), stop_at_step=2)
    proc = holder(workdir)
    before = snapshot(workdir)
    result = command(capsys, f"--workdir={workdir}", "--config.train.num_steps=4",
                     "--config.train.plots=False")
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: workdir {workdir} is in use by process {proc.pid} on ")
    assert snapshot(workdir) == before


def test_a_sweep_skips_the_points_another_launch_holds(tmp_path, data_dir, holder, capsys):
    config = tiny_config(data_dir, num_steps=2, eval_every_steps=2, log_every_steps=2,
                         plots=False, best_metric="")
    points = sweep.expand(config, sweep.grid(sweep.parse_spec("seed=0,1,2")), 8)
    root = tmp_path / "sweep"
    holder(root / points[1].name)  # an array task training point 1 right now
    sweep.run(points, str(root))
    out = capsys.readouterr().out
    assert [sweep.is_finished(str(root / p.name)) for p in points] == [True, False, True]
    assert f"skipping it: workdir {root / points[1].name} is in use by process" in out
    assert out.count("training cnn") == 2


@pytest.mark.e2e
def test_two_sweep_launches_over_one_grid_train_each_point_once(tmp_path, data_dir):
    root = tmp_path / "grid"
    args = [sys.executable, os.path.join(ROOT, "launch.py"), "--sweep=seed=0,1,2,3",
            f"--workdir={root}", "--config.train.num_steps=30",
            "--config.train.log_every_steps=10", "--config.train.plots=False"]
    env = {**os.environ, "TFDS_DATA_DIR": data_dir,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    logs = [open(tmp_path / f"{i}.log", "w+") for i in range(2)]  # noqa: SIM115
    procs = [subprocess.Popen(args, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
             for f in logs]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    text = ""
    for f in logs:
        f.seek(0)
        text += f.read()
        f.close()
    assert "Traceback" not in text
    assert text.count("training cnn") == 4, text  # every point trained once, by one launch
    assert all(sweep.is_finished(str(root / f"seed={s}")) for s in range(4))
