"""launch.py end to end, as a user runs it (marked e2e: each launch a process of its own);
the command's answer to a bad input and to a model switched by name, in this process."""

import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

from cnnjax import experiment_files
from tests.helpers import command, snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, data_dir, env=None, cwd=None):
    full_env = {**os.environ, "TFDS_DATA_DIR": data_dir, **(env or {})}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch.py"), *args],
        capture_output=True, text=True, env=full_env, cwd=cwd or ROOT, timeout=600,
    )


@pytest.mark.e2e
def test_default_experiment_reaches_the_accuracy_target_and_resumes(tmp_path, data_dir):
    workdir = str(tmp_path / "default")
    # One device, as on a plain CPU machine.
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    result = launch(f"--workdir={workdir}", data_dir=data_dir, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("done: test accuracy") and workdir in last
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        final = [json.loads(line) for line in f][-1]
    assert final["step"] == 1260 and final["eval_accuracy"] >= 0.985, final

    # Relaunched: it is finished, says so with its summary, and changes nothing.
    before = snapshot(workdir)
    again = launch(f"--workdir={workdir}", data_dir=data_dir, env=env)
    assert again.returncode == 0 and again.stderr == "", again.stderr[-3000:]
    assert again.stdout.splitlines() == [
        f"already finished at step 1260 of 1260 ({workdir}/summary.json); nothing to do", last]
    assert snapshot(workdir) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.optimizer.learnin_rate=0.1"],
         "error: unknown config key 'learnin_rate' in --config.optimizer.learnin_rate; "
         "did you mean 'learning_rate'?"),
        (["--config.data.batch_size=30"],
         "error: data.batch_size=30 is not divisible by the 8 devices; use a multiple of 8, "
         "e.g. --config.data.batch_size=24"),
        (["--config=experiments/nope.py"],
         "error: config file 'experiments/nope.py' not found; "
         "pass the path of a config file or the name of a packaged one: "
         + ", ".join(experiment_files.names())),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_no_workdir(tmp_path, data_dir, capsys, args,
                                                           message):
    workdir = tmp_path / "w"
    result = command(capsys, *args, f"--workdir={workdir}", env={"TFDS_DATA_DIR": data_dir})
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert not workdir.exists()


def test_switching_the_model_by_name_brings_that_models_own_fields(tmp_path, data_dir,
                                                                  capsys):
    # default.py's model section holds the cnn's fields; kept under the name "mlp" they would
    # not even apply (and under "lenet5" they would silently rebuild the default cnn).
    env = {"TFDS_DATA_DIR": data_dir}
    result = command(capsys, "--config.model.name=mlp", "--config.train.num_steps=2",
                     f"--workdir={tmp_path / 'mlp'}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training mlp (50,826 params)" in result.stdout
    lenet = command(capsys, "--config.model.name=lenet5", f"--workdir={tmp_path / 'lenet'}",
                    env=env)
    assert lenet.returncode == 2
    assert lenet.stderr.startswith("error: model 'lenet5' cannot take the 8x8x1 images")


@pytest.mark.e2e
def test_eval_mode_reads_a_checkpoint_written_on_another_device_count(tmp_path, data_dir):
    from cnnjax import training
    from tests.helpers import tiny_config

    workdir = str(tmp_path / "eight")
    training.run(tiny_config(data_dir), workdir)  # 8 devices in this process
    result = launch("--mode=eval", f"--workdir={workdir}", data_dir=data_dir,
                    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(workdir, "eval.json")) as f:
        report = json.load(f)
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert report["num_examples"] == 450
    assert report["eval_accuracy"] == pytest.approx(summary["eval_accuracy"], abs=1e-6)


@pytest.mark.e2e
def test_relaunches_and_sweeps_share_the_compilation_cache(tmp_path, data_dir):
    # The README's commands one after another on one machine, through the default
    # compilation cache: it lives in the suite's own HOME (tests/conftest.py), never the user's.
    home = os.path.expanduser("~")
    assert os.path.basename(home).startswith("cnnjax-tests-home-")
    assert os.path.dirname(home) == tempfile.gettempdir()
    cache = os.path.join(home, ".cache", "cnnjax", "jax")
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    for steps, name in ((20, "a"), (30, "b"), (30, "c")):  # "c" loads "b"'s programs
        result = launch(f"--config.train.num_steps={steps}", f"--workdir={tmp_path / name}",
                        data_dir=data_dir, env=env)
        assert result.returncode == 0 and result.stderr == "", (name, result.stderr[-3000:])
    assert os.listdir(cache)
    root = tmp_path / "lr_sweep"
    result = launch("--sweep=optimizer.learning_rate=0.1,0.05 seed=0,1",
                    "--config.train.num_steps=20", f"--workdir={root}", data_dir=data_dir,
                    env=env)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-3000:]
    assert "4 of 4 points finished" in (root / "results.md").read_text()


LIBRARY_LINE = re.compile(r"^[IWEF]\d{4} |warn", re.IGNORECASE)  # absl's format, warnings


@pytest.mark.e2e
def test_runs_print_only_cnnjaxs_own_lines_unless_verbose(tmp_path, data_dir):
    workdir = tmp_path / "quiet"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    fresh_data = str(tmp_path / "tensorflow_datasets")  # digits is prepared, quietly
    result = launch("--config.train.num_steps=10", f"--workdir={workdir}",
                    data_dir=fresh_data, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    assert result.stdout.splitlines()[0] == (
        f"preparing digits in {fresh_data}/digits/1.0.0 (once)")
    assert not [line for line in result.stdout.splitlines() if LIBRARY_LINE.search(line)]
    image = tmp_path / "a.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(image)
    for mode in (["--mode=eval"], ["--mode=predict", f"--inputs={image}"],
                 ["--mode=visualize", "--checkpoint=best"]):
        result = launch(*mode, f"--workdir={workdir}", data_dir=fresh_data, env=env)
        assert result.returncode == 0 and result.stderr == "", (mode, result.stderr[-3000:])
        assert not [line for line in result.stdout.splitlines() if LIBRARY_LINE.search(line)]
    # --verbose shows what the libraries say (Orbax, at least, warns on every restore).
    verbose = launch("--mode=eval", "--verbose", f"--workdir={workdir}", data_dir=fresh_data,
                     env=env)
    assert verbose.returncode == 0 and LIBRARY_LINE.search(verbose.stderr), verbose.stderr
