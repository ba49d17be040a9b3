"""A run knows its data and its environment: W/run.json, and the data check of a resume.

Each run here is stopped after its first checkpoint (``stop_at_step``, which saves and returns
as a kill after that checkpoint leaves the workdir), its data replaced, and relaunched.
"""

import json
import os
import shlex
import sys

import numpy as np
import pytest
from PIL import Image

from cnnjax import run as run_lib
from cnnjax import runrecord, sweep, training
from cnnjax.api import get_config
from cnnjax.data import fingerprint
from cnnjax.data.builders.digits import load_split
from cnnjax.errors import ConfigError
from tests.helpers import assert_refused, command, snapshot

# A 4-step run of a tiny CNN, checkpointed at step 2: as flags and as the same config.
FLAGS = {"model.features": "(4,)", "model.dense": "()", "data.batch_size": "16",
         "data.eval_batch_size": "32", "train.num_steps": "4", "train.log_every_steps": "2",
         "train.eval_every_steps": "0", "train.checkpoint_every_steps": "2",
         "train.plots": "False", "train.best_metric": "", "train.writers": "jsonl"}


def config_and_args(name, data_dir, **more):
    given = {**FLAGS, "data.name": name, "data.data_dir": data_dir, **more}
    config = get_config("default", **{k: _typed(v) for k, v in given.items()})
    return config, [f"--config.{k}={v}" for k, v in given.items()]


def _typed(text):
    try:
        return eval(text, {})  # the flags above are Python literals, or plain strings
    except (NameError, SyntaxError):
        return text


def digits_npz(path, flip=False, seed=None, n=160):
    images, labels = load_split("train")
    images, labels = images[:n], labels[:n]
    if flip:
        images = images[:, :, ::-1]
    if seed is not None:
        order = np.random.default_rng(seed).permutation(n)
        images, labels = images[order], labels[order]
    np.savez(path, images=images, labels=labels)


def history(workdir):
    return [(h["event"], h["step"]) for h in runrecord.read(str(workdir))["history"]]


def test_npz_replaced_by_the_same_digits_flipped_and_reordered(tmp_path, data_dir, capsys):
    npz, workdir = tmp_path / "data.npz", tmp_path / "run"
    digits_npz(npz)
    config, args = config_and_args(f"npz:{npz}", data_dir)
    training.run(config, str(workdir), stop_at_step=2)  # killed after its first checkpoint
    before = os.path.getsize(npz)
    digits_npz(npz, flip=True, seed=0)
    assert os.path.getsize(npz) == before  # the same shape: only the hash tells them apart
    assert_refused(capsys, str(workdir), [f"--workdir={workdir}", *args],
                   f"error: the data npz:{npz} is not the data the run in {workdir} was trained "
                   "on (file hash sha256 ")
    result = command(capsys, f"--workdir={workdir}", *args, "--allow_data_change")
    assert result.returncode == 0, result.stderr
    assert f"resumed from {workdir}/checkpoints/2" in result.stdout
    assert history(workdir) == [("start", 0), ("data_change", 2), ("resume", 2), ("finish", 4)]
    record = runrecord.read(str(workdir))
    change = record["history"][1]
    assert change["change"].startswith("file hash sha256 ") and change["to"] == record["data"]
    assert record["data"] == fingerprint.of(config.data) != change["from"]
    assert record["data"]["bytes"] == before


def test_an_image_folder_that_gains_a_file(tmp_path, data_dir):
    root, workdir = tmp_path / "images", tmp_path / "run"
    images, labels = load_split("train")
    images, labels = images[labels < 2], labels[labels < 2]  # two classes of 20 and a spare
    for i in range(40):
        (root / str(labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i, ..., 0]).save(root / str(labels[i]) / f"{i}.png")
    config, _ = config_and_args(f"folder:{root}", data_dir)
    training.run(config, str(workdir), stop_at_step=2)
    Image.fromarray(images[40, ..., 0]).save(root / str(labels[40]) / "new.png")
    before = snapshot(workdir)
    with pytest.raises(ConfigError, match=r"\(40 -> 41 images, [\d,]+ -> [\d,]+ bytes\); "
                       "restore that data, .* or --allow_data_change"):
        training.run(config, str(workdir))
    assert snapshot(workdir) == before  # byte for byte, modification times too
    assert training.run(config, str(workdir), allow_data_change=True)["step"] == 4
    assert history(workdir) == [("start", 0), ("data_change", 2), ("resume", 2), ("finish", 4)]
    assert runrecord.read(str(workdir))["data"]["images"] == 41


