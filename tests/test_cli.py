"""The command as a stranger meets it: configs by name from any directory, ``--help``,
``--print_config`` (the config a run would record, and each field's meaning), the Python API's
examples, and the progress bar in a notebook."""

import doctest
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from flax.traverse_util import flatten_dict

import cnnjax
from cnnjax import config as config_lib
from cnnjax import experiment_files, models
from cnnjax.errors import ConfigError
from tests.helpers import command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(capsys, *args, cwd=ROOT, data_dir=None):
    """The command, in this process (launch.py itself runs in tests/test_launch.py)."""
    return command(capsys, *args, cwd=cwd, env={"TFDS_DATA_DIR": data_dir} if data_dir else None)


def test_print_config_is_what_the_run_records_and_creates_nothing(tmp_path, data_dir, capsys):
    flags = ["--config=default:mlp", "--config.seed=3", "--config.train.num_steps=2",
             "--config.model.hidden=(16,)", "--config.train.writers=jsonl",
             "--noconfig.train.plots"]
    printed = cli(capsys, *flags, "--print_config", f"--workdir={tmp_path / 'never'}")
    assert printed.returncode == 0, printed.stderr
    assert not (tmp_path / "never").exists()
    run = cli(capsys, *flags, f"--workdir={tmp_path / 'run'}", data_dir=data_dir)
    assert run.returncode == 0, run.stderr
    assert json.loads(printed.stdout) == json.load(open(tmp_path / "run" / "config.json"))
    assert printed.stdout.strip() == (tmp_path / "run" / "config.json").read_text().strip()


def test_print_config_of_a_section_lists_every_field_with_its_meaning(capsys):
    result = cli(capsys, "--print_config", "--config.optimizer", "--config.model",
                 "--config.model.name=resnet18", "--config.optimizer.learning_rate=0.3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    config = cnnjax.get_config(model={"name": "resnet18"}, optimizer={"learning_rate": 0.3})
    flat = flatten_dict(config_lib.to_dict(config), sep=".")
    expected = [k for k in flat if k.startswith(("optimizer.", "model."))]
    assert sorted(line.split(" = ")[0] for line in lines) == sorted(expected)
    assert all("  # " in line for line in lines)
    assert "optimizer.learning_rate = 0.3  " in result.stdout.replace("0.3 ", "0.3  ")
    assert any(line.startswith("model.stage_sizes = [2, 2, 2, 2]") and "blocks" in line
               for line in lines)


def test_every_field_of_every_section_and_model_has_one_line_of_help():
    flat = flatten_dict(config_lib.to_dict(config_lib.defaults()), sep=".")
    assert sorted(k for k in flat if not k.startswith("model.")) == sorted(config_lib.FIELDS)
    assert {k.split(".")[0] for k in flat} == set(config_lib.SECTIONS)
    for key, (_, meaning) in config_lib.FIELDS.items():
        assert meaning.strip() and "\n" not in meaning, key
    for name in models.names():
        for field, meaning in models.field_help(name).items():
            assert field == "num_classes" or meaning.strip(), (name, field)


def test_help_names_the_configs_the_sections_and_how_to_list_a_section(capsys):
    result = cli(capsys, "--help")
    assert result.returncode == 0, result.stderr
    for name in experiment_files.names():
        assert name in result.stdout
    for section in config_lib.SECTIONS:
        assert section in result.stdout
    assert "--print_config --config.<section>" in result.stdout
    assert "--workdir" in result.stdout and "--sweep" in result.stdout


def test_configs_are_found_by_name_from_any_directory(tmp_path, capsys):
    by_name = cli(capsys, "--config=mnist_cnn", "--print_config", cwd=tmp_path)
    assert by_name.returncode == 0, by_name.stderr
    assert json.loads(by_name.stdout)["data"]["name"] == "mnist"
    as_path = cli(capsys, "--config=experiments/mnist_cnn.py", "--print_config", cwd=tmp_path)
    assert as_path.stdout == by_name.stdout
    variant = cli(capsys, "--config=default:mlp", "--print_config", cwd=tmp_path)
    assert json.loads(variant.stdout)["model"]["name"] == "mlp"
    wrong = cli(capsys, "--config=mnist_cn", "--print_config", cwd=tmp_path)
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert wrong.stderr.startswith("error: no config named 'mnist_cn'; did you mean "
                                   "'mnist_cnn'? choose one of: ")
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert not os.listdir(tmp_path)


def test_a_bare_section_outside_print_config_is_one_line_naming_the_fix(capsys):
    result = cli(capsys, "--config.optimizer")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --config.optimizer is a section of the config; "
                                    "show its fields with --print_config --config.optimizer")


