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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.faults import HalfWritten, fail_open, launch, no_space, replace  # noqa: E402


def tensorstore_error(path: str) -> ValueError:
    """What tensorstore raises when the disk fills under an OCDBT write."""
    return ValueError(
        f'RESOURCE_EXHAUSTED: Error writing "params.Conv_0.kernel/0.0.0.0" in OCDBT database '
        f'at local file "{path}/": Failed writing: "{path}/d/0": Failed to write 65536 bytes '
        "to file 21: No space left on device [os_error_code='28']")


def install(moment: str) -> None:
    kind, _, arg = moment.partition(":")
    n = int(arg) if arg else 0
    if kind in ("checkpoint", "best"):
        from orbax.checkpoint._src.serialization import serialization

        directory = "checkpoints" if kind == "checkpoint" else "best_checkpoint"
        marker = f"{os.sep}{directory}{os.sep}{n}.orbax-checkpoint-tmp"

        def failing(original):
            async def serialize(rslices, tensorstore_spec, *args, **kwargs):
                if marker in str(tensorstore_spec):
                    raise tensorstore_error(str(tensorstore_spec["kvstore"]))
                return await original(rslices, tensorstore_spec, *args, **kwargs)

            return serialize

        replace(serialization, "async_serialize_from_host", failing)
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

        def half_written(init):
            def patched(self, *args, **kwargs):
                init(self, *args, **kwargs)
                self._file = HalfWritten(self._file)

            return patched

        replace(tensorboard.EventWriter, "__init__", half_written)
    elif kind == "summary":
        from cnnjax import files

        fail_open(files, lambda path, mode: os.path.basename(path).startswith("summary.json."))
    elif kind == "run":
        from cnnjax import files

        fail_open(files, lambda path, mode: os.path.basename(path).startswith("run.json."))
    elif kind == "plots":
        import matplotlib.figure

        def full(_original):
            def savefig(self, path, *args, **kwargs):
                with open(path, "wb") as f:
                    f.write(b"\x89PNG")
                raise no_space(str(path))

            return savefig

        replace(matplotlib.figure.Figure, "savefig", full)
    else:
        raise SystemExit(f"unknown moment {moment!r}")


if __name__ == "__main__":
    launch(lambda options: install(options["at"]))
