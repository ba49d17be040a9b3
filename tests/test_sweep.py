"""Sweeps: expansion, naming, type checks, skipping finished points, the results table."""

import csv
import os
import textwrap

import pytest

from cnnjax import sweep, training
from cnnjax.config import ConfigError, model_config
from tests.helpers import command, tiny_config


def test_spec_expands_to_a_grid_with_the_last_axis_fastest():
    axes = sweep.parse_spec("optimizer.learning_rate=0.1,0.03 seed=0,1,2")
    assert axes == {"optimizer.learning_rate": ["0.1", "0.03"], "seed": ["0", "1", "2"]}
    points = sweep.grid(axes)
    assert len(points) == 6
    assert points[:2] == [{"optimizer.learning_rate": "0.1", "seed": "0"},
                          {"optimizer.learning_rate": "0.1", "seed": "1"}]
    assert sweep.parse_spec("model.features=(8,16),(16,32)") == {
        "model.features": ["(8,16)", "(16,32)"]}


def test_points_are_typed_named_and_validated(data_dir):
    config = tiny_config(data_dir)
    points = sweep.expand(config, sweep.grid(sweep.parse_spec(
        "optimizer.learning_rate=0.1,1e-3 seed=0,1 model.features=(8,16) data.flip=true")), 8)
    first = points[0]
    assert first.overrides == {"optimizer.learning_rate": 0.1, "seed": 0,
                               "model.features": (8, 16), "data.flip": True}
    assert first.name == "optimizer.learning_rate=0.1,seed=0,model.features=8-16,data.flip=true"
    assert points[2].name.startswith("optimizer.learning_rate=0.001,seed=0")
    assert first.config.optimizer.learning_rate == 0.1 and first.config.seed == 0
    assert config.optimizer.learning_rate == 0.05  # the base config is untouched
    assert all("/" not in p.name and len(p.name) < 200 for p in points)
    long = sweep.point_name({"model.features": tuple(range(100))})
    assert len(long) < 200 and long != sweep.point_name({"model.features": tuple(range(101))})


def test_switching_models_brings_the_models_fields(data_dir):
    (point,) = sweep.expand(tiny_config(data_dir), [{"model.name": "lenet5"}], 8)
    assert point.config.model.to_dict() == model_config("lenet5").to_dict()


@pytest.mark.parametrize("spec, message", [
    ("optimizer.learnin_rate=0.1", "unknown config key 'optimizer.learnin_rate' in sweep; "
                                   "did you mean 'optimizer.learning_rate'?"),
    ("seed=0,x", "sweep value 'x' for seed must be an integer"),
    ("seed=0.5", "sweep value '0.5' for seed must be an integer"),
    ("data.flip=maybe", "sweep value 'maybe' for data.flip must be true or false"),
    ("model.features=8", "sweep value '8' for model.features must be a tuple such as (8,16)"),
    ("optimizer.name=sgd,lbfgs", "sweep point optimizer.name=lbfgs: unknown optimizer 'lbfgs'"),
    ("data.batch_size=32,30", "sweep point data.batch_size=30: data.batch_size=30 is not "
                              "divisible by the 8 devices"),
    ("seed", "sweep axis 'seed' must look like key=value1,value2,..."),
])
def test_bad_points_are_rejected_before_any_work(data_dir, spec, message):
    with pytest.raises(ConfigError) as error:
        sweep.expand(tiny_config(data_dir), sweep.grid(sweep.parse_spec(spec)), 8)
    assert str(error.value).startswith(message)


def test_get_sweep_in_the_config_file(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(textwrap.dedent("""
        def get_config():
            pass

        def get_sweep():
            return {"seed": [0, 1], "optimizer.learning_rate": [0.1]}
    """))
    assert sweep.from_config_file(str(path)) == [
        {"seed": 0, "optimizer.learning_rate": 0.1}, {"seed": 1, "optimizer.learning_rate": 0.1}]
    path.write_text("def get_sweep():\n    return [{'seed': 3}, {'seed': 4}]\n")
    assert sweep.from_config_file(str(path)) == [{"seed": 3}, {"seed": 4}]
    path.write_text("def get_config():\n    pass\n")
    assert sweep.from_config_file(str(path)) is None


def test_a_sweep_resumes_skips_finished_points_and_tabulates(data_dir, tmp_path,
                                                             persistent_cache):
    config = tiny_config(data_dir, num_steps=4, eval_every_steps=2, log_every_steps=2,
                         checkpoint_every_steps=2, plots=False)
    points = sweep.expand(config, sweep.grid(sweep.parse_spec(
        "optimizer.learning_rate=0.05 seed=0,1")), 8)
    root = str(tmp_path / "sweep")
    trained = []

    def spy(cfg, workdir, **kwargs):
        trained.append((os.path.basename(workdir), kwargs.get("stop_at_step")))
        return training.run(cfg, workdir, **kwargs)

    # An array task for point 1 that is interrupted at step 2 ...
    sweep.run(points, root, index=1, train_fn=spy, stop_at_step=2)
    assert not sweep.is_finished(os.path.join(root, points[1].name))
    # ... then the whole sweep: point 0 from scratch, point 1 resumed from its checkpoint.
    sweep.run(points, root, train_fn=spy)
    assert all(sweep.is_finished(os.path.join(root, p.name)) for p in points)
    # Relaunched: nothing left to train.
    sweep.run(points, root, train_fn=spy)
    names = [p.name for p in points]
    assert trained == [(names[1], 2), (names[0], None), (names[1], None)]

    with open(os.path.join(root, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["point"] for r in rows] == names
    assert [r["seed"] for r in rows] == ["0", "1"]
    assert all(r["status"] == "finished" and r["step"] == "4" for r in rows)
    accuracies = [float(r["eval_accuracy"]) for r in rows]
    with open(os.path.join(root, "results_mean.csv")) as f:
        (group,) = list(csv.DictReader(f))
    assert group["optimizer.learning_rate"] == "0.05" and group["n"] == "2"
    assert float(group["eval_accuracy_mean"]) == pytest.approx(sum(accuracies) / 2)
    assert float(group["eval_accuracy_std"]) == pytest.approx(
        abs(accuracies[0] - accuracies[1]) / 2**0.5)
    md = open(os.path.join(root, "results.md")).read()
    assert "2 of 2 points finished" in md and " ± " in md
    assert os.listdir(persistent_cache)


def test_launch_rejects_a_bad_sweep_in_one_line(tmp_path, data_dir, capsys):
    workdir = tmp_path / "w"
    env = {"TFDS_DATA_DIR": data_dir}
    result = command(capsys, "--sweep=optimizer.learning_rate=0.1,fast", f"--workdir={workdir}",
                     env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: sweep value 'fast' for optimizer.learning_rate must be a number")
    assert not workdir.exists()
    result = command(capsys, "--sweep=seed=0,1", "--sweep_index=2", f"--workdir={workdir}",
                     env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --sweep_index=2 is out of range: the sweep has 2 points (0..1)")
    assert not workdir.exists()
