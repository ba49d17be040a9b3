"""Transfer learning: pretrained init, a new head, a frozen backbone."""

import os

import jax
import numpy as np
from flax import traverse_util

from cnnjax import models, training, transfer
from cnnjax.checkpoint import Checkpointer
from cnnjax.models.pretrained import save_pretrained
from tests.helpers import tiny_config


def flat(tree):
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def test_a_checkpoint_with_another_head_size_loads_into_the_new_head():
    x = np.zeros((1, 8, 8, 1), np.float32)
    big = models.get_model("cnn", num_classes=1000, features=(4, 8), dense=(16,))
    small = models.get_model("cnn", num_classes=10, features=(4, 8), dense=(16,))
    pretrained = big.init(jax.random.PRNGKey(1), x)["params"]
    fresh = small.init(jax.random.PRNGKey(2), x)["params"]
    merged, notes = transfer.merge(fresh, pretrained)
    m, p, f = flat(merged), flat(pretrained), flat(fresh)
    for path in m:
        if path.startswith("head/"):
            np.testing.assert_array_equal(m[path], f[path])  # new 10-class head, fresh init
            assert m[path].shape[-1] == 10
        else:
            np.testing.assert_array_equal(m[path], p[path])  # backbone copied exactly
    assert "head/kernel re-initialised (shape (16, 1000) -> (16, 10))" in notes
    small.apply({"params": merged}, x)  # the merged tree is a valid 10-class model


def test_frozen_backbone_keeps_params_and_batch_stats_bit_identical(tmp_path, data_dir):
    # "Pretrained" weights: a short digits run, saved the way converted weights are saved.
    source = tiny_config(data_dir, num_steps=10)
    training.run(source, str(tmp_path / "source"))
    state, _ = Checkpointer(str(tmp_path / "source" / "checkpoints"), 1).read()
    pretrained = str(tmp_path / "pretrained")
    save_pretrained({"params": state["params"], "batch_stats": state["batch_stats"]}, pretrained)

    probe = tiny_config(data_dir, num_steps=10)
    probe.init.checkpoint = pretrained
    probe.init.exclude = "^head/"  # a new head, as for a new task
    probe.optimizer.freeze_backbone = True
    training.run(probe, str(tmp_path / "probe"))
    after, _ = Checkpointer(str(tmp_path / "probe" / "checkpoints"), 1).read()

    before_p, after_p = flat(state["params"]), flat(after["params"])
    changed = [k for k in before_p if not np.array_equal(before_p[k], after_p[k])]
    assert changed and all(k.startswith("head/") for k in changed)
    for k, v in flat(state["batch_stats"]).items():
        np.testing.assert_array_equal(v, flat(after["batch_stats"])[k])


def test_backbone_learning_rate_scale_slows_only_the_backbone(tmp_path, data_dir):
    runs = {}
    for scale in (1.0, 0.0):
        config = tiny_config(data_dir, num_steps=3)
        config.optimizer.backbone_lr_scale = scale
        workdir = str(tmp_path / f"s{scale}")
        training.run(config, workdir)
        state, _ = Checkpointer(os.path.join(workdir, "checkpoints"), 1).read()
        runs[scale] = flat(state["params"])
    # scale 0: backbone params never move from their (identical, same-seed) initialisation,
    # so they differ from the scale-1 run's trained backbone; the heads both trained.
    frozen, trained = runs[0.0], runs[1.0]
    for k in frozen:
        if not k.startswith("head/"):
            assert not np.array_equal(frozen[k], trained[k]), k
