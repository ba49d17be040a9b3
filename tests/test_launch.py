"""launch.py end to end, as a user runs it."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, data_dir, env=None, cwd=None):
    full_env = {**os.environ, "TFDS_DATA_DIR": data_dir, **(env or {})}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch.py"), *args],
        capture_output=True, text=True, env=full_env, cwd=cwd or ROOT, timeout=600,
    )


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

    again = launch(f"--workdir={workdir}", data_dir=data_dir, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and "step 42/1260" not in again.stdout


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
         "pass --config=experiments/<name>.py"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_no_workdir(tmp_path, data_dir, args, message):
    workdir = tmp_path / "w"
    result = launch(*args, f"--workdir={workdir}", data_dir=data_dir)
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert not workdir.exists()


def test_switching_the_model_by_name_brings_that_models_own_fields(tmp_path, data_dir):
    # default.py's model section holds the cnn's fields; kept under the name "mlp" they would
    # not even apply (and under "lenet5" they would silently rebuild the default cnn).
    result = launch("--config.model.name=mlp", "--config.train.num_steps=2",
                    f"--workdir={tmp_path / 'mlp'}", data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training mlp (50,826 params)" in result.stdout
    lenet = launch("--config.model.name=lenet5", f"--workdir={tmp_path / 'lenet'}",
                   data_dir=data_dir)
    assert lenet.returncode == 2
    assert lenet.stderr.startswith("error: model 'lenet5' cannot take the 8x8x1 images")


def test_eval_mode_reads_a_checkpoint_written_on_another_device_count(tmp_path, data_dir):
    from cnnjax import train
    from tests.helpers import tiny_config

    workdir = str(tmp_path / "eight")
    train.run(tiny_config(data_dir), workdir)  # 8 devices in this process
    result = launch("--mode=eval", f"--workdir={workdir}", data_dir=data_dir,
                    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(workdir, "eval.json")) as f:
        report = json.load(f)
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert report["num_examples"] == 450
    assert report["eval_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
