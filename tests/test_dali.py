"""The DALI loader on DALI's CPU pipelines: the streaming loader's examples, crops and flips,
decoded by DALI; sharded per process; a resumed run that continues bit for bit."""

import numpy as np
import pytest

from cnnjax import data, training
from cnnjax import run as run_lib
from cnnjax.config import ConfigError, validate
from cnnjax.data import dali, local, streaming
from tests.helpers import tiny_config
from tests.test_data_local import _jpeg_folder, data_config


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    return _jpeg_folder(tmp_path_factory.mktemp("jpegs"), n=48)


def test_dali_decodes_the_streaming_loaders_examples_crops_and_flips(jpegs):
    config = data_config(f"folder:{jpegs}", "dali", image_size=32, flip=True, batch_size=16)
    d = data.build(config, seed=5)
    assert isinstance(d.train, dali.DaliLoader) and d.loader == "dali"
    records = local.open_folder(jpegs).train
    framing = data.framing_for(local.open_folder(jpegs), config)
    reference = streaming.StreamingLoader(records, framing, 16, 5)
    for step in range(4):  # past an epoch (3 steps)
        ours, theirs = d.train.batch(step), reference.batch(step)
        np.testing.assert_array_equal(ours["labels"], theirs["labels"])
        np.testing.assert_array_equal(d.train.indices(step), reference.indices(step))
        assert ours["images"].shape == (16, 32, 32, 3) and ours["images"].dtype == np.uint8
        # The same windows and flips, through another decoder and resampler.
        difference = np.abs(ours["images"].astype(float) - theirs["images"]).mean()
        assert difference < 8, (step, difference)


def test_each_process_reads_its_slice_and_a_resume_reads_the_identical_next_batch(jpegs):
    framing = data.framing_for(local.open_folder(jpegs),
                               data_config(f"folder:{jpegs}", "dali", image_size=32))
    records = local.open_folder(jpegs).train
    whole = dali.DaliLoader(records, framing, 16, 1)
    halves = [dali.DaliLoader(records, framing, 16, 1, p, 2) for p in (0, 1)]
    for step in range(3):
        batch = whole.batch(step)
        parts = [h.batch(step) for h in halves]
        np.testing.assert_array_equal(np.concatenate([p["images"] for p in parts]),
                                      batch["images"])
    saved = whole.state(3)
    expected = whole.batch(3)["images"]
    resumed = dali.DaliLoader(records, framing, 16, 1)
    resumed.restore(3, saved)
    np.testing.assert_array_equal(resumed.batch(3)["images"], expected)
    with pytest.raises(ConfigError, match="resume with --config.data.loader=streaming"):
        resumed.restore(3, {"loader": "streaming", "epoch": 1, "index_in_epoch": 0})


@pytest.mark.heavy  # .ci/run runs it; the bare suite covers the same more cheaply
def test_a_run_on_dali_stopped_and_resumed_ends_as_an_uninterrupted_one(jpegs, tmp_path):
    import jax

    config = tiny_config(str(tmp_path / "tfds"), plots=False, writers="jsonl")
    config.data.update(name=f"folder:{jpegs}", loader="dali", image_size=16, batch_size=16,
                       eval_batch_size=16)
    config.train.num_steps = 6
    straight = training.run(config, str(tmp_path / "straight"))
    training.run(config, str(tmp_path / "resumed"), stop_at_step=3)
    resumed = training.run(config, str(tmp_path / "resumed"))
    assert straight["eval_loss"] == resumed["eval_loss"]

    a = run_lib.load(str(tmp_path / "straight")).variables
    b = run_lib.load(str(tmp_path / "resumed")).variables
    assert jax.tree.all(jax.tree.map(np.array_equal, a, b))


def test_without_dali_the_loader_is_refused_in_one_line_naming_the_extra(monkeypatch, jpegs):
    monkeypatch.setattr(dali, "available", lambda: False)
    config = tiny_config("")
    config.data.update(name=f"folder:{jpegs}", loader="dali")
    with pytest.raises(ConfigError, match=r"^data.loader=dali needs NVIDIA DALI, which is not "
                                          r"installed; pip install 'cnnjax\[dali\]'"):
        validate(config)
    digits = tiny_config("")
    digits.data.loader = "dali"
    monkeypatch.setattr(dali, "available", lambda: True)
    with pytest.raises(ConfigError, match="decodes image files"):
        data.build(digits.data, 0)
