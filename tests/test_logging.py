"""TensorBoard event files (checked against the protobuf runtime) and the progress bar."""

import io
import os

import jax.numpy as jnp
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from cnnjax import tensorboard
from cnnjax.metrics import read_jsonl
from cnnjax.progress import ProgressBar
from tests.runs import tiny_run  # noqa: F401 (a fixture)


def _event_class():
    """``Event`` with the field numbers of TensorFlow's event.proto and summary.proto, built
    at run time, so that the official protobuf parser checks our hand-written encoding."""
    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="tb_check.proto", package="tbcheck")
    value = proto.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=f.TYPE_FLOAT, label=f.LABEL_OPTIONAL)
    summary = proto.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED,
                      type_name=".tbcheck.Value")
    event = proto.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=f.TYPE_DOUBLE, label=f.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=f.TYPE_INT64, label=f.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=f.TYPE_MESSAGE, label=f.LABEL_OPTIONAL,
                    type_name=".tbcheck.Summary")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tbcheck.Event"))


def test_crc32c_matches_the_standard_check_value():
    assert tensorboard.crc32c(b"123456789") == 0xE3069283
    assert tensorboard.crc32c(b"") == 0


def test_event_files_parse_with_protobuf_and_read_back(tmp_path):
    writer = tensorboard.EventWriter(str(tmp_path))
    writer.write({"step": 5, "train_loss": 2.5, "learning_rate": 0.1, "name": "x"})
    writer.write({"step": 2**40, "eval_accuracy": 0.75})
    writer.close()
    (path,) = [os.path.join(tmp_path, p) for p in os.listdir(tmp_path)]
    assert os.path.basename(path).startswith("events.out.tfevents.")

    event_cls = _event_class()
    events = [event_cls.FromString(r) for r in tensorboard.read_records(path)]
    assert events[0].file_version == "brain.Event:2"
    assert [e.step for e in events[1:]] == [5, 2**40]
    assert {v.tag: v.simple_value for v in events[1].summary.value} == {
        "train/loss": 2.5, "learning_rate": np.float32(0.1)}
    assert events[2].summary.value[0].tag == "eval/accuracy"

    scalars = tensorboard.read_scalars(str(tmp_path))
    assert scalars == {"train/loss": [(5, 2.5)], "learning_rate": [(5, np.float32(0.1))],
                       "eval/accuracy": [(2**40, 0.75)]}


def test_a_corrupt_record_is_detected(tmp_path):
    writer = tensorboard.EventWriter(str(tmp_path))
    writer.write({"step": 1, "train_loss": 1.0})
    writer.close()
    data = bytearray(open(writer.path, "rb").read())
    data[-6] ^= 0xFF  # inside the last record's payload
    open(writer.path, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        tensorboard.read_scalars(str(tmp_path))


def test_a_resumed_writer_replaces_the_old_files_with_the_kept_records(tmp_path):
    first = tensorboard.EventWriter(str(tmp_path))
    for step in (1, 2, 3):
        first.write({"step": step, "train_loss": float(step)})
    first.close()
    resumed = tensorboard.EventWriter(str(tmp_path), replay=[{"step": 1, "train_loss": 1.0}])
    resumed.write({"step": 2, "train_loss": 20.0})
    resumed.close()
    assert len(os.listdir(tmp_path)) == 1
    assert tensorboard.read_scalars(str(tmp_path)) == {"train/loss": [(1, 1.0), (2, 20.0)]}


def test_a_run_mirrors_metrics_jsonl_in_tensorboard(tiny_run):  # noqa: F811
    workdir, _, _ = tiny_run
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    scalars = tensorboard.read_scalars(os.path.join(workdir, "tensorboard"))
    for key, tag in (("train_loss", "train/loss"), ("eval_accuracy", "eval/accuracy"),
                     ("learning_rate", "learning_rate"), ("images_per_sec", "images_per_sec")):
        expected = [(r["step"], np.float32(r[key])) for r in records if key in r]
        assert scalars[tag] == expected


class _Terminal(io.StringIO):
    def isatty(self):
        return True


class _Unreadable:
    def __float__(self):
        raise AssertionError("the bar read a metric off a terminal")


def test_progress_bar_is_silent_and_free_off_a_terminal():
    stream = io.StringIO()
    bar = ProgressBar(total_steps=100, steps_per_epoch=10, batch_size=32, stream=stream,
                      min_interval_s=0)
    for step in range(1, 101):
        bar.update(step, {"loss": _Unreadable(), "accuracy": _Unreadable()})
    bar.print("step 100/100  loss 0.1")
    bar.close()
    assert stream.getvalue() == "step 100/100  loss 0.1\n"


def test_progress_bar_on_a_terminal_shows_epoch_metrics_rates_and_eta():
    stream = _Terminal()
    bar = ProgressBar(total_steps=30, steps_per_epoch=10, batch_size=32, stream=stream,
                      min_interval_s=0)
    for step in range(1, 16):
        bar.update(step, {"loss": jnp.float32(0.5), "accuracy": jnp.float32(0.25)})
    line = stream.getvalue().split("\r\x1b[K")[-1]
    for part in ("epoch 2/3", "5/10", "loss 0.5000", "acc 0.2500", "step/s", "img/s", "ETA"):
        assert part in line, line
    bar.print("a log line")
    bar.close()
    assert stream.getvalue().endswith("\r\x1b[Ka log line\n")


def test_training_output_off_a_terminal_is_one_line_per_log_step(tiny_run):  # noqa: F811
    _, _, out = tiny_run
    assert "\r" not in out and "\x1b" not in out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["5/20", "10/20", "15/20", "20/20"]
