"""Metric writers: the three built in are one interface, and a writer of one's own, plugged
in from a config file, is told exactly what metrics.jsonl records."""

import json
import textwrap

from cnnjax import metrics, tensorboard
from tests.helpers import command

TINY_OVERRIDES = ["--config.train.num_steps=4", "--config.train.plots=False",
                  "--config.model.features=(8,16)", "--config.model.dense=(32,)"]

CONFIG_FILE = '''
import json, os

from cnnjax import config, metrics


class CallLog:
    """Writes each call it gets, as a JSON line, to W/calls.jsonl."""

    def __init__(self, run):
        self.path = os.path.join(run.workdir, "calls.jsonl")
        self.call("init", {"start_step": run.start_step, "total_steps": run.total_steps,
                           "steps_per_epoch": run.steps_per_epoch,
                           "batch_size": run.batch_size})

    def call(self, name, *args):
        with open(self.path, "a") as f:
            f.write(json.dumps([name, *args]) + "\\n")

    def write_scalars(self, step, values):
        self.call("write_scalars", step, values)

    def write_hparams(self, config):
        self.call("write_hparams", config)

    def close(self):
        self.call("close")


metrics.WRITERS["calls"] = CallLog


def get_config():
    c = config.defaults()
    c.train.writers = "jsonl,calls"
    return c
'''


def test_a_writer_from_a_config_file_gets_what_metrics_jsonl_records(tmp_path, data_dir,
                                                                    capsys):
    config_file = tmp_path / "with_writer.py"
    config_file.write_text(textwrap.dedent(CONFIG_FILE))
    workdir = tmp_path / "w"
    result = command(capsys, f"--config={config_file}", f"--workdir={workdir}",
                     "--config.train.log_every_steps=2", *TINY_OVERRIDES,
                     env={"TFDS_DATA_DIR": data_dir})
    assert result.returncode == 0, result.stderr[-3000:]
    calls = [json.loads(line) for line in open(workdir / "calls.jsonl")]
    recorded = metrics.read_jsonl(str(workdir / "metrics.jsonl"))
    with open(workdir / "config.json") as f:
        config = json.load(f)
    spe = recorded[-1]["step"] / recorded[-1]["epoch"]
    assert calls[0] == ["init", {"start_step": 0, "total_steps": 4, "steps_per_epoch": round(spe),
                                 "batch_size": config["data"]["batch_size"]}]
    assert calls[1] == ["write_hparams", config]
    assert [{"step": step, **values} for _, step, values in calls[2:-1]] == recorded
    assert [c[0] for c in calls[2:-1]] == ["write_scalars"] * len(recorded) and len(recorded) >= 2
    assert calls[-1] == ["close"]
    # Without "progress" the run prints no per-step lines; without "tensorboard", no events.
    assert not any(line.startswith("step ") for line in result.stdout.splitlines())
    assert result.stdout.splitlines()[-1].startswith("done: test accuracy")
    assert not (workdir / "tensorboard").exists()


def test_the_built_in_writers_share_the_interface(tmp_path):
    run = metrics.RunInfo(str(tmp_path), start_step=0, total_steps=4, steps_per_epoch=2,
                          batch_size=8)
    writers = metrics.Writers("jsonl,tensorboard,progress", run)
    writers.write_hparams({"seed": 0})
    writers.write_scalars(2, {"epoch": 1.0, "train_loss": 0.5})
    writers.close()
    assert metrics.read_jsonl(metrics.metrics_path(str(tmp_path))) == [
        {"step": 2, "epoch": 1.0, "train_loss": 0.5}]
    assert tensorboard.read_scalars(str(tmp_path / "tensorboard")) == {
        "epoch": [(2, 1.0)], "train/loss": [(2, 0.5)]}
    for factory in metrics.WRITERS.values():
        assert all(callable(getattr(factory, m)) for m in ("write_scalars", "write_hparams",
                                                            "close"))
