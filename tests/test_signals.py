"""SIGINT and SIGTERM at every moment of a launch (tests/interrupt.py sends them): one line,
the documented exit status, no traceback, and a workdir from which the same command goes on
to the result of an uninterrupted run."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from cnnjax import signals
from cnnjax.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.train.num_steps=12", "--config.train.log_every_steps=4",
        "--config.train.eval_every_steps=6", "--config.train.checkpoint_every_steps=6",
        "--config.model.features=(8,16)", "--config.model.dense=(32,)",
        "--compilation_cache_dir="]  # a real compile at every launch, for the compile moment
TIMING = ("steps_per_sec", "images_per_sec")
RESUME = "before the first training step; relaunch the same command to start (or resume) the run"


def run(args, data_dir, at=None, sig=None):
    env = {**os.environ, "TFDS_DATA_DIR": data_dir,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    cmd = [sys.executable, os.path.join(ROOT, "launch.py")]
    if at:
        cmd = [sys.executable, os.path.join(ROOT, "tests", "interrupt.py"), f"--at={at}",
               f"--signal={sig}", "--"]
    return subprocess.run([*cmd, *TINY, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def records(workdir):
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp("signals") / "reference")
    result = run([f"--workdir={workdir}"], data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, records(workdir)


def checked(result, status, stderr_lines):
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "Fatal Python error" not in output, output[-3000:]
    assert result.returncode == status, output[-3000:]
    assert result.stderr.strip().splitlines() == stderr_lines


@pytest.mark.e2e
@pytest.mark.parametrize("at, sig, status, stderr", [
    ("import", "INT", 130, ["stopped by SIGINT during start-up; nothing was written"]),
    ("prepare", "TERM", 143, [f"stopped by SIGTERM {RESUME}"]),
    ("compile", "INT", 130, [f"stopped by SIGINT {RESUME}"]),
    ("train", "TERM", 75, [
        "received SIGTERM: finishing this step, then saving (send it again to stop at once)",
        "preempted: saved and committed the checkpoint of step 4 in {w}/checkpoints; "
        "relaunch the same command to resume"]),
    ("eval", "INT", 75, [
        "received SIGINT: finishing this step, then saving (send it again to stop at once)",
        "preempted: saved and committed the checkpoint of step 6 in {w}/checkpoints; "
        "relaunch the same command to resume"]),
    ("save", "INT,INT", 130, [  # the second signal, inside the commit: at once, quietly
        "received SIGINT: finishing this step, then saving (send it again to stop at once)"]),
    ("plots", "TERM", 75, [
        "stopped by SIGTERM after the last checkpoint was committed; relaunch the same command "
        "to write the plots and the summary"]),
])
def test_a_signal_at_any_moment_exits_cleanly_and_the_run_goes_on(
        tmp_path, data_dir, reference, at, sig, status, stderr):
    workdir = str(tmp_path / "run")
    if at == "prepare":  # digits not yet prepared: the signal lands inside its preparation
        data_dir = str(tmp_path / "tensorflow_datasets")
    result = run([f"--workdir={workdir}"], data_dir, at=at, sig=sig)
    checked(result, status, [line.format(w=workdir) for line in stderr])
    assert not os.path.exists(os.path.join(workdir, "summary.json"))

    again = run([f"--workdir={workdir}"], data_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr == ""
    assert again.stdout.strip().splitlines()[-1].startswith("done: test accuracy")
    assert records(workdir) == reference[1]  # as if never interrupted
    plots = sorted(os.listdir(os.path.join(workdir, "plots")))
    assert plots == sorted(os.listdir(os.path.join(reference[0], "plots")))


@pytest.mark.e2e
def test_a_signal_during_an_eval_run_writes_nothing(tmp_path, data_dir, reference):
    workdir = str(tmp_path / "trained")
    shutil.copytree(reference[0], workdir)
    result = run(["--mode=eval", f"--workdir={workdir}"], data_dir, at="evaluate", sig="INT")
    checked(result, 130, ["stopped by SIGINT before --mode=eval wrote anything"])
    assert not os.path.exists(os.path.join(workdir, "eval.json"))
    again = run(["--mode=eval", f"--workdir={workdir}"], data_dir)
    assert again.returncode == 0 and again.stderr == "", again.stderr[-3000:]
    assert os.path.exists(os.path.join(workdir, "eval.json"))


def test_without_install_nothing_changes_and_the_stages_nest():
    # In a notebook (nothing installed) the loop's guard handles signals itself.
    assert not signals.installed()
    with signals.stage(signals.STARTING, "outer"):
        with signals.stage(signals.TRAINING, ""):
            assert signals._state.stage == signals.TRAINING
        assert (signals._state.stage, signals._state.note) == (signals.STARTING, "outer")


def test_the_watcher_acts_while_the_main_thread_is_busy(tmp_path):
    # The main thread sits in a long native call (time.sleep stands in for a compile): the
    # signal is still handled within a fraction of a second, and no exception is raised.
    code = ("import os, signal, threading, time\n"
            "from cnnjax import signals\n"
            "signals.install()\n"
            "threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
            "time.sleep(30)\n")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert time.monotonic() - start < 10
    assert result.returncode == 143
    assert result.stderr.strip() == "stopped by SIGTERM during start-up; nothing was written"
