"""Prepares a TFDS dataset once, as ArrayRecord, for training with cnnjax.

    python -m cnnjax.data.prepare --name=cifar10 [--data_dir=DIR]
    python -m cnnjax.data.prepare --name=imagenet2012 --manual_dir=DIR_WITH_THE_TARS

This is TFDS's own ``download_and_prepare(file_format='array_record')``. Datasets whose images
TFDS stores PNG- or JPEG-encoded (nearly all image datasets) need TensorFlow for this one step,
to encode them: ``pip install tensorflow``. Training reads the prepared files with
``tfds.data_source`` and does not need TensorFlow.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

_NAME = flags.DEFINE_string("name", None, "TFDS dataset name, e.g. cifar10 or imagenet2012.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", "", "TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)."
)
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Where manually downloaded files are (imagenet2012's tar files)."
)


def prepare(name: str, data_dir: str = "", manual_dir: str | None = None) -> str:
    """Downloads and prepares ``name`` as ArrayRecord; returns the prepared directory."""
    import tensorflow_datasets as tfds

    from cnnjax.data import sources

    data_dir = sources.resolve_data_dir(data_dir)
    if name in sources.BUILTIN:
        sources.prepare_builtin(name, data_dir)
        return tfds.builder(name, data_dir=data_dir).data_dir
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    builder.download_and_prepare(download_config=config, file_format="array_record")
    return builder.data_dir


def _one_line(name: str, error: Exception) -> str:
    text = str(error).strip()
    chain, cause = [], error
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(c, ImportError) and "tensorflow" in str(c) for c in chain):
        return (
            f"preparing {name} needs TensorFlow to encode its images: pip install tensorflow "
            "(training does not need it)"
        )
    first = text.splitlines()[0] if text else type(error).__name__
    return f"preparing {name} failed: {type(error).__name__}: {first}"


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _NAME.value:
        raise app.UsageError("--name is required, e.g. --name=cifar10")
    logging.set_verbosity(logging.WARNING)  # TFDS logs every file it touches at INFO
    try:
        path = prepare(_NAME.value, _DATA_DIR.value, _MANUAL_DIR.value)
    except Exception as e:  # noqa: BLE001 - one line for the user; the cause is chained
        print(f"error: {_one_line(_NAME.value, e)}", file=sys.stderr)
        return 2
    print(f"prepared {_NAME.value} in {path}")
    return 0


if __name__ == "__main__":
    app.run(main)