def test_a_tfds_dataset_prepared_again_at_another_version(tmp_path, data_dir, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    workdir = tmp_path / "run"
    config, _ = config_and_args("mnist", str(tmp_path / "tfds"), **{"data.loader": "memory"})
    with tfds.testing.mock_data(num_examples=48):
        training.run(config, str(workdir), stop_at_step=2)
        # An upgraded TFDS whose mnist builder is a newer version, prepared again.
        monkeypatch.setattr(tfds.builder_cls("mnist"), "VERSION", tfds.core.Version("3.0.2"))
        before = snapshot(workdir)
        with pytest.raises(ConfigError, match=r"\(version 3\.0\.1 -> 3\.0\.2\)"):
            training.run(config, str(workdir))
        assert snapshot(workdir) == before
        training.run(config, str(workdir), allow_data_change=True)
    assert history(workdir) == [("start", 0), ("data_change", 2), ("resume", 2), ("finish", 4)]
    assert runrecord.read(str(workdir))["data"]["version"] == "3.0.2"


def test_an_unchanged_resume_records_every_field_and_other_software_is_one_warning(
        tmp_path, data_dir, capsys, monkeypatch):
    workdir = tmp_path / "run"
    config, args = config_and_args("digits", data_dir, **{"train.num_steps": "6"})
    training.run(config, str(workdir), stop_at_step=2)
    monkeypatch.setattr(sys, "argv", ["cnnjax", f"--workdir={workdir}", *args])  # as launched
    training.run(config, str(workdir), stop_at_step=4)  # the same data and software: silent
    assert capsys.readouterr().err == ""
    with open(workdir / "run.json") as f:
        record = json.load(f)
    assert [(h["event"], h["step"]) for h in record["history"]] == [("start", 0), ("resume", 2)]
    assert set(record["packages"]) == {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
                                       "cnnjax"}
    import jax
    import optax

    assert record["packages"]["jax"] == jax.__version__
    assert record["packages"]["optax"] == optax.__version__
    assert record["python"] == ".".join(map(str, sys.version_info[:3]))
    assert (record["device_kind"], record["device_count"], record["process_count"]) == (
        jax.devices()[0].device_kind, jax.device_count(), 1)
    # The tests run from a clone: its commit, and whether tracked files have changes.
    assert len(record["git_commit"]) == 40 and isinstance(record["git_dirty"], bool)
    assert record["command"] == shlex.join(sys.argv)  # the newest launch's command line
    assert record["history"][0]["environment"]["command"] != record["command"]
    assert record["history"][1]["environment"]["command"] == record["command"]
    assert record["data"] == {"name": "digits", "source": "builtin",
                              "identity": fingerprint.BUILTIN["digits"]}
    for entry in record["history"]:
        assert entry["time"].endswith("Z") and entry["time"][:2] == "20"  # UTC
    # Resumed as on another machine: one warning line, and the run goes on to its end.
    record["packages"]["jax"], record["device_kind"] = "0.0.1", "TPU v9"
    (workdir / "run.json").write_text(json.dumps(record))
    result = command(capsys, f"--workdir={workdir}", *args)
    assert result.returncode == 0
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"warning: resuming {workdir} on other software or hardware than its "
                           "last launch (jax 0.0.1 -> ")
    assert "device kind TPU v9 -> " in line and "not promised" in line
    assert history(workdir) == [("start", 0), ("resume", 2), ("resume", 4), ("finish", 6)]
    # Relaunched once finished: nothing changes, run.json included.
    before = snapshot(workdir)
    assert command(capsys, f"--workdir={workdir}", *args).returncode == 0
    assert snapshot(workdir) == before


def test_a_sweep_point_gets_the_same_check(tmp_path, data_dir):
    npz, root = tmp_path / "data.npz", tmp_path / "sweep"
    digits_npz(npz)
    config, _ = config_and_args(f"npz:{npz}", data_dir)
    points = sweep.expand(config, sweep.grid(sweep.parse_spec("seed=0")), 8)
    sweep.run(points, str(root), stop_at_step=2)
    digits_npz(npz, n=150)
    point = root / points[0].name
    before = snapshot(point)
    with pytest.raises(ConfigError, match=r"file size [\d,]+ -> [\d,]+ bytes"):
        sweep.run(points, str(root))
    assert snapshot(point) == before