def test_importing_cnnjax_imports_no_jax():
    code = "import sys, cnnjax, cnnjax.entry; print('jax' in sys.modules, sorted(cnnjax.__all__))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "False ['get_config', 'load', 'train']"


def test_the_api_examples_run(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
    from cnnjax import api
    from cnnjax.data import sources

    sources.prepare_builtin("digits", data_dir)  # so that no example prints the preparation
    globs = {"cnnjax": cnnjax, "np": np, "workdir": str(tmp_path / "run")}
    for module in (api, cnnjax):
        result = doctest.testmod(module, globs=dict(globs), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0
    assert doctest.testmod(api, globs=dict(globs), optionflags=doctest.ELLIPSIS).attempted >= 12
    run = cnnjax.load(str(tmp_path / "run"), checkpoint="latest")
    probabilities = run.predict(np.zeros((3, 8, 8), np.uint8))
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(1), 1, rtol=1e-5)
    with pytest.raises(ConfigError, match="do not fit"):
        run.predict(np.zeros((3, 9, 9), np.uint8))


def test_the_progress_bar_draws_through_tqdm_in_a_notebook(monkeypatch, capsys):
    from cnnjax import progress

    kernel_shell = types.SimpleNamespace(kernel=object(), config={})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(
        get_ipython=lambda: kernel_shell))
    bar = progress.ProgressBar(total_steps=8, steps_per_epoch=4, batch_size=32,
                               min_interval_s=0)
    assert bar.notebook and bar.active
    for step in range(1, 9):
        bar.update(step, {"loss": np.float32(0.5), "accuracy": np.float32(0.75)})
    bar.close()
    drawn = capsys.readouterr()
    text = drawn.out + drawn.err
    assert "epoch 1/2" in text and "epoch 2/2" in text
    assert "4/4" in text and "loss 0.5000" in text and "acc 0.7500" in text
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert not progress.ProgressBar(8, 4, 32).notebook  # a terminal IPython is no notebook


def test_each_error_class_carries_its_exit_status_for_the_one_handler(tmp_path):
    import errno

    from cnnjax import cli, errors, training

    full = errors.WriteError("checkpoint step 5", str(tmp_path), errno.ENOSPC)
    denied = errors.WriteError("checkpoint step 5", str(tmp_path), errno.EACCES)
    cases = [(ConfigError("bad"), 2, "error: bad"), (full, 75, f"error: {full}"),
             (denied, 2, f"error: {denied}"),
             (training.Preempted(7, "W"), 75, str(training.Preempted(7, "W"))),
             (training.NonFiniteError("nan at step 3"), 3, "error: nan at step 3"),
             (FileNotFoundError(errno.ENOENT, "No such file", "/x/y"), 2,
              "error: cannot use /x/y (No such file); make it the file or folder cnnjax "
              "expects there, writable, or pass another path")]
    for error, status, line in cases:
        assert errors.report(error) == (status, line), error
    assert errors.report(RuntimeError("a bug")) is None  # shown whole, with its traceback
    assert errors.report(OSError("no path")) is None
    assert list(cli.MODES)[0] == "train" and set(cli.MODES) == {
        "train", "eval", "predict", "visualize", "explain", "export"}
