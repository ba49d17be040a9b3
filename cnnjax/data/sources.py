"""Opening a dataset by name: TFDS datasets, ``npz:`` files and ``folder:`` directories.

Whatever the origin, a dataset opens as a ``Source``: two random-access record sets (train
and eval) whose records are ``{"image": [h, w, c] uint8, "label": int}``, the number of
classes, and the ``catalog.DatasetSpec`` that says how to frame its images. Opening is cheap
(metadata and file headers, no image data), so a missing or unprepared dataset fails before
any expensive work, with a one-line ``ConfigError``.

TFDS datasets are read with ``tfds.data_source`` (ArrayRecord files, random access, images
decoded by TFDS with PIL): no TensorFlow at train time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import os
from typing import Any, Protocol

import numpy as np
from absl import logging

from cnnjax.data import catalog
from cnnjax.errors import ConfigError, first_line

# Datasets whose builder ships in cnnjax: name -> module that registers the builder.
BUILTIN = {"digits": "cnnjax.data.builders.digits"}


class DataNotPreparedError(ConfigError):
    """A TFDS dataset that has not been prepared (as ArrayRecord) in the data_dir searched."""


class CorruptImageError(ConfigError):
    """An image file that cannot be decoded; the message names the file."""


class Records(Protocol):
    """Random access to ``{"image": [h, w, c] uint8, "label": int}`` records.

    Picklable (the streaming loader sends it to its worker processes), with a ``repr`` that
    names the data and not the process (Grain checks it when a data position is restored).
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class Source:
    """An opened dataset.

    Attributes:
      name: as configured (``mnist``, ``npz:/data/x.npz``, ``folder:/data/pets``).
      train, eval: the record sets.
      num_classes: labels are ``0 .. num_classes - 1``.
      native_shape: ``(height, width, channels)`` when every image has it, else ``None``.
      channels: channels of the images the model sees.
      spec: eval split, training size, framing and normalisation (see ``catalog``).
      eval_split: the name of the split evaluated on, for messages.
    """

    name: str
    train: Records
    eval: Records
    num_classes: int
    native_shape: tuple[int, int, int] | None
    channels: int
    spec: catalog.DatasetSpec
    eval_split: str = "test"


class ArrayRecords:
    """Records held in host memory as ``[n, h, w, c] uint8`` images and ``[n]`` labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, name: str):
        self.images, self.labels, self.name = images, labels.astype(np.int32), name

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": int(self.labels[index])}

    def __repr__(self) -> str:
        return f"ArrayRecords({self.name!r}, n={len(self)})"


class TfdsRecords:
    """A ``tfds.data_source`` split seen as ``Records``: its image and label features only.

    ``encoded`` (for image features stored encoded, ``tfds.features.Image``) reads a record's
    image bytes undecoded, through a second data source with ``SkipDecoding``."""

    def __init__(self, source: Any, name: str, split: str, image_key: str, label_key: str,
                 data_dir: str | None = None):
        """``data_dir``: where the split can be opened with its images undecoded (None: the
        images are stored as arrays, or the source cannot skip decoding)."""
        self._source, self.name, self.split = source, name, split
        self._image_key, self._label_key = image_key, label_key
        self._data_dir, self._encoded = data_dir, None
        if data_dir is None:
            self.encoded = None  # nothing to decode

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._source[int(index)]
        image = np.asarray(record[self._image_key])
        if image.ndim == 2:
            image = image[..., None]
        return {"image": image, "label": int(record[self._label_key])}

    def encoded(self, index: int) -> dict[str, Any]:
        if self._encoded is None:
            self._encoded = _skip_decoding(self.name, self.split, self._data_dir,
                                           self._image_key)
        record = self._encoded[int(index)]
        return {"encoded": record[self._image_key], "label": int(record[self._label_key]),
                "name": f"{self.name}/{self.split}[{index}]"}

    def __getstate__(self) -> dict[str, Any]:  # to a worker process: the sources reopen there
        return {**self.__dict__, "_encoded": None}

    def __repr__(self) -> str:
        return f"TfdsRecords({self.name!r}, split={self.split!r})"


def resolve_data_dir(data_dir: str) -> str:
    """An empty ``data_dir`` means TFDS's default (``$TFDS_DATA_DIR`` or ~/tensorflow_datasets)."""
    if data_dir:
        return os.path.expanduser(data_dir)
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def prepare_command(name: str, data_dir: str) -> str:
    return f"python -m cnnjax.data.prepare --name={name} --data_dir={data_dir}"


def prepare_builtin(name: str, data_dir: str) -> None:
    """Prepares a dataset that ships with cnnjax (offline, no TensorFlow) unless it is ready."""
    import tensorflow_datasets as tfds  # 1 s to import: only once a dataset is opened

    importlib.import_module(BUILTIN[name])
    try:
        _prepare_quietly(tfds, name, data_dir)
    except OSError as e:
        raise ConfigError(
            f"cannot prepare {name} in {data_dir} ({e.strerror or e}); pass a writable "
            "--config.data.data_dir (or set $TFDS_DATA_DIR)") from None


