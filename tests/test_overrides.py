"""One override path (cnnjax.overrides) for the command line and for sweeps."""

import sys

import pytest
from absl import flags
from ml_collections import config_flags

from cnnjax import overrides, sweep
from cnnjax.config import ConfigError, defaults, model_config, to_dict

VALID = {
    "optimizer.learning_rate": "0.05",
    "optimizer.boundaries_epochs": "(1.0,2.5)",
    "train.num_steps": "12",
    "data.flip": "true",
    "data.name": "npz:/x.npz",
    "model.features": "(4,8)",
    "model.dense": "(16,)",
    "model.batch_norm": "False",
}


def test_flags_are_read_as_ml_collections_reads_them(monkeypatch):
    """The reference: ml_collections' own --config.a.b=v parsing of the same flags."""
    argv = ["prog", *(f"--config.{k}={v}" for k, v in VALID.items())]
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads its overrides from there
    values = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", defaults(), flag_values=values)
    values(argv)
    ours, _ = overrides.apply(defaults(), VALID, where=overrides.FLAG)
    assert to_dict(ours) == to_dict(values.config)


def test_launch_and_sweep_take_the_same_path():
    from_flags, typed = overrides.apply(defaults(), VALID, where=overrides.FLAG)
    (point,) = sweep.expand(defaults(), [VALID])
    assert to_dict(point.config) == to_dict(from_flags) and point.overrides == typed
    assert typed["model.features"] == (4, 8) and typed["data.flip"] is True


def test_a_new_model_name_brings_that_models_fields_and_takes_their_overrides():
    config, _ = overrides.apply(defaults(), {"model.name": "mlp", "model.hidden": "(8,)"},
                                where=overrides.FLAG)
    assert to_dict(config.model) == to_dict(model_config("mlp", hidden=(8,)))
    file_config = defaults()
    file_config.model = model_config("cnn", features=(4,))
    same, _ = overrides.apply(file_config, {"model.name": "cnn"}, where=overrides.FLAG)
    assert same.model.features == (4,)  # the same name keeps the config's own fields
    assert defaults().model.name == "cnn"  # the input is never changed


@pytest.mark.parametrize("given, message", [
    ({"optimizer.learnin_rate": "0.1"},
     "unknown config key 'learnin_rate' in --config.optimizer.learnin_rate; did you mean "
     "'learning_rate'?"),
    ({"optimiser.name": "sgd"},
     "unknown config key 'optimiser' in --config.optimiser.name; did you mean 'optimizer'?"),
    ({"model.name": "mlp", "model.zzz": "(8,)"},
     "unknown config key 'zzz' in --config.model.zzz; model 'mlp' has the fields: "
     "activation, dropout, dtype, hidden"),
    ({"model.name": "nope"}, "unknown model 'nope' in --config.model.name; choose one of: "),
    ({"seed": "x"}, "value 'x' for --config.seed must be an integer"),
    ({"seed": None}, "--config.seed needs a value: --config.seed=VALUE"),
    ({"data.flip": "maybe"}, "value 'maybe' for --config.data.flip must be true or false"),
    ({"model.features": "8"}, "value '8' for --config.model.features must be a tuple"),
    ({"train": "1"}, "train is a section of the config, not a field; override its fields, "
                     "e.g. --config.train.bce_target_thresh=..."),
])
def test_a_bad_flag_is_one_line_naming_it(given, message):
    with pytest.raises(ConfigError) as e:
        overrides.apply(defaults(), given, where=overrides.FLAG)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_bare_boolean_flag_is_true_and_noconfig_is_false():
    rest, found = overrides.from_argv(["--workdir=w", "--config.data.flip", "--config.seed=1",
                                       "--noconfig.train.plots", "--config.seed=2", "x"])
    assert rest == ["--workdir=w", "x"]
    assert found == {"data.flip": None, "train.plots": "false", "seed": "2"}
    config, _ = overrides.apply(defaults(), found, where=overrides.FLAG)
    assert config.data.flip is True and config.train.plots is False and config.seed == 2
    with pytest.raises(ConfigError, match="takes no value"):
        overrides.from_argv(["--noconfig.data.flip=1"])
