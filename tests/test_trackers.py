"""The trackers as metric writers, offline, read back with each tracker's own reader: W&B's
run file (its protobuf records), MLflow's client over a local file store, TensorBoard's event
accumulator and HParams protos. One run is interrupted and resumed, so each check also sees
that the resumed run continued the same tracker run."""

import glob
import json
import os
import struct

import pytest
from flax.traverse_util import flatten_dict

from cnnjax import metrics, training
from cnnjax.errors import ConfigError
from tests.helpers import tiny_config

LOG_STEPS = [5, 10, 15, 20]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, data_dir):
    """A run with every tracker on, stopped at step 10 and resumed to the end."""
    root = tmp_path_factory.mktemp("tracked")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_ALLOW_FILE_STORE": "true",
           "WANDB_DIR": str(root / "wandb_home"), "WANDB_CACHE_DIR": str(root / "wandb_cache"),
           "WANDB_CONFIG_DIR": str(root / "wandb_config")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    config = tiny_config(data_dir)
    with config.unlocked():
        config.logging.wandb.project = "cnnjax-tests"
        config.logging.mlflow.experiment = "cnnjax-tests"
        config.logging.mlflow.tracking_uri = (root / "mlruns").as_uri()
    workdir = str(root / "run")
    try:
        assert training.run(config, workdir, stop_at_step=10)["step"] == 10
        ids = json.load(open(os.path.join(workdir, "trackers.json")))
        summary = training.run(config, workdir)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"workdir": workdir, "ids_after_stop": ids, "summary": summary,
            "mlruns": (root / "mlruns").as_uri(), "config": json.load(
                open(os.path.join(workdir, "config.json")))}


def _wandb_records(path):
    """The protobuf records of a W&B run file: a 7-byte header (":W&B", magic, version), then
    LevelDB-log blocks of 32 KiB, each record ``crc32 (4), length (2), type (1), data``."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_files_hold_the_run_and_the_resume_continues_it(tracked):
    workdir = tracked["workdir"]
    run_id = tracked["ids_after_stop"]["wandb"]
    assert json.load(open(os.path.join(workdir, "trackers.json")))["wandb"] == run_id
    run_files = sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb")))
    assert len(run_files) == 2  # the first launch and the resume: one run id
    assert all(os.path.basename(f) == f"run-{run_id}.wandb" for f in run_files)
    history, config, summary = {}, {}, {}
    for path in run_files:
        for record in _wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                assert record.run.run_id == run_id and record.run.project == "cnnjax-tests"
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                       for i in record.history.item}
                history.setdefault(row["_step"], {}).update(row)
            elif kind == "config":
                for item in record.config.update:
                    config[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
            elif kind == "summary":
                for item in record.summary.update:
                    summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    expected = {r["step"]: r for r in metrics.read_jsonl(metrics.metrics_path(workdir))}
    assert sorted(expected) == LOG_STEPS
    for step, record in expected.items():
        for key in ("train_loss", "eval_accuracy", "learning_rate"):
            if key in record:
                assert history[step][key] == pytest.approx(record[key], rel=1e-6), (step, key)
    assert config == tracked["config"]  # the config as hyperparameters, section by section
    assert summary["final/eval_accuracy"] == tracked["summary"]["eval_accuracy"]
    assert summary["final/step"] == 20
    assert {"plots/curves/_type", "plots/confusion_matrix/_type"} <= set(summary)
    images = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "files", "media",
                                    "images", "plots", "*.png"))
    assert {os.path.basename(p).split("_20_")[0] for p in images} >= {"curves",
                                                                      "confusion_matrix"}


def test_mlflow_reads_back_one_run_with_every_metric_param_summary_and_plot(tracked):
    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        client = MlflowClient(tracking_uri=tracked["mlruns"])
        experiment = client.get_experiment_by_name("cnnjax-tests")
        runs = client.search_runs([experiment.experiment_id])
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
    assert len(runs) == 1  # the resume continued the run
    run = runs[0]
    assert run.info.run_id == tracked["ids_after_stop"]["mlflow"]
    assert run.info.status == "FINISHED"
    expected = {r["step"]: r for r in metrics.read_jsonl(metrics.metrics_path(tracked["workdir"]))}
    client = MlflowClient(tracking_uri=tracked["mlruns"])
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        history = client.get_metric_history(run.info.run_id, "train_loss")
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        summary = client.download_artifacts(run.info.run_id, "summary.json",
                                            tracked["workdir"] + "/mlflow_download")
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
    by_step = {}
    for m in history:
        by_step.setdefault(m.step, set()).add(m.value)
    assert sorted(by_step) == LOG_STEPS
    for step, values in by_step.items():  # a step logged again after the resume: same value
        assert all(v == pytest.approx(expected[step]["train_loss"], rel=1e-6) for v in values)
    flat = flatten_dict(tracked["config"], sep=".")
    assert run.data.params["optimizer.learning_rate"] == json.dumps(flat[
        "optimizer.learning_rate"])
    assert run.data.params["data.name"] == "digits"
    assert set(run.data.params) == set(flat)
    assert "summary.json" in artifacts
    assert json.load(open(summary))["eval_accuracy"] == tracked["summary"]["eval_accuracy"]
    assert {"plots/curves.png", "plots/confusion_matrix.png"} <= plots


def test_tensorboard_hparams_are_the_config_and_the_run_ends_successfully(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    events = EventAccumulator(os.path.join(tracked["workdir"], "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    end = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_end_info"]).session_end_info
    flat = flatten_dict(tracked["config"], sep=".")
    assert set(start.hparams) == set(flat)
    assert start.hparams["optimizer.learning_rate"].number_value == 0.05
    assert start.hparams["data.name"].string_value == "digits"
    assert start.hparams["data.flip"].bool_value is False
    assert json.loads(start.hparams["model.features"].string_value) == [8, 16]
    assert end.status == api_pb2.Status.Value("STATUS_SUCCESS")
    assert {"train/loss", "eval/accuracy"} <= set(events.Tags()["scalars"])


def test_a_tracker_in_writers_without_its_settings_is_refused_in_one_line(data_dir):
    from cnnjax.config import validate

    config = tiny_config(data_dir, writers="jsonl,wandb")
    with pytest.raises(ConfigError, match=r"train.writers names 'wandb', which needs "
                                          r"--config.logging.wandb.project=NAME"):
        validate(config)