def _prepare_quietly(tfds, name: str, data_dir: str) -> None:
    with _quiet():
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
        if builder.is_prepared():
            return
        print(f"preparing {name} in {builder.data_dir} (once)", flush=True)
        tfds.disable_progress_bar()
        with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints sizes it does not know
            builder.download_and_prepare()


def open_tfds(name: str, data_dir: str = "") -> Source:
    """Opens a prepared TFDS image-classification dataset; raises ``DataNotPreparedError``."""
    import tensorflow_datasets as tfds

    data_dir = resolve_data_dir(data_dir)
    if name in BUILTIN:
        prepare_builtin(name, data_dir)
    try:
        with _quiet():
            builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ConfigError(
            f"unknown dataset {name!r}: not in the TFDS catalog "
            "(https://www.tensorflow.org/datasets/catalog); for your own images use "
            "--config.data.name=npz:/path/file.npz or folder:/path/dir"
        ) from None
    except Exception as e:  # noqa: BLE001 -- a malformed name/config/version: one line
        first = first_line(e)
        raise ConfigError(f"data.name={name!r} cannot be opened by TFDS ({first[:200]}); "
                          "give a dataset name such as mnist or cifar10, optionally with "
                          "/config and :version") from None
    info = builder.info
    image_key, label_key = _supervised_keys(name, info)
    image_shape = tuple(info.features[image_key].shape)
    fixed = None not in image_shape
    spec = catalog.lookup(name) or catalog.fallback(fixed)
    eval_split = spec.eval_split or catalog.eval_split_from(list(info.splits.keys()))
    train_split = "train[:90%]" if eval_split == "train[90%:]" else "train"

    def open_split(split: str, undecoded: bool) -> TfdsRecords:
        try:
            with _quiet():
                source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # noqa: BLE001 - TFDS raises several types for a missing dataset
            with _quiet():
                prepared, searched = builder.is_prepared(), builder.data_dir
            if not prepared:
                raise DataNotPreparedError(
                    f"dataset {name!r} is not prepared in {data_dir} (searched "
                    f"{searched}); prepare it once with: "
                    f"{prepare_command(name, data_dir)}"
                ) from None
            first = first_line(e)
            raise ConfigError(
                f"split {split!r} of dataset {name!r} in {data_dir} cannot be read with "
                f"tfds.data_source ({first}); it must be prepared as ArrayRecord: "
                f"{prepare_command(name, data_dir)}"
            ) from None
        encoded = undecoded and _can_skip_decoding(tfds, name, split, data_dir, info, image_key)
        return TfdsRecords(source, name, split, image_key, label_key,
                           data_dir if encoded else None)

    # Only training reads images undecoded (evaluation frames decoded records).
    train, evals = open_split(train_split, True), open_split(eval_split, False)
    channels = image_shape[-1] if image_shape and image_shape[-1] else 3
    return Source(
        name=name, train=train, eval=evals,
        num_classes=int(info.features[label_key].num_classes),
        native_shape=image_shape if fixed else None,
        channels=int(channels), spec=spec, eval_split=eval_split,
    )


def _skip_decoding(name: str, split: str, data_dir: str, image_key: str):
    import tensorflow_datasets as tfds

    return tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                            decoders={image_key: tfds.decode.SkipDecoding()})


def _can_skip_decoding(tfds, name: str, split: str, data_dir: str, info, image_key: str):
    """Whether the split's images are stored encoded and can be read so (not with TFDS's
    mock data, which encodes with TensorFlow)."""
    if not isinstance(info.features[image_key], tfds.features.Image):
        return False
    try:
        with _quiet():
            first = _skip_decoding(name, split, data_dir, image_key)[0][image_key]
    except Exception:  # noqa: BLE001 - then the decoded records serve
        return False
    return isinstance(first, bytes)


@contextlib.contextmanager
def _quiet():
    """TFDS warns about each missing folder; the one-line error that follows says it all."""
    level = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _supervised_keys(name: str, info) -> tuple[str, str]:
    keys = info.supervised_keys
    image_key, label_key = keys if keys and len(keys) == 2 else ("image", "label")
    features = info.features
    ok = isinstance(image_key, str) and isinstance(label_key, str) and image_key in features
    ok = ok and label_key in features and hasattr(features[label_key], "num_classes")
    if not ok or len(getattr(features[image_key], "shape", ())) != 3:
        raise ConfigError(
            f"dataset {name!r} is not an image-classification dataset (it needs an image "
            f"feature and a class label; its features are: {', '.join(features.keys())})"
        )
    return image_key, label_key
