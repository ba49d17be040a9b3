"""Runs launch.py with the disk filling up at a chosen moment, as on a small filesystem.

    python tests/diskfull.py --at=MOMENT -- <launch.py flags>

The writes fail as they do on a full disk, where they do: Orbax's array writes as
tensorstore reports it (a ``ValueError`` carrying ``RESOURCE_EXHAUSTED`` and the OS error
code), in Orbax's background threads; Python's own writes with ``OSError(ENOSPC)``, after
part of the content is written. Moments:
  checkpoint:N  the arrays of checkpoint N (in W/checkpoints)
  best:N        the arrays of the best checkpoint of step N (in W/best_checkpoint)
  jsonl:K       the K-th line appended to metrics.jsonl (half of it reaches the file)
  tensorboard   the first event written after the event file is opened
  summary       summary.json
  run           run.json, first written once the state is restored, before the first step
  plots         the first PNG of the final plots
"""

import builtins
import errno
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def no_space(path: str | None = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([path] if path else []))


def tensorstore_error(path: str) -> ValueError:
    """What tensorstore raises when the disk fills under an OCDBT write."""
    return ValueError(
        f'RESOURCE_EXHAUSTED: Error writing "params.Conv_0.kernel/0.0.0.0" in OCDBT database '
        f'at local file "{path}/": Failed writing: "{path}/d/0": Failed to write 65536 bytes '
        "to file 21: No space left on device [os_error_code='28']")


class HalfWritten:
    """A file whose next write puts half of what it is given on disk, then fails: a full
    disk."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise no_space()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def fail_open(module, matches) -> None:
    """``open`` in ``module``: a file for which ``matches(path, mode)`` is true is
    ``HalfWritten``."""
    def patched(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        return HalfWritten(f) if matches(str(path), mode) else f

    module.open = patched


def install(moment: str) -> None:
    kind, _, arg = moment.partition(":")
    n = int(arg) if arg else 0
    if kind in ("checkpoint", "best"):
        from orbax.checkpoint._src.serialization import serialization

        original = serialization.async_serialize_from_host
        directory = "checkpoints" if kind == "checkpoint" else "best_checkpoint"
        marker = f"{os.sep}{directory}{os.sep}{n}.orbax-checkpoint-tmp"

        async def serialize(rslices, tensorstore_spec, *args, **kwargs):
            if marker in str(tensorstore_spec):
                raise tensorstore_error(str(tensorstore_spec["kvstore"]))
            return await original(rslices, tensorstore_spec, *args, **kwargs)

        serialization.async_serialize_from_host = serialize
    elif kind == "jsonl":
        from cnnjax import metrics

        count = [0]

        def nth_append(path, mode):
            if path.endswith(metrics.METRICS_FILE) and mode == "a":
                count[0] += 1
                return count[0] == n
            return False

        fail_open(metrics, nth_append)
    elif kind == "tensorboard":
        from cnnjax import tensorboard

        original_init = tensorboard.EventWriter.__init__

        def init(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            self._file = HalfWritten(self._file)

        tensorboard.EventWriter.__init__ = init
    elif kind == "summary":
        from cnnjax import files

        fail_open(files, lambda path, mode: os.path.basename(path).startswith("summary.json."))
    elif kind == "run":
        from cnnjax import files

        fail_open(files, lambda path, mode: os.path.basename(path).startswith("run.json."))
    elif kind == "plots":
        import matplotlib.figure

        def savefig(self, path, *args, **kwargs):
            with open(path, "wb") as f:
                f.write(b"\x89PNG")
            raise no_space(str(path))

        matplotlib.figure.Figure.savefig = savefig
    else:
        raise SystemExit(f"unknown moment {moment!r}")


def main() -> None:
    args = sys.argv[1:]
    split = args.index("--")
    options = dict(a.lstrip("-").split("=", 1) for a in args[:split])
    sys.path.insert(0, ROOT)  # this checkout's cnnjax, whatever else is installed
    install(options["at"])
    sys.argv = [os.path.join(ROOT, "launch.py"), *args[split + 1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
