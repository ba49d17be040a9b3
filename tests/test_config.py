import pytest

from cnnjax.config import ConfigError, defaults, model_config, validate


def test_defaults_validate():
    validate(defaults(), device_count=8)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: setattr(c.optimizer, "lerning_rate", 0.1),
         "unknown config key 'optimizer.lerning_rate'; did you mean 'optimizer.learning_rate'?"),
        (lambda c: setattr(c.optimizer, "learning_rate", 0.0),
         "optimizer.learning_rate must be > 0, got 0.0"),
        (lambda c: setattr(c.optimizer, "name", "lbfgs"),
         "unknown optimizer 'lbfgs'; choose one of: sgd, adam, adamw, lamb, lars, lion, "
         "rmsprop, adafactor, muon, schedule_free_adamw, schedule_free_sgd"),
        (lambda c: setattr(c.optimizer, "schedule", "inverse_sqrt"),
         "unknown schedule 'inverse_sqrt'; choose one of: constant, cosine, piecewise, linear, "
         "polynomial, exponential, onecycle, cosine_restarts"),
        (lambda c: setattr(c.train, "num_epochs", -1.0), "train.num_epochs must be >= 0, got -1.0"),
        (lambda c: setattr(c.data, "batch_size", 0), "data.batch_size must be > 0, got 0"),
        (lambda c: setattr(c.data, "batch_size", 12),
         "data.batch_size=12 is not divisible by the 8 devices; use a multiple of 8"),
        (lambda c: setattr(c.model, "name", "resnet9000"), "unknown model 'resnet9000'"),
        (lambda c: setattr(c.model, "featurez", (8,)), "model 'cnn' has no field 'featurez'"),
        (lambda c: setattr(c.train, "writers", "jsonl,comet"),
         "unknown metric writer 'comet' in train.writers; choose from: jsonl, tensorboard, "
         "progress, wandb, mlflow (or add your own to cnnjax.metrics.WRITERS in the config "
         "file)"),
        (lambda c: setattr(c.train, "writers", "jsonl,progress,jsonl"), "names a writer twice"),
        (lambda c: setattr(c.train, "writers", "progress"),
         "train.writers='progress' leaves out 'jsonl'"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_value(mutate, message):
    config = defaults()
    mutate(config)
    with pytest.raises(ConfigError) as e:
        validate(config, device_count=8)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_wrong_types_are_refused_by_the_config_itself():
    config = defaults()
    with pytest.raises(TypeError, match="log_every_steps"):
        config.train.log_every_steps = "often"


def test_model_config_fills_every_field_of_the_model():
    section = model_config("cnn", features=(4,))
    assert section.name == "cnn" and tuple(section.features) == (4,)
    assert section.pool == "max" and section.dtype == "float32"
    assert "num_classes" not in section
