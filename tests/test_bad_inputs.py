"""Every bad input is one line, ``error: ...``, exit status 2, before any work, and leaves no
file created or changed: config fields of every section and model, config files, data files,
images to predict, weights to start from, an existing workdir's files, flags."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cnnjax import config as config_lib
from cnnjax import models
from cnnjax.config import ConfigError, defaults, model_config, validate
from tests.helpers import command, snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.train.num_steps=4", "--config.train.plots=False",
        "--config.model.features=(8,16)", "--config.model.dense=(32,)"]
CANDIDATES = (-2**40, -2, -1, 0, 0.5, 1, 1.5, 5000, 10**6, 2**33)


def _bad_value(test, current):
    for v in CANDIDATES:
        v = type(current)(v) if isinstance(current, float) else v
        if isinstance(current, int) and not isinstance(v, int):
            continue
        if not test(v):
            return v
    return None


@pytest.mark.parametrize("key", sorted(config_lib.RANGES))
def test_every_number_out_of_its_range_is_refused(key):
    test, what = config_lib.RANGES[key]
    config = defaults()
    *section, leaf = key.split(".")
    node = config[section[0]] if section else config
    current = node[leaf]
    bad = _bad_value(test, current)
    assert bad is not None, key
    with config.unlocked():
        node[leaf] = bad
    with pytest.raises(ConfigError) as e:
        validate(config, 1)
    assert str(e.value) == f"{key} must be {what}, got {bad!r}"
    if isinstance(current, float):
        with config.unlocked():
            node[leaf] = math.nan
        with pytest.raises(ConfigError, match=f"^{key} must be a finite number, got nan$"):
            validate(config, 1)


@pytest.mark.parametrize("name", models.names())
def test_every_model_field_out_of_its_range_is_refused(name):
    fields = models.model_fields(name)
    checked = 0
    for key, default in fields.items():
        if key not in models.FIELD_RULES:
            continue
        bad = {"dtype": "float64", "activation": "softmax", "pool": "min", "padding": "FULL",
               "ops": "numpy", "block": "dense", "shortcut": "C", "dropout": 1.0,
               "drop_path_rate": 1.0}.get(key)
        if bad is None:
            bad = () if isinstance(default, tuple) and key in ("features", "stage_sizes") else (
                (0, 2) if isinstance(default, tuple) else 0)
        config = defaults()
        config.model = model_config(name)
        with config.unlocked():
            config.model[key] = bad
        with pytest.raises(ConfigError, match=rf"^model\.{key} of '{name}' must be "):
            validate(config, 1)
        checked += 1
    assert checked >= 1


@pytest.mark.parametrize("name, depth, rule", [
    ("cifar_resnet20", 21, "6n \\+ 2"), ("wrn28_10", 27, "6n \\+ 4")])
def test_impossible_depths_are_refused(name, depth, rule):
    config = defaults()
    config.model = model_config(name)
    config.model.depth = depth
    with pytest.raises(ConfigError, match=f"depth of a .* must be {rule}"):
        validate(config, 1)


@pytest.mark.parametrize("mutate, message", [
    (lambda c: setattr(c.train, "best_metric", "eval_loss"),
     "train.best_metric='eval_loss' with train.best_mode='max' keeps the worst checkpoint; "
     "pass --config.train.best_mode=min"),
    (lambda c: setattr(c.train, "num_epochs", 0.0), "train.num_epochs=0 trains for no step"),
    (lambda c: setattr(c.optimizer, "boundaries_epochs", (60.0, 30.0)),
     "optimizer.boundaries_epochs must be epochs >= 0 in increasing order"),
    (lambda c: setattr(c.optimizer, "head", "(head"),
     "optimizer.head='(head' is not a regular expression"),
    (lambda c: setattr(c.init, "exclude", "[a-"), "init.exclude='[a-' is not a regular"),
    (lambda c: (setattr(c.optimizer, "warmup_steps", 100),
                setattr(c.optimizer, "warmup_epochs", 1.0)),
     "optimizer.warmup_steps=100 and optimizer.warmup_epochs=1.0 both set the warm-up"),
    (lambda c: (setattr(c.optimizer, "name", "schedule_free_adamw"),
                setattr(c.optimizer, "sam_rho", 0.05)),
     "optimizer.sam_rho=0.05 cannot wrap schedule_free_adamw"),
    (lambda c: (setattr(c.optimizer, "name", "lars"), setattr(c.optimizer, "momentum", 0.0)),
     "optimizer.name=lars needs momentum"),
    (lambda c: (setattr(c.optimizer, "name", "schedule_free_sgd"),
                setattr(c.optimizer, "momentum", 0.0)),
     "optimizer.name=schedule_free_sgd needs its interpolation optimizer.momentum > 0"),
    (lambda c: (setattr(c.optimizer, "name", "schedule_free_adamw"),
                setattr(c.optimizer, "b1", 0.0)),
     "optimizer.name=schedule_free_adamw needs optimizer.b1 > 0"),
    (lambda c: (setattr(c.optimizer, "name", "schedule_free_sgd"),
                setattr(c.optimizer, "layer_decay", 0.7)),
     "optimizer.name=schedule_free_sgd averages its own iterates"),
    (lambda c: (setattr(c.optimizer, "freeze_backbone", True),
                setattr(c.optimizer, "layer_decay", 0.7)),
     "optimizer.layer_decay scales the rates of a backbone that optimizer.freeze_backbone"),
])
def test_values_that_contradict_each_other_are_refused(mutate, message):
    config = defaults()
    mutate(config)
    with pytest.raises(ConfigError) as e:
        validate(config, 1)
    assert str(e.value).startswith(message)


# ----------------------------------------------------------------- through launch.py


@pytest.fixture(scope="module")
def files(tmp_path_factory, data_dir):
    """Bad files of every kind, and a trained tiny run to damage copies of."""
    root = tmp_path_factory.mktemp("bad")
    (root / "raises.py").write_text("raise RuntimeError('boom')\n")
    (root / "no_get_config.py").write_text("x = 1\n")
    (root / "syntax.py").write_text("def get_config(:\n")
    (root / "returns_dict.py").write_text("def get_config():\n    return {'a': 1}\n")
    (root / "returns_none.py").write_text("def get_config():\n    pass\n")
    (root / "sweep_raises.py").write_text(
        "from experiments.default import get_config\n"
        "def get_sweep():\n    raise RuntimeError('no grid')\n")
    np.save(root / "plain.npy", np.zeros((4, 8, 8), np.uint8))
    (root / "not.npz").write_bytes(b"PK\x03\x04 not a zip")
    np.savez(root / "objects.npz", images=np.array([None, 1], dtype=object), labels=[0, 1])
    np.savez(root / "no_labels.npz", images=np.zeros((40, 8, 8), np.uint8))
    np.savez(root / "floats.npz", images=np.zeros((40, 8, 8), np.float32),
             labels=np.arange(40) % 2)
    np.savez(root / "negative.npz", images=np.zeros((40, 8, 8), np.uint8),
             labels=np.arange(40) % 2 - 1)
    np.savez(root / "one_class.npz", images=np.zeros((40, 8, 8), np.uint8),
             labels=np.zeros(40, int))
    np.savez(root / "tiny.npz", images=np.zeros((10, 8, 8), np.uint8), labels=np.arange(10) % 2)
    np.savez(root / "wrong_shape.npz", images=np.zeros((2, 5, 5), np.uint8))
    (root / "empty_folder").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "a.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG not really")
    (root / "notes.txt").write_text("not an image")
    env = {**os.environ, "TFDS_DATA_DIR": data_dir,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    run = root / "run"
    done = subprocess.run([sys.executable, "launch.py", *TINY, f"--workdir={run}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def _damage(workdir, how):
    if how == "config_truncated":
        (workdir / "config.json").write_text('{"seed": 0, "mod')
    elif how == "config_list":
        (workdir / "config.json").write_text("[1, 2]")
    elif how == "checkpoints_gone":
        for step in os.listdir(workdir / "checkpoints"):
            shutil.rmtree(workdir / "checkpoints" / step)
        for step in os.listdir(workdir / "best_checkpoint"):
            shutil.rmtree(workdir / "best_checkpoint" / step)


CASES = [
    # (name, launch flags (F: the bad files; W: a damaged copy of the run or a fresh path),
    #  what the one line starts with)
    ("config_raises", ["--config={F}/raises.py"],
     "error: config file '{F}/raises.py' failed to load: RuntimeError: boom"),
    ("config_without_get_config", ["--config={F}/no_get_config.py"],
     "error: config file '{F}/no_get_config.py' has no get_config()"),
    ("config_syntax", ["--config={F}/syntax.py"],
     "error: config file '{F}/syntax.py' failed to load: SyntaxError: invalid syntax"),
    ("config_returns_dict", ["--config={F}/returns_dict.py"],
     "error: get_config() in '{F}/returns_dict.py' returned a dict"),
    ("config_returns_none", ["--config={F}/returns_none.py"],
     "error: get_config() in '{F}/returns_none.py' returned a NoneType"),
    ("get_sweep_raises", ["--config={F}/sweep_raises.py"],
     "error: get_sweep() in {F}/sweep_raises.py failed: RuntimeError: no grid"),
    ("misspelled_key_with_a_config_file", ["--config=experiments/default.py",
                                           "--config.train.num_step=3"],
     "error: unknown config key 'num_step' in --config.train.num_step; did you mean "
     "'num_steps'?"),
    ("inputs_in_train_mode", ["--inputs={F}/a.png"],
     "error: --inputs is for --mode=predict/explain; --mode=train does not read it"),
    ("ema_in_train_mode", ["--ema"],
     "error: --ema is for --mode=eval/predict/visualize/explain/export; --mode=train does not "
     "read it"),
    ("ema_of_a_run_without_one", ["--mode=eval", "--ema"],
     "error: checkpoint {W}/checkpoints/"),
    ("config_variant", ["--config=experiments/default.py:cnnn"],
     "error: config file 'experiments/default.py:cnnn' failed to load: ValueError: unknown "
     "variant 'cnnn'"),
    ("config_directory", ["--config={F}"], "error: config file '{F}' is a directory"),
    ("config_missing_with_override", ["--config={F}/nope.py", "--config.seed=1"],
     "error: config file '{F}/nope.py' not found"),
    ("epochs_zero", ["--config.train.num_steps=-1", "--config.train.num_epochs=0"],
     "error: train.num_epochs=0 trains for no"),
    ("learning_rate_inf", ["--config.optimizer.learning_rate=inf"],
     "error: optimizer.learning_rate must be a finite number, got inf"),
    ("dtype", ["--config.model.dtype=foo"], "error: model.dtype of 'cnn' must be one of"),
    ("unknown_loss", ["--config.train.loss=hinge"],
     "error: unknown loss 'hinge'; choose one of: cross_entropy, bce"),
    ("bce_target_thresh_one", ["--config.train.loss=bce", "--config.train.bce_target_thresh=1"],
     "error: train.bce_target_thresh must be in [0, 1) (0 = no threshold), got 1"),
    ("npy_not_npz", ["--config.data.name=npz:{F}/plain.npy"], "error: {F}/plain.npy is not a "
     "readable .npz of arrays"),
    ("npz_damaged", ["--config.data.name=npz:{F}/not.npz"], "error: {F}/not.npz is not a "
     "readable .npz of arrays"),
    ("npz_objects", ["--config.data.name=npz:{F}/objects.npz"], "error: {F}/objects.npz is not "
     "a readable .npz of arrays"),
    ("npz_no_labels", ["--config.data.name=npz:{F}/no_labels.npz"],
     "error: {F}/no_labels.npz has no array 'labels'"),
    ("npz_floats", ["--config.data.name=npz:{F}/floats.npz"],
     "error: {F}/floats.npz: images must be uint8"),
    ("npz_negative_labels", ["--config.data.name=npz:{F}/negative.npz"],
     "error: {F}/negative.npz: labels must be >= 0"),
    ("npz_one_class", ["--config.data.name=npz:{F}/one_class.npz"],
     "error: npz:{F}/one_class.npz has a single class"),
    ("fewer_examples_than_a_batch", ["--config.data.name=npz:{F}/tiny.npz"],
     "error: data.batch_size=32 is larger than the 8 training examples"),
    ("empty_folder", ["--config.data.name=folder:{F}/empty_folder"], "error: "),
    ("crop_larger_than_images", ["--config.data.crop_padding=9"],
     "error: data.crop_padding=9 is larger than the 8x8 images of digits"),
    ("augment_unknown_op", ["--config.data.augment=crop(padding=1) randaugmnt"],
     "error: unknown augmentation op 'randaugmnt' in data.augment; choose from: autoaugment, "
     "crop, cutmix, erasing, flip, jitter, mixup, randaugment, resized_crop, trivialaugment"),
    ("augment_unknown_argument", ["--config.data.augment=randaugment(mag=9)"],
     "error: data.augment: randaugment has no argument 'mag'; its arguments: num_ops, "
     "magnitude, num_magnitude_bins"),
    ("augment_magnitude_out_of_range", ["--config.data.augment=randaugment(magnitude=31)"],
     "error: data.augment: randaugment's magnitude must be in [0, num_magnitude_bins - 1], "
     "got 31"),
    ("augment_not_a_list_of_ops", ["--config.data.augment=erasing(p=0.5"],
     "error: data.augment='erasing(p=0.5' is not a list of ops like"),
    ("augment_and_shorthand", ["--config.data.flip", "--config.data.augment=flip"],
     "error: flip is given twice, by data.flip and by data.augment"),
    ("augment_crop_larger_than_images", ["--config.data.crop_padding=0",
                                         "--config.data.augment=crop(padding=9)"],
     "error: data.augment's crop padding=9 is larger than the 8x8 images of digits"),
    ("warmup_beyond_the_step_counter", ["--config.optimizer.warmup_epochs=1e9"],
     "error: optimizer.warmup_epochs is 4.2e+10 steps of 42 per epoch, more than the step "
     "counter holds"),
    ("steps_beyond_the_step_counter", ["--config.train.num_steps=99999999999"],
     "error: the run is 1e+11 steps of 42 per epoch, more than the step counter holds"),
    ("eval_batch_over_memory", ["--config.data.eval_batch_size=1000000000"],
     "error: data.eval_batch_size=1000000000 makes each batch 59.6 GiB of images"),
    ("init_missing", ["--config.init.checkpoint={F}/nope"],
     "error: init.checkpoint {F}/nope does not exist"),
    ("init_not_weights", ["--config.init.checkpoint={F}/empty_folder"],
     "error: init.checkpoint {F}/empty_folder is neither converted weights nor a workdir"),
    ("accumulate_zero", ["--config.optimizer.accumulate_steps=0"],
     "error: optimizer.accumulate_steps must be in [1, 2**20] (1 = none), got 0"),
    ("accumulate_beyond_the_run", ["--config.optimizer.accumulate_steps=5"],
     "error: optimizer.accumulate_steps=5 is more than the run's 4 steps"),
    ("sam_around_schedule_free", ["--config.optimizer.name=schedule_free_sgd",
                                  "--config.optimizer.sam_rho=0.05"],
     "error: optimizer.sam_rho=0.05 cannot wrap schedule_free_sgd"),
    ("lars_without_momentum", ["--config.optimizer.name=lars", "--config.optimizer.momentum=0"],
     "error: optimizer.name=lars needs momentum"),
    ("layer_decay_zero", ["--config.optimizer.layer_decay=0"],
     "error: optimizer.layer_decay must be in (0, 1] (1 = off), got 0"),
    ("layer_decay_without_head", ["--config.optimizer.layer_decay=0.5",
                                  "--config.optimizer.head=^classifier/"],
     "error: optimizer.head='^classifier/' matches no parameter of cnn"),
    ("unknown_schedule", ["--config.optimizer.schedule=cosine_restart"],
     "error: unknown schedule 'cosine_restart'; choose one of:"),
    ("freeze_without_head", ["--config.optimizer.freeze_backbone=True",
                             "--config.optimizer.head=^classifier/"],
     "error: optimizer.head='^classifier/' matches no parameter of cnn"),
    ("bad_sweep", ["--sweep=seed"], "error: sweep axis 'seed' must look like key=value1,"),
    ("search_unknown_distribution", ["--sweep=optimizer.learning_rate=gauss(0,1)",
                                     "--sweep_trials=2"],
     "error: unknown distribution 'gauss' in sweep axis optimizer.learning_rate=gauss(0,1)"),
    ("search_low_not_below_high", ["--sweep=optimizer.learning_rate=uniform(0.5,0.1)",
                                   "--sweep_trials=2"],
     "error: sweep axis optimizer.learning_rate=uniform(0.5,0.1): low must be below high"),
    ("search_log_range_from_zero", ["--sweep=optimizer.weight_decay=loguniform(0,1e-3)",
                                    "--sweep_trials=2"],
     "error: sweep axis optimizer.weight_decay=loguniform(0,1e-3): a log range must be above 0"),
    ("search_int_range_on_a_float", ["--sweep=optimizer.learning_rate=int(1,5)",
                                     "--sweep_trials=2"],
     "error: sweep axis optimizer.learning_rate=int(1,5): optimizer.learning_rate is a float "
     "field"),
    ("search_unknown_method", ["--sweep=optimizer.learning_rate=uniform(0.01,0.1)",
                               "--sweep_trials=2", "--sweep_method=bayes"],
     "error: unknown --sweep_method=bayes"),
    ("search_trials_with_a_grid_method", ["--sweep=seed=0,1", "--sweep_method=grid",
                                          "--sweep_trials=2"],
     "error: --sweep_trials, --sweep_method and the other --sweep_* flags are for a search"),
    ("search_unknown_pruner", ["--sweep=optimizer.learning_rate=uniform(0.01,0.1)",
                               "--sweep_trials=2", "--sweep_pruner=asha"],
     "error: unknown --sweep_pruner=asha"),
    ("search_trials_without_a_range", ["--sweep=seed=0,1", "--sweep_trials=2"],
     "error: --sweep_trials, --sweep_method and the other --sweep_* flags are for a search"),
    ("search_storage_unopenable", ["--sweep=optimizer.learning_rate=uniform(0.01,0.1)",
                                   "--sweep_trials=2", "--sweep_storage=sqlite:///{F}/no/s.db"],
     "error: --sweep_storage=sqlite:///{F}/no/s.db cannot be opened"),
    ("unknown_flag", ["--epochs=3"], "error: Unknown command line flag 'epochs'"),
    ("positional", ["train"], "error: unexpected arguments: train"),
    ("partial_multihost", ["--num_processes=2"], "error: multi-host runs need all of"),
    ("predict_missing", ["--mode=predict", "--inputs={F}/nope.png"],
     "error: input file '{F}/nope.png' not found"),
    ("predict_text", ["--mode=predict", "--inputs={F}/notes.txt"],
     "error: input {F}/notes.txt is not an image PIL can read"),
    ("predict_corrupt", ["--mode=predict", "--inputs={F}/corrupt.png"],
     "error: input {F}/corrupt.png is not an image PIL can read"),
    ("predict_mixed", ["--mode=predict", "--inputs={F}/a.png,{F}/tiny.npz"],
     "error: --inputs mixes an .npz ({F}/tiny.npz) with other files"),
    ("predict_wrong_shape", ["--mode=predict", "--inputs={F}/wrong_shape.npz"],
     "error: {F}/wrong_shape.npz holds images of shape (5, 5, 1); the model takes (8, 8, 1)"),
    ("eval_unknown_checkpoint", ["--mode=eval", "--checkpoint=foo"],
     "error: --checkpoint must be 'latest', 'best' or a step number, got 'foo'"),
    ("eval_missing_step", ["--mode=eval", "--checkpoint=999"], "error: no checkpoint at step 999"),
    ("damaged_config_json", ["damage=config_truncated"], "error: {W}/config.json is unreadable"),
    ("config_json_not_a_config", ["damage=config_list"],
     "error: {W}/config.json does not hold a cnnjax config"),
    ("eval_without_checkpoints", ["--mode=eval", "damage=checkpoints_gone"],
     "error: no checkpoint in {W}/checkpoints; train first"),
]


# Through launch.py as well, one case of each kind: a config file, a data file, a run's files.
THROUGH_LAUNCH = ("config_raises", "npz_floats", "eval_without_checkpoints")


def _check_bad_input(launch, tmp_path, files, flags, start):
    """``launch(args)`` on the bad input: one line, exit status 2, no file created or changed."""
    uses_run = any(f.startswith(("--mode", "damage=")) for f in flags)
    workdir = tmp_path / "w"
    if uses_run:
        shutil.copytree(files / "run", workdir)
    for f in flags:
        if f.startswith("damage="):
            _damage(workdir, f.split("=", 1)[1])
    args = [f.format(F=files, W=workdir) for f in flags if not f.startswith("damage=")]
    before = snapshot(workdir) if workdir.exists() else None
    inputs = snapshot(files)
    config = [a for a in args if a.startswith("--config=")]  # the file comes before overrides
    args = [*config, *TINY, *[a for a in args if a not in config], f"--workdir={workdir}"]
    result = launch(args)
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start.format(F=files, W=workdir)), lines
    if before is None:
        assert not workdir.exists(), sorted(os.listdir(workdir))
    else:
        assert snapshot(workdir) == before
    assert snapshot(files) == inputs
    json.dumps(lines)  # printable


@pytest.mark.parametrize("name, flags, start", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_no_file(tmp_path, files, data_dir, capsys,
                                                          name, flags, start):
    _check_bad_input(lambda args: command(capsys, *args, env={"TFDS_DATA_DIR": data_dir}),
                     tmp_path, files, flags, start)


@pytest.mark.e2e
@pytest.mark.parametrize("name, flags, start", [c for c in CASES if c[0] in THROUGH_LAUNCH],
                         ids=THROUGH_LAUNCH)
def test_bad_input_through_launch_py_is_one_line_exit_2_and_changes_no_file(
        tmp_path, files, data_dir, name, flags, start):
    env = {**os.environ, "TFDS_DATA_DIR": data_dir,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    _check_bad_input(
        lambda args: subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, env=env,
                                    capture_output=True, text=True, timeout=300),
        tmp_path, files, flags, start)
