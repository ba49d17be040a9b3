"""Prepares a TFDS dataset once, as ArrayRecord, for training with cnnjax.

    python -m cnnjax.data.prepare --name=cifar10 [--data_dir=DIR]
    python -m cnnjax.data.prepare --name=imagenet2012 --manual_dir=DIR_WITH_THE_TARS

This is TFDS's own ``download_and_prepare(file_format='array_record')``. Datasets whose images
TFDS stores PNG- or JPEG-encoded (nearly all image datasets) need TensorFlow for this one step,
to encode them: ``pip install tensorflow``. Training reads the prepared files with
``tfds.data_source`` and does not need TensorFlow.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.parse

from absl import app, flags, logging

from cnnjax import signals
from cnnjax.data import sources
from cnnjax.errors import ConfigError, first_line

PROBE_TIMEOUT_S = 10.0  # per host: an unreachable network answers within this, or never

_NAME = flags.DEFINE_string("name", None, "TFDS dataset name, e.g. cifar10 or imagenet2012.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", "", "TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)."
)
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Where manually downloaded files are (imagenet2012's tar files)."
)


def prepare(name: str, data_dir: str = "", manual_dir: str | None = None) -> str:
    """Downloads and prepares ``name`` as ArrayRecord; returns the prepared directory."""
    import tensorflow_datasets as tfds  # 1 s to import: only once a command needs it

    data_dir = sources.resolve_data_dir(data_dir)
    if name in sources.BUILTIN:
        sources.prepare_builtin(name, data_dir)
        return tfds.builder(name, data_dir=data_dir).data_dir
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared() and not manual_dir:
        check_network(name, builder, data_dir)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    builder.download_and_prepare(download_config=config, file_format="array_record")
    return builder.data_dir


def check_network(name: str, builder, data_dir: str) -> None:
    """Raises ``ConfigError`` within seconds when the hosts ``name`` downloads from are out of
    reach (TFDS itself would retry for minutes). Behind a proxy it trusts the proxy."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    hosts = sorted({urllib.parse.urlparse(u).hostname for u in (builder.url_infos or {})} - {None})
    error: OSError | None = None
    for host in hosts[:3]:
        try:
            socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S).close()
            return
        except OSError as e:
            error = e
    if error is not None:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise ConfigError(
            f"preparing {name} downloads its files from {hosts[0]}, which this machine cannot "
            f"reach ({reason}): preparing it needs network access. Without it, run this "
            f"command on a machine that has it and copy the prepared folder "
            f"{os.path.join(data_dir, name)} to the same place here")


def _one_line(name: str, error: Exception) -> str:
    chain, cause = [], error
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(c, ImportError) and "tensorflow" in str(c) for c in chain):
        return (
            f"preparing {name} needs TensorFlow to encode its images: pip install tensorflow "
            "(training does not need it)"
        )
    return f"preparing {name} failed: {type(error).__name__}: {first_line(error)}"


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print(f"error: unexpected arguments: {' '.join(argv[1:])}; flags take the form "
              "--name=value", file=sys.stderr)
        return 2
    if not _NAME.value:
        print("error: --name is required, e.g. --name=cifar10", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.ERROR)  # TFDS logs every file it touches; the error says it all
    try:
        path = prepare(_NAME.value, _DATA_DIR.value, _MANUAL_DIR.value)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one line for the user; the cause is chained
        print(f"error: {_one_line(_NAME.value, e)}", file=sys.stderr)
        return 2
    print(f"prepared {_NAME.value} in {path}")
    return 0


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {first_line(e)}; see --helpfull", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    signals.install()  # Ctrl-C during a download: one line, no traceback
    app.run(main, flags_parser=_parse_flags)
