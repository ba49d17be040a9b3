import json
import os

import jax
import numpy as np
import pytest

from cnnjax import checkpoint, training
from cnnjax import workdir as workdir_lib
from cnnjax.config import ConfigError
from cnnjax.metrics import read_jsonl
from tests.helpers import snapshot, tiny_config

METRIC_KEYS = ("train_loss", "train_accuracy", "learning_rate", "eval_loss", "eval_accuracy")


def _final_state(workdir):
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=3)
    step = ckpt.latest_step()
    state, _ = ckpt.read(step)
    ckpt.close()
    return step, jax.tree.map(np.asarray, state)


def _metrics(workdir):
    return [{k: r[k] for k in ("step", *METRIC_KEYS) if k in r}
            for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def test_resume_mid_epoch_is_bit_identical_to_an_uninterrupted_run(tmp_path, data_dir):
    config = tiny_config(data_dir, num_steps=24, checkpoint_every_steps=100)
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    training.run(config, straight)
    # 7 steps is mid-epoch (42 steps per epoch) and mid log window (every 5 steps).
    first = training.run(config, resumed, stop_at_step=7)
    assert first["step"] == 7
    training.run(config, resumed)

    step_a, a = _final_state(straight)
    step_b, b = _final_state(resumed)
    assert step_a == step_b == 24
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)  # bit for bit
    assert _metrics(straight) == _metrics(resumed)


def test_a_resume_with_the_speed_switches_changed_goes_ahead_bit_identical(tmp_path, data_dir):
    # The performance section says how a run computes, not what: a resume with other switches
    # is the same run, and a config.json written when the switches were model fields (before
    # they left the model section) resumes too.
    config = tiny_config(data_dir, num_steps=12, checkpoint_every_steps=100, plots=False)
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    training.run(config, straight)
    training.run(config, resumed, stop_at_step=5)
    path = os.path.join(resumed, "config.json")
    with open(path) as f:
        stored = json.load(f)
    stored["model"].update(stored.pop("performance"))  # as an older cnnjax wrote it
    with open(path, "w") as f:
        json.dump(stored, f)
    config.performance.conv_impl, config.performance.materialize_on_cpu = "xla", False
    assert training.run(config, resumed)["step"] == 12  # not refused as another config
    (step_a, a), (step_b, b) = _final_state(straight), _final_state(resumed)
    assert step_a == step_b == 12
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert _metrics(straight) == _metrics(resumed)


def test_workdir_files_and_summary(tmp_path, data_dir):
    workdir = str(tmp_path / "run")
    summary = training.run(tiny_config(data_dir), workdir)
    assert 0.0 <= summary["eval_accuracy"] <= 1.0 and summary["step"] == 20
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["train"]["num_steps"] == 20
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    log = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in log] == [5, 10, 15, 20]
    for key in ("epoch", "train_accuracy", "learning_rate", "steps_per_sec", "images_per_sec"):
        assert key in log[0]
    assert [r["step"] for r in records if "eval_accuracy" in r] == [10, 20]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]


def test_relaunching_a_finished_run_reports_it_and_changes_nothing(tmp_path, data_dir, capsys):
    workdir = str(tmp_path / "run")
    config = tiny_config(data_dir)
    first = training.run(config, workdir)
    done = capsys.readouterr().out.strip().splitlines()[-1]
    before = snapshot(workdir)
    assert training.run(config, workdir) == first
    assert capsys.readouterr().out.splitlines() == [
        f"already finished at step 20 of 20 ({workdir}/summary.json); nothing to do", done]
    assert snapshot(workdir) == before


def test_a_damaged_summary_is_finished_again_from_the_last_checkpoint(tmp_path, data_dir,
                                                                      capsys):
    workdir = str(tmp_path / "run")
    config = tiny_config(data_dir, plots=False)
    first = training.run(config, workdir)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        f.write('{"step": 2')  # cut short
    capsys.readouterr()
    again = training.run(config, workdir)
    assert "resumed from" in capsys.readouterr().out
    assert {k: again[k] for k in ("step", "eval_accuracy", "eval_loss")} == {
        k: first[k] for k in ("step", "eval_accuracy", "eval_loss")}
    assert workdir_lib.read_summary(workdir)["step"] == 20


def test_a_workdir_of_a_different_run_is_refused_untouched(tmp_path, data_dir):
    workdir = str(tmp_path / "run")
    training.run(tiny_config(data_dir), workdir)
    before = {f: os.path.getmtime(os.path.join(workdir, f)) for f in os.listdir(workdir)}
    other = tiny_config(data_dir)
    other.optimizer.learning_rate = 0.01
    with pytest.raises(ConfigError, match=r"optimizer.learning_rate: 0.05 -> 0.01.*--workdir"):
        training.run(other, workdir)
    after = {f: os.path.getmtime(os.path.join(workdir, f)) for f in os.listdir(workdir)}
    assert before == after


def test_a_run_recorded_before_a_field_existed_resumes_as_that_fields_default(tmp_path,
                                                                             data_dir):
    workdir = str(tmp_path / "run")
    config = tiny_config(data_dir, num_steps=10, plots=False)
    training.run(config, workdir, stop_at_step=5)
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        stored = json.load(f)
    # As written by an older cnnjax: without a model field and a train field it now has, both
    # at their defaults here.
    assert stored["model"]["pool"] == "max" and stored["train"]["nan_policy"] == "stop"
    del stored["model"]["pool"], stored["train"]["nan_policy"]
    with open(path, "w") as f:
        json.dump(stored, f)
    summary = training.run(config, workdir)
    assert summary["step"] == 10
    # A missing field whose value now differs from its default is a change.
    del stored["optimizer"]["learning_rate"]  # 0.05 here, 0.1 by default
    with open(path, "w") as f:
        json.dump(stored, f)
    with pytest.raises(ConfigError, match=r"optimizer.learning_rate: 0.1 -> 0.05"):
        training.run(config, workdir)


def test_indivisible_batch_fails_before_any_work(tmp_path, data_dir):
    config = tiny_config(data_dir)
    config.data.batch_size = 30  # 8 devices
    with pytest.raises(ConfigError, match="data.batch_size=30 is not divisible by the 8 devices"):
        training.run(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
