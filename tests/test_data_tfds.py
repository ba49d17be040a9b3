"""TFDS datasets by name through both loaders, on ``tfds.testing.mock_data`` (offline)."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cnnjax import data, evaluate, models, parallel, steps, training
from cnnjax.config import ConfigError, defaults, model_config
from cnnjax.data import augment as augment_lib
from cnnjax.data import catalog

# name -> (classes, training shape with the overrides below, eval split from the table)
CASES = {
    "mnist": (10, (28, 28, 1), "test"),
    "cifar10": (10, (32, 32, 3), "test"),
    "imagenet2012": (1000, (24, 24, 3), "validation"),  # image_size=24 keeps it small
}


def data_config(name, loader, data_dir, **overrides):
    c = defaults().data
    c.name, c.loader, c.data_dir = name, loader, data_dir
    c.batch_size, c.eval_batch_size, c.workers = 8, 16, 0
    if name == "imagenet2012":
        c.image_size = 24
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


def _all_eval(d, batch_size=16):
    batches = list(d.eval_batches(batch_size))
    return {k: np.concatenate([b[k] for b in batches]) for k in ("images", "labels", "mask")}


@pytest.mark.parametrize("loader", ["memory", "streaming"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_mock_dataset_through_each_loader(name, loader, data_dir):
    classes, shape, eval_split = CASES[name]
    with tfds.testing.mock_data(num_examples=40):
        d = data.build(data_config(name, loader, data_dir), seed=0)
        batches = [d.train.batch(s) for s in range(6)]  # past the end of epoch 0 (5 steps)
        evals = _all_eval(d)
    assert d.loader == loader and d.train.steps_per_epoch == 5
    spec = catalog.lookup(name)
    assert spec.eval_split == eval_split
    assert d.info.num_classes == classes and d.info.image_shape == shape
    assert d.info.mean == spec.mean and d.info.std == spec.std
    for b in batches:
        assert b["images"].shape == (8, *shape) and b["images"].dtype == np.uint8
        assert b["labels"].shape == (8,) and b["labels"].dtype == np.int32
    # evaluation: 40 examples in 3 batches of 16, the last one padded with 8 masked copies
    assert evals["images"].shape == (48, *shape) and evals["mask"].sum() == 40
    assert (d.num_train, d.num_eval) == (40, 40)


def test_memory_and_streaming_score_the_same(data_dir):
    """Same data, same parameters: identical evaluation inputs and metrics."""
    with tfds.testing.mock_data(num_examples=37):
        memory = data.build(data_config("imagenet2012", "memory", data_dir), seed=0)
        streaming = data.build(data_config("imagenet2012", "streaming", data_dir), seed=0)
        a, b = _all_eval(memory), _all_eval(streaming)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        mesh = parallel.make_mesh()
        model = models.get_model("mlp", num_classes=1000, axis_name=parallel.AXIS, hidden=(16,))
        state = steps.init_state(model, _sgd(), 0, memory.info.image_shape, mesh)
        stats = {"mean": memory.info.mean, "std": memory.info.std}
        eval_step = steps.make_eval_step(mesh, model=model, **stats)
        scores = [evaluate.evaluation(eval_step, state.variables, d.eval_batches(16), mesh)
                  for d in (memory, streaming)]
    assert scores[0].metrics == scores[1].metrics and scores[0].metrics["eval_loss"] > 0
    np.testing.assert_array_equal(scores[0].confusion, scores[1].confusion)


def _sgd():
    import optax

    return optax.sgd(0.1)


@pytest.mark.parametrize("loader", ["memory", "streaming"])
def test_resuming_mid_epoch_gives_the_identical_next_batch(loader, data_dir):
    with tfds.testing.mock_data(num_examples=40):
        config = data_config("cifar10", loader, data_dir, flip=True)
        first = data.build(config, seed=3).train
        for step in range(7):  # mid epoch 1 (5 steps per epoch)
            first.batch(step)
        saved = json.loads(json.dumps(first.state(7)))  # as the checkpoint stores it
        expected = [first.batch(7), first.batch(8)]
        resumed = data.build(config, seed=3).train
        resumed.restore(7, saved)
        got = [resumed.batch(7), resumed.batch(8)]
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(e["images"], g["images"])
        np.testing.assert_array_equal(e["labels"], g["labels"])


def test_streaming_refuses_a_position_it_cannot_continue(data_dir):
    with tfds.testing.mock_data(num_examples=40):
        loader = data.build(data_config("mnist", "streaming", data_dir), seed=0).train
        with pytest.raises(ConfigError, match="--config.data.loader=memory"):
            loader.restore(5, {"epoch": 1, "index_in_epoch": 0})
        with pytest.raises(ConfigError, match="by an older cnnjax.s streaming loader"):
            loader.restore(5, {"step": 5, "workers": 2, "grain": "{}"})


def test_streaming_host_augmentation_is_seeded_and_flips_on_the_host(data_dir):
    with tfds.testing.mock_data(num_examples=40):
        config = data_config("imagenet2012", "streaming", data_dir, flip=True)
        a = data.build(config, seed=1)
        b = data.build(config, seed=1)
        c = data.build(config, seed=2)
        batches = [d.train.batch(0)["images"] for d in (a, b, c)]
        memory = data.build(data_config("cifar10", "memory", data_dir, flip=True), seed=1)
    np.testing.assert_array_equal(batches[0], batches[1])
    assert not np.array_equal(batches[0], batches[2])
    # flipped on the host, with the random-resized crop; the in-memory loader leaves it to
    # the device (the ops left to the step are data.augment's)
    assert "flip" not in dict(augment_lib.parse(a.augment["augment"]))
    assert "flip" in dict(augment_lib.parse(memory.augment["augment"]))


def test_auto_picks_memory_when_the_decoded_splits_fit(data_dir):
    with tfds.testing.mock_data(num_examples=40):
        # 80 images of 32x32x3 = 240 KiB; at 128x128, 3.75 MiB
        fits = data_config("cifar10", "auto", data_dir, max_memory_mb=1)
        assert data.build(fits, 0).loader == "memory"
        too_big = data_config("cifar10", "auto", data_dir, max_memory_mb=1, image_size=128)
        assert data.build(too_big, 0).loader == "streaming"


def test_a_dataset_that_is_not_prepared_is_one_line_naming_the_fix(tmp_path, data_dir):
    empty = str(tmp_path / "empty_tfds")
    with pytest.raises(data.DataNotPreparedError) as e:
        data.build(data_config("cifar10", "auto", empty), seed=0)
    message = str(e.value)
    assert isinstance(e.value, ConfigError) and "\n" not in message
    assert "'cifar10'" in message and empty in message
    assert f"python -m cnnjax.data.prepare --name=cifar10 --data_dir={empty}" in message
    # ... and training.run stops on it before writing the workdir
    from tests.helpers import tiny_config

    config = tiny_config(empty)
    config.data.name = "cifar10"
    with pytest.raises(data.DataNotPreparedError):
        training.run(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_unknown_dataset_name_is_one_line(data_dir):
    with pytest.raises(ConfigError, match="unknown dataset 'cifar11'.*npz:"):
        data.build(data_config("cifar11", "auto", data_dir), seed=0)


def test_catalog_lookup_and_fallback():
    assert catalog.lookup("imagenette/320px-v2").eval_split == "validation"
    assert catalog.lookup("no_such_set") is None
    assert catalog.fallback(fixed=True).image_size == 0  # native size
    natural = catalog.fallback(fixed=False)
    assert natural.image_size == 224 and natural.random_resized_crop
    assert catalog.eval_split_from(["train", "validation"]) == "validation"
    assert catalog.eval_split_from(["train"]) == "train[90%:]"


def test_digits_keeps_its_statistics_and_loader(data_dir):
    config = defaults().data
    config.data_dir = data_dir
    d = data.build(config, seed=0)
    expected = data.info_from("digits", data.load("digits", "train", data_dir))
    assert d.loader == "memory" and d.info.image_shape == (8, 8, 1)
    np.testing.assert_allclose(d.info.mean, expected.mean)
    np.testing.assert_allclose(d.info.std, expected.std)


def test_a_streaming_run_resumed_mid_epoch_matches_an_uninterrupted_one(tmp_path, data_dir):
    from tests.helpers import tiny_config

    config = tiny_config(data_dir, num_steps=6, checkpoint_every_steps=100, eval_every_steps=6)
    config.model = model_config("cnn", features=(4,), dense=(), batch_norm=True)
    config.data.update(name="mnist", loader="streaming", workers=0, batch_size=16, flip=True)
    if "plots" in config.train:
        config.train.plots = False
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    with tfds.testing.mock_data(num_examples=64):  # 4 steps per epoch: stop mid epoch 0
        a = training.run(config, straight)
        assert training.run(config, resumed, stop_at_step=3)["step"] == 3
        b = training.run(config, resumed)
    assert a["eval_loss"] == b["eval_loss"] and a["eval_accuracy"] == b["eval_accuracy"]


def test_launch_reports_an_unprepared_dataset_in_one_line(tmp_path, capsys):
    from tests.helpers import command

    empty, workdir = str(tmp_path / "tfds"), str(tmp_path / "run")
    result = command(capsys, "--config.data.name=cifar10", f"--workdir={workdir}",
                     env={"TFDS_DATA_DIR": empty})
    assert result.returncode == 2 and not os.path.exists(workdir)
    assert result.stderr.strip() == (
        f"error: dataset 'cifar10' is not prepared in {empty} (searched {empty}/cifar10/3.0.2); "
        f"prepare it once with: python -m cnnjax.data.prepare --name=cifar10 --data_dir={empty}"
    )


def test_prepare_without_network_fails_fast_in_one_line(tmp_path, monkeypatch):
    # TFDS alone would retry for minutes; the probe answers in seconds with the alternative.
    import socket
    import time

    from cnnjax.data import prepare

    def unreachable(address, timeout=None):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    start = time.monotonic()
    with pytest.raises(ConfigError) as e:
        prepare.prepare("mnist", str(tmp_path))
    assert time.monotonic() - start < 30
    assert str(e.value) == (
        "preparing mnist downloads its files from storage.googleapis.com, which this machine "
        "cannot reach (Network is unreachable): preparing it needs network access. Without "
        "it, run this command on a machine that has it and copy the prepared folder "
        f"{tmp_path}/mnist to the same place here")
    assert not os.path.exists(tmp_path / "mnist" / "3.0.1" / "dataset_info.json")


@pytest.mark.parametrize("args, message", [
    ([], "error: --name is required, e.g. --name=cifar10"),
    (["--nam=mnist"], "error: Unknown command line flag 'nam'"),
    (["mnist"], "error: unexpected arguments: mnist"),
])
def test_prepare_usage_errors_are_one_line(args, message):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "cnnjax.data.prepare", *args],
                            capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(message)
