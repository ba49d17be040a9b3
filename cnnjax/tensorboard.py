"""TensorBoard event files for scalar metrics, written without TensorFlow or extra packages.

An event file is a sequence of TFRecords (``uint64 length``, ``masked crc32c(length)``,
``data``, ``masked crc32c(data)``, little-endian); each record is a serialized ``Event``
protocol buffer (``tensorflow/core/util/event.proto``). A scalar is
``Event{wall_time=1, step=2, summary=5: Summary{value=1: Value{tag=1, simple_value=2}}}``, so a
few lines of protobuf wire encoding write what TensorBoard reads.

Why not a library: ``tensorboardX`` imports PyTorch when it is installed (seconds of start-up
and a second framework in every run), and ``tensorboard``'s writer needs TensorFlow. The
format is small and frozen; ``read_scalars`` reads it back, checking every checksum.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from typing import Any

from flax.traverse_util import flatten_dict


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord uses."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 fields: negatives as two's complement, ten bytes
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def encode_event(
    step: int, wall_time: float, scalars: dict[str, float] | None = None,
    file_version: str | None = None, values: bytes = b"",
) -> bytes:
    """A serialized ``Event`` with ``scalars`` as ``simple_value`` summary values (and
    ``values``, serialized ``Summary.Value`` fields, as they are)."""
    out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    values += b"".join(
        _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", v)))
        for tag, v in (scalars or {}).items()
    )
    if values:
        out += _bytes_field(5, values)
    return out


# TensorBoard's HParams plugin (tensorboard/plugins/hparams/plugin_data.proto): a run's
# hyperparameters are a summary value tagged `_hparams_/session_start_info` whose metadata
# names the plugin and carries `HParamsPluginData{version=1: 0, session_start_info=3:
# SessionStartInfo{hparams=1: map<string, google.protobuf.Value>, start_time_secs=5}}`; the
# end of the run is `session_end_info=4: SessionEndInfo{status=1, end_time_secs=2}`. The
# plugin infers the experiment (the hparams and the scalar metrics) from the runs.
_SESSION_START, _SESSION_END = "_hparams_/session_start_info", "_hparams_/session_end_info"
STATUS_SUCCESS = 1
_NULL_TENSOR = _field(1, 0, _varint(1)) + _bytes_field(2, b"") + _bytes_field(5, struct.pack(
    "<f", 0.0))  # TensorProto{dtype=DT_FLOAT, tensor_shape={}, float_val=[0]}, as TB writes


def _protobuf_value(value: Any) -> bytes:
    """A ``google.protobuf.Value``: number, string or bool (anything else as its JSON)."""
    if isinstance(value, bool):
        return _field(4, 0, _varint(int(value)))
    if isinstance(value, (int, float)):
        return _field(2, 1, struct.pack("<d", float(value)))
    text = value if isinstance(value, str) else json.dumps(value)
    return _bytes_field(3, text.encode())


def _plugin_value(tag: str, plugin_data: bytes) -> bytes:
    plugin = _bytes_field(1, b"hparams") + _bytes_field(2, plugin_data)
    return _bytes_field(1, tag.encode()) + _bytes_field(9, _bytes_field(1, plugin)) + \
        _bytes_field(8, _NULL_TENSOR)


def encode_hparams(hparams: dict[str, Any], start_time: float) -> bytes:
    """The ``Summary.Value`` of a run's hyperparameters (flat ``{name: value}``)."""
    entries = b"".join(_bytes_field(1, _bytes_field(1, k.encode()) + _bytes_field(
        2, _protobuf_value(v))) for k, v in hparams.items())
    start = entries + _field(5, 1, struct.pack("<d", start_time))
    return _plugin_value(_SESSION_START, _field(1, 0, _varint(0)) + _bytes_field(3, start))


def encode_session_end(status: int, end_time: float) -> bytes:
    end = _field(1, 0, _varint(status)) + _field(2, 1, struct.pack("<d", end_time))
    return _plugin_value(_SESSION_END, _field(1, 0, _varint(0)) + _bytes_field(4, end))


def frame(data: bytes) -> bytes:
    """``data`` as one TFRecord."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack(
        "<I", _masked_crc(data)
    )


def tag_of(key: str) -> str:
    """``train_loss`` -> ``train/loss``, ``eval_accuracy`` -> ``eval/accuracy``: one section
    per prefix in TensorBoard; other keys are kept as they are."""
    for prefix in ("train_", "eval_"):
        if key.startswith(prefix):
            return prefix[:-1] + "/" + key[len(prefix):]
    return key


class EventWriter:
    """Writes metric records (``{"step": s, name: value, ...}``) to ``directory`` as scalars.

    The directory mirrors ``metrics.jsonl``: event files already there are removed and
    ``replay`` (the records a resumed run keeps) is written first, so a resumed run shows one
    uninterrupted curve, without the steps that the interruption discarded.
    """

    def __init__(self, directory: str, replay: Iterable[dict[str, Any]] = ()):
        os.makedirs(directory, exist_ok=True)
        for old in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
            os.remove(old)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(directory, name)
        self._file = open(self.path, "wb")  # noqa: SIM115 (kept open for the whole run)
        self._file.write(frame(encode_event(0, time.time(), file_version="brain.Event:2")))
        for record in replay:
            self.write(record)
        self._file.flush()

    def write(self, record: dict[str, Any]) -> None:
        scalars = {
            tag_of(k): float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self._file.write(frame(encode_event(int(record["step"]), time.time(), scalars)))
        self._file.flush()  # TensorBoard reads while the run goes on

    def write_hparams(self, config: dict[str, Any]) -> None:
        """The run's config as TensorBoard hyperparameters (``optimizer.learning_rate``, ...)."""
        self._write_value(0, encode_hparams(flatten_dict(config, sep="."), time.time()))

    def write_session_end(self, step: int) -> None:
        self._write_value(step, encode_session_end(STATUS_SUCCESS, time.time()))

    def _write_value(self, step: int, value: bytes) -> None:
        self._file.write(frame(encode_event(step, time.time(), values=_bytes_field(1, value))))
        self._file.flush()

    def close(self) -> None:
        self._file.close()



# ------------------------------------------------------------------------------ reading


def read_records(path: str) -> Iterator[bytes]:
    """The payloads of the TFRecords in ``path``; raises ``ValueError`` on a bad checksum."""
    with open(path, "rb") as f:
        while header := f.read(12):
            length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
            if _masked_crc(length_bytes) != length_crc:
                raise ValueError(f"{path}: corrupt record length")
            data = f.read(struct.unpack("<Q", length_bytes)[0])
            if _masked_crc(data) != struct.unpack("<I", f.read(4))[0]:
                raise ValueError(f"{path}: corrupt record")
            yield data


def _parse(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message, non-recursively."""
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        elif wire == 2:
            n, i = _read_varint(data, i)
            value, i = data[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[i]
        result |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return result, i


def read_scalars(directory: str) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from every event file in ``directory``."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        for record in read_records(path):
            fields = list(_parse(record))
            step = next((v for n, _, v in fields if n == 2), 0)
            for n, _, summary in fields:
                if n != 5:
                    continue
                for _, _, value in _parse(summary):
                    parts = {num: v for num, _, v in _parse(value)}
                    if 2 in parts:
                        tag = parts[1].decode()
                        scalars.setdefault(tag, []).append(
                            (step, struct.unpack("<f", parts[2])[0])
                        )
    return scalars
