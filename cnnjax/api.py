"""The Python API, re-exported as ``cnnjax.get_config``, ``cnnjax.train`` and ``cnnjax.load``:
the command line's three steps (a config, a run, its checkpoint) for a notebook or a script.

    >>> import cnnjax
    >>> config = cnnjax.get_config("default", train={"num_epochs": 1})
    >>> summary = cnnjax.train(config, workdir)  # doctest: +ELLIPSIS
    training cnn (53,098 params) on digits ...
    >>> run = cnnjax.load(workdir)
    >>> run.evaluate()["eval_accuracy"] == summary["eval_accuracy"]
    True
"""

from __future__ import annotations

from typing import Any

import ml_collections
from flax.traverse_util import flatten_dict

from cnnjax import experiment_files, overrides


def get_config(name: str = "default", *, pretrained: str | None = None,
               **fields: Any) -> ml_collections.ConfigDict:
    """The config of a packaged experiment (``"default"``, ``"mnist_cnn"``, ``"default:mlp"``,
    ...) or of a config file's path, with fields changed: a section as a dict
    (``train={"num_epochs": 5}``), a top-level field as itself (``seed=1``), or a dotted key
    (``**{"optimizer.learning_rate": 0.02}``). ``pretrained="resnet18"`` is
    ``init.pretrained``: start from those ImageNet weights (``cnnjax weights list``). Values are
    checked and converted as on the command line; a wrong one is a one-line ``ConfigError``.

    >>> config = cnnjax.get_config("default", seed=1, optimizer={"learning_rate": 0.02})
    >>> config.seed, config.optimizer.learning_rate, config.model.name
    (1, 0.02, 'cnn')
    >>> cnnjax.get_config("default:mlp", model={"hidden": (64,)}).model.hidden
    (64,)
    >>> cnnjax.get_config(seeds=1)
    Traceback (most recent call last):
    ...
    cnnjax.errors.ConfigError: unknown config key 'seeds' in get_config(); did you mean 'seed'?
    """
    config = experiment_files.load(name)
    if pretrained is not None:
        fields["init.pretrained"] = pretrained
    return overrides.apply(config, flatten_dict(dict(fields), sep="."), where="get_config()")[0]



def train(config: ml_collections.ConfigDict, workdir: str, *,
          allow_config_change: bool = False, allow_data_change: bool = False) -> dict[str, Any]:
    """Trains the run of ``config`` in ``workdir`` (or resumes it, or, if it has finished,
    returns its summary without changing anything), as the ``cnnjax`` command does; returns
    the summary (``eval_accuracy``, ``eval_loss``, ``step``, ``wall_time_s``, ...). The
    progress bar shows in a notebook as on a terminal. ``allow_config_change`` and
    ``allow_data_change`` resume a run recorded with another config or other data.

    >>> summary = cnnjax.train(cnnjax.get_config(train={"num_epochs": 1}), workdir)
    already finished at step 42 of 42 (...); nothing to do
    done: test accuracy ...
    >>> summary["step"]
    42
    """
    from cnnjax import training

    return training.run(config, workdir, allow_config_change=allow_config_change,
                        allow_data_change=allow_data_change)


def load(workdir: str, checkpoint: str = "best", *, ema: bool = False):
    """A trained run's checkpoint (``"best"``, ``"latest"`` or a step number) with the config
    it was trained with: ``.model``, ``.variables``, ``.config``, ``.predict(images)`` (class
    probabilities), ``.evaluate()`` (the test split's metrics), ``.explain(images)`` (Grad-CAM
    and saliency PNGs) and ``.export(format)`` (a checked StableHLO or ONNX file). ``ema``:
    load the moving average of the weights (``train.ema_decay``) instead.

    >>> run = cnnjax.load(workdir)
    >>> run.step, sorted(run.variables)
    (42, ['batch_stats', 'params'])
    >>> images = np.zeros((2, 8, 8, 1), np.uint8)
    >>> run.predict(images).shape
    (2, 10)
    """
    import logging

    from cnnjax import run

    absl = logging.getLogger("absl")  # Orbax warns that the directory it reads is read-only
    level = absl.level
    absl.setLevel(max(level, logging.ERROR))
    try:
        return run.load(workdir, str(checkpoint), ema)
    finally:
        absl.setLevel(level)
