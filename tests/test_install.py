"""The wheel, installed into a fresh virtualenv (no site packages of this one), gives a
``cnnjax`` command that trains the default experiment from an empty directory, and finds the
packaged configs by name: what ``pip install cnnjax`` gives a new user."""

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.e2e
def test_the_wheel_installs_into_a_fresh_virtualenv_and_runs_from_an_empty_directory(tmp_path):
    wheels, venv, empty = tmp_path / "wheels", tmp_path / "venv", tmp_path / "empty"
    empty.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), ROOT], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", *glob.glob(str(wheels / "cnnjax-*.whl"))],
        env=env, capture_output=True, text=True, timeout=1200)
    assert install.returncode == 0, install.stderr[-3000:]
    home = tmp_path / "home"
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"),
               TFDS_DATA_DIR=str(home / "tensorflow_datasets"), MPLCONFIGDIR=str(home / "mpl"),
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)

    def cnnjax(*args):
        return subprocess.run([str(venv / "bin" / "cnnjax"), *args], cwd=empty, env=env,
                              capture_output=True, text=True, timeout=600)

    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import cnnjax; print(cnnjax.__file__)"], cwd=empty, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv))  # the wheel's copy, not this checkout
    named = cnnjax("--config=mnist_cnn", "--print_config")
    assert named.returncode == 0, named.stderr
    assert json.loads(named.stdout)["data"]["name"] == "mnist"
    result = cnnjax("--config.train.num_epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: test accuracy" in result.stdout
    recorded = json.load(open(empty / "workdirs" / "default" / "config.json"))
    assert recorded["train"]["num_epochs"] == 2
    assert sorted(os.listdir(empty)) == ["workdirs"]