def test_eval_and_export_warn_with_both_fingerprints_on_other_data(tmp_path, data_dir, capsys):
    npz, workdir = tmp_path / "data.npz", tmp_path / "run"
    digits_npz(npz)
    config, _ = config_and_args(f"npz:{npz}", data_dir)
    training.run(config, str(workdir))
    recorded = fingerprint.describe(runrecord.read(str(workdir))["data"])
    capsys.readouterr()
    run_lib.run_eval(str(workdir))
    assert capsys.readouterr().err == ""  # the same data: nothing to say
    digits_npz(npz, flip=True)
    now = fingerprint.describe(fingerprint.of(config.data))
    warning = (f"warning: the data npz:{npz} is not the data the run in {workdir} recorded "
               f"(recorded: {recorded}; now: {now}): these numbers are on other data\n")
    run_lib.run_eval(str(workdir))
    assert capsys.readouterr().err == warning
    from cnnjax import export

    export.export(run_lib.load(str(workdir)), "stablehlo", out_dir=str(tmp_path / "out"))
    assert capsys.readouterr().err == warning


def test_folder_fingerprints_name_what_changed(tmp_path):
    root = tmp_path / "f"
    (root / "a").mkdir(parents=True)
    for i in range(3):
        (root / "a" / f"{i}.png").write_bytes(b"x" * (i + 1))
    (root / "a" / "notes.txt").write_text("not an image")

    def fp(mode="manifest"):
        return fingerprint._folder(str(root), "folder:f", mode == "content")

    first, content = fp(), fp("content")
    assert (first["images"], first["bytes"]) == (3, 6)
    (root / "a" / "notes.txt").write_text("the loader never reads it")
    assert fingerprint.same(first, fp())
    os.utime(root / "a" / "0.png", ns=(1, 1))  # touched: the manifest sees it, content does not
    assert fingerprint.changes(first, fp()) == "image files modified (other modification times)"
    assert fingerprint.same(content, fp("content"))
    (root / "a" / "0.png").write_bytes(b"y")  # the same size, other bytes
    assert fingerprint.changes(content, fp("content")) == "image content changed"
    os.rename(root / "a" / "2.png", root / "a" / "9.png")
    assert fingerprint.changes(first, fp()) == "the same number of images (3) under other names"


def test_a_prepared_tfds_dataset_fingerprints_its_splits(data_dir):
    from cnnjax.data.sources import prepare_builtin

    prepare_builtin("digits", data_dir)
    fp = fingerprint._tfds("digits", data_dir)
    assert fp["dataset"] == "digits/1.0.0" and fp["version"] == "1.0.0"
    assert {k: v["examples"] for k, v in fp["splits"].items()} == {"train": 1347, "test": 450}
    assert all(v["bytes"] > 0 for v in fp["splits"].values())
    other = {**fp, "splits": {**fp["splits"], "test": {**fp["splits"]["test"], "examples": 449}}}
    assert fingerprint.changes(fp, other) == "splits test=450,train=1347 -> test=449,train=1347"


@pytest.mark.e2e
def test_kill_replace_relaunch_with_launch_py(tmp_path, data_dir):
    """The sequence as a user meets it: launch.py killed (SIGKILL) after its first checkpoint,
    the npz replaced by the same digits flipped and reordered, the same command again."""
    import signal
    import subprocess
    import time

    from cnnjax.checkpoint import complete_steps
    from tests.helpers import ROOT

    npz, workdir = tmp_path / "data.npz", tmp_path / "run"
    digits_npz(npz)
    _, args = config_and_args(f"npz:{npz}", data_dir, **{"train.num_steps": "100",
                                                          "train.checkpoint_every_steps": "20"})
    cmd = [sys.executable, os.path.join(ROOT, "launch.py"), f"--workdir={workdir}", *args]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not complete_steps(str(workdir / "checkpoints")) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = complete_steps(str(workdir / "checkpoints"))
    assert saved and saved[-1] < 100
    digits_npz(npz, flip=True, seed=0)
    before = snapshot(workdir)
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    (line,) = again.stderr.strip().splitlines()
    assert line.startswith(f"error: the data npz:{npz} is not the data the run in {workdir} "
                           "was trained on (file hash sha256 ")
    assert snapshot(workdir) == before
    done = subprocess.run([*cmd, "--allow_data_change"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from {workdir}/checkpoints/{saved[-1]}" in done.stdout
    assert history(workdir) == [("start", 0), ("data_change", saved[-1]),
                                ("resume", saved[-1]), ("finish", 100)]
