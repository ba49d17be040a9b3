"""The reference experiments: each config is valid for its model and runs end to end.

The smoke runs use ``tfds.testing.mock_data`` in place of the real dataset, a few steps, a
tiny batch and a tiny ``cnn`` in place of the ResNets (whose CPU compile takes minutes); the
real model of each config is checked against the dataset's image shape without compiling.
"""

import importlib

import jax
import jax.numpy as jnp
import pytest
import tensorflow_datasets as tfds

from cnnjax import config as config_lib
from cnnjax import models, training
from cnnjax.config import model_config

EXPERIMENTS = {  # name -> (model, training image shape, classes)
    "mnist_cnn": ("cnn", (28, 28, 1), 10),
    "cifar10_resnet20": ("cifar_resnet20", (32, 32, 3), 10),
    "cifar10_resnet18": ("preact_resnet18", (32, 32, 3), 10),
    "imagenet_resnet50": ("resnet50", (224, 224, 3), 1000),
}


def _config(name):
    return importlib.import_module(f"experiments.{name}").get_config()


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_config_is_valid_and_its_model_takes_the_images(name):
    config = _config(name)
    model_name, shape, classes = EXPERIMENTS[name]
    config_lib.validate(config, 8)
    assert config.model.name == model_name
    doc = importlib.import_module(f"experiments.{name}").__doc__
    assert "python launch.py --config=experiments/" in doc and "Hardware:" in doc
    fields = {k: v for k, v in config.model.items() if k != "name"}
    model = models.get_model(model_name, num_classes=classes, **fields)
    out = jax.eval_shape(
        lambda: model.apply(model.init(jax.random.key(0), jnp.zeros((1, *shape))),
                            jnp.zeros((2, *shape)))
    )
    assert out.shape == (2, classes)


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_runs_a_few_steps_on_mock_data(name, tmp_path, data_dir):
    config = _config(name)
    config.model = model_config("cnn", features=(4,), dense=(), batch_norm=True)
    config.data.data_dir = data_dir
    config.data.batch_size = config.data.eval_batch_size = 16
    config.data.workers = 0
    if name.startswith("imagenet"):
        config.data.image_size = 32
    config.train.num_steps = 2
    config.train.log_every_steps = config.train.checkpoint_every_steps = 2
    if "plots" in config.train:  # a 1000-class confusion-matrix plot is not what's tested
        config.train.plots = False
    with tfds.testing.mock_data(num_examples=48):
        summary = training.run(config, str(tmp_path / name))
    assert summary["step"] == 2 and 0.0 <= summary["eval_accuracy"] <= 1.0
