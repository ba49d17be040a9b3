"""Small configs and checks shared by the tests."""

import hashlib
import os

from cnnjax.config import defaults, model_config


def tiny_config(data_dir: str, **train):
    """A few-second digits run: a tiny CNN with BatchNorm, crop augmentation and SGD."""
    c = defaults()
    c.model = model_config("cnn", features=(8, 16), dense=(32,), batch_norm=True)
    c.data.data_dir = data_dir
    c.data.batch_size = 32
    c.data.eval_batch_size = 64
    c.data.crop_padding = 1
    c.optimizer.learning_rate = 0.05
    c.optimizer.weight_decay = 1e-4
    c.train.num_steps = 20
    c.train.log_every_steps = 5
    c.train.eval_every_steps = 10
    c.train.checkpoint_every_steps = 10
    for k, v in train.items():
        setattr(c.train, k, v)
    return c


def snapshot(directory):
    """Every file under ``directory`` with its content hash and modification time."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, directory)] = (
                    hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return found
