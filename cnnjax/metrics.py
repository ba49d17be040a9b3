"""Metric arithmetic, and the metric writers: where a run's numbers go.

A writer is made by a factory in ``WRITERS`` from the run's ``RunInfo`` and has three
methods (``MetricWriter``): ``write_scalars(step, values)`` at every log step and evaluation,
``write_hparams(config)`` once at the start, and ``close()``. ``train.writers`` names the
writers of a run: ``jsonl`` (``metrics.jsonl``, the run's record, which plots, resumes and
sweeps read), ``tensorboard`` (event files in ``tensorboard/``) and ``progress`` (the
terminal's lines and progress bar). A writer of your own plugs in from a config file::

    from cnnjax import config, metrics

    class PrintWriter:  # any object with the three methods
        def __init__(self, run: metrics.RunInfo): ...
        def write_scalars(self, step, values): print(step, values)
        def write_hparams(self, config): ...
        def close(self): ...

    metrics.WRITERS["print"] = PrintWriter

    def get_config():
        c = config.defaults()
        c.train.writers = "jsonl,progress,print"
        return c
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from cnnjax import errors, files, trackers
from cnnjax.errors import ConfigError, first_line
from cnnjax.progress import ProgressBar
from cnnjax.tensorboard import EventWriter

METRICS_FILE = "metrics.jsonl"


def mean_of(steps: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Averages per-step metric dicts (device arrays are fetched once, together)."""
    if not steps:
        return {}
    host = to_floats(steps)
    return {k: float(np.mean(np.asarray([m[k] for m in host], np.float64))) for k in host[0]}


def train_record(steps: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The logged fields of a window of train steps: means, and skipped-step count."""
    means = mean_of(steps)
    record = {"learning_rate": means.pop("learning_rate")}
    skipped = means.pop("nonfinite", 0.0) * len(steps)
    record.update({f"train_{k}": v for k, v in means.items()})
    record["skipped_steps"] = round(skipped)
    return record


def to_floats(steps: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """Per-step metric dicts as Python floats (exact: float32 -> float64 is lossless)."""
    return [{k: float(v) for k, v in m.items()} for m in jax.device_get(list(steps))]


def summarize_eval(sums: dict[str, Any]) -> dict[str, float]:
    """Summed eval metrics -> loss, top-1 and top-5 accuracy over the counted examples."""
    s = {k: float(v) for k, v in jax.device_get(sums).items() if k != "confusion"}
    n = max(s["count"], 1.0)
    return {
        "eval_loss": s["loss"] / n,
        "eval_accuracy": s["correct"] / n,
        "eval_top5_accuracy": s["correct_top5"] / n,
    }


# ------------------------------------------------------------------------------ writers


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a writer may need to know of the run it records."""

    workdir: str
    start_step: int  # 0, or the step a resumed run starts from
    total_steps: int
    steps_per_epoch: int
    batch_size: int  # global
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # the run's, as JSON


class MetricWriter(Protocol):
    """The interface of a metric writer. ``values`` are Python floats keyed by metric name
    (``train_loss``, ``eval_accuracy``, ``learning_rate``, ``epoch``, ...).

    A writer may also define ``on_step(step, metrics)``, called after every training step
    with that step's metrics still on the device (the progress bar draws from it); fetching
    them waits for the device, so such a writer must rate-limit itself. At the end of the run
    it may take ``write_images(step, {name: png_path})`` (the plots) and
    ``write_summary(summary)`` (``summary.json``'s contents).
    """

    def write_scalars(self, step: int, values: dict[str, float]) -> None: ...
    def write_hparams(self, config: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def metrics_path(workdir: str) -> str:
    return os.path.join(workdir, METRICS_FILE)


class JsonlWriter:
    """``metrics.jsonl``: one JSON object per line, ``{"step": s, **values}``. A resumed run
    first drops the lines written after the checkpoint it resumes from, so the file reads as
    one uninterrupted run. The config is in ``config.json``, so ``write_hparams`` adds nothing.
    """

    def __init__(self, run: RunInfo):
        self.path = metrics_path(run.workdir)
        if os.path.exists(self.path):
            with open(self.path, errors="replace") as f:
                kept = [line for line in f if _step_of(line) <= run.start_step]
            files.write_atomic(self.path, "".join(kept))

    def write_scalars(self, step: int, values: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")

    def write_hparams(self, config: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardWriter:
    """TensorBoard scalars in ``tensorboard/``, mirroring ``metrics.jsonl``: a resumed run
    rewrites them from the records it keeps, so its curves show no discarded steps."""

    def __init__(self, run: RunInfo):
        kept = [r for r in read_jsonl(metrics_path(run.workdir)) if r["step"] <= run.start_step]
        self.events = EventWriter(os.path.join(run.workdir, "tensorboard"), kept)

    def write_scalars(self, step: int, values: dict[str, float]) -> None:
        self.events.write({"step": step, **values})

    def write_hparams(self, config: dict[str, Any]) -> None:
        self.events.write_hparams(config)  # TensorBoard's HParams tab compares runs by them

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.events.write_session_end(summary["step"])

    def close(self) -> None:
        self.events.close()


class ProgressWriter:
    """The terminal: a line per log step and evaluation, and (on a terminal only) a progress
    bar for the epoch in progress beneath them."""

    def __init__(self, run: RunInfo):
        self.total_steps = run.total_steps
        self.bar = ProgressBar(run.total_steps, run.steps_per_epoch, run.batch_size)

    def on_step(self, step: int, metrics: dict[str, Any]) -> None:
        self.bar.update(step, metrics)

    def write_scalars(self, step: int, values: dict[str, float]) -> None:
        self.bar.print(progress_line(step, self.total_steps, values))

    def write_hparams(self, config: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        self.bar.close()


def progress_line(step: int, total_steps: int, values: dict[str, float]) -> str:
    parts = [f"step {step}/{total_steps}", f"epoch {values.get('epoch', 0.0):.2f}"]
    for key, fmt in (
        ("train_loss", "loss {:.4f}"), ("train_accuracy", "acc {:.4f}"),
        ("eval_loss", "test loss {:.4f}"), ("eval_accuracy", "test acc {:.4f}"),
        ("eval_ema_accuracy", "ema acc {:.4f}"),
        ("learning_rate", "lr {:.4g}"), ("images_per_sec", "{:.0f} img/s"),
        ("skipped_steps", "skipped {:.0f}"),
    ):
        if values.get(key):
            parts.append(fmt.format(values[key]))
    return "  ".join(parts)


# The one place to add a writer: name -> factory(RunInfo) -> MetricWriter.
WRITERS: dict[str, Callable[[RunInfo], MetricWriter]] = {
    "jsonl": JsonlWriter,
    "tensorboard": TensorBoardWriter,
    "progress": ProgressWriter,
    # Trackers, each an optional extra: on when configured in `logging` (trackers.configured).
    "wandb": trackers.WandbWriter,
    "mlflow": trackers.MlflowWriter,
}


def writer_names(spec: str) -> list[str]:
    """``"jsonl, progress"`` -> ``["jsonl", "progress"]``."""
    return [name.strip() for name in spec.split(",") if name.strip()]


class Writers:
    """The writers named in ``train.writers``, then the trackers that ``run.config`` turns on
    (``logging.wandb``, ``logging.mlflow``), called in that order."""

    def __init__(self, spec: str, run: RunInfo):
        self.writers: list[MetricWriter] = []
        self._where: list[tuple[str, str] | None] = []  # what each writes and where
        names = writer_names(spec)
        names += [name for name in trackers.configured(run.config) if name not in names]
        try:
            for name in names:
                where = _where(name, run.workdir)
                try:
                    with _writing(where):
                        self.writers.append(WRITERS[name](run))
                except Exception as e:
                    if name not in trackers.EXTRAS:
                        raise
                    raise ConfigError(f"{name} could not start a run ({type(e).__name__}: "
                                      f"{first_line(e)}"
                                      f"); check its settings in --config.logging.{name}.*, "
                                      "or log offline") from e
                self._where.append(where)
        except BaseException:
            with contextlib.suppress(Exception):  # the error that stopped it is the one to see
                self.close()
            raise
        self._on_step = [w.on_step for w in self.writers if hasattr(w, "on_step")]

    def on_step(self, step: int, metrics: dict[str, Any]) -> None:
        for on_step in self._on_step:
            on_step(step, metrics)

    def _each(self, method: str, *args: Any) -> None:
        """Calls ``method`` of every writer that has it; a failure to write its files (a full
        disk) is a ``WriteError`` naming them. ``close`` closes every writer whatever one
        raises, then raises the first error."""
        first = None
        for w, where in zip(self.writers, self._where, strict=True):
            if (call := getattr(w, method, None)) is None:
                continue
            try:
                with _writing(where):
                    call(*args)
            except Exception as e:
                if method != "close":
                    raise
                first = first or e
        if first is not None:
            raise first

    def write_scalars(self, step: int, values: dict[str, float]) -> None:
        self._each("write_scalars", step, values)

    def write_hparams(self, config: dict[str, Any]) -> None:
        self._each("write_hparams", config)

    def write_summary(self, summary: dict[str, Any]) -> None:
        self._each("write_summary", summary)

    def write_images(self, step: int, images: dict[str, str]) -> None:
        self._each("write_images", step, images)

    def close(self) -> None:
        self._each("close")


def _where(name: str, workdir: str) -> tuple[str, str] | None:
    """What writer ``name`` writes in the workdir, and where, for a ``WriteError`` (None for
    the terminal and the trackers, whose failures are their services')."""
    if name == "progress" or name in trackers.EXTRAS:
        return None
    if name == "jsonl":
        return metrics_path(workdir), workdir
    if name == "tensorboard":
        return os.path.join(workdir, "tensorboard"), workdir
    return f"the {name} metrics in {workdir}", workdir


def _writing(where: tuple[str, str] | None) -> contextlib.AbstractContextManager:
    return errors.writing(*where) if where else contextlib.nullcontext()


# ------------------------------------------------------------------------------ reading


def _step_of(line: str) -> float:
    """The step of a metrics line; a line cut short by a crash counts as not written."""
    try:
        record = json.loads(line) if line.endswith("\n") else None
        return float(record["step"]) if isinstance(record, dict) else float("inf")
    except (ValueError, KeyError, TypeError):
        return float("inf")


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The records of a metrics file, ``[]`` if there is none (a line that is not a record,
    torn or damaged, is skipped)."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path, errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
                records.append(record)
    return records


def last_eval(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The ``eval_*`` values of the newest record that has them (``{}`` if none)."""
    return next(({k: v for k, v in r.items() if k.startswith("eval_")}
                 for r in reversed(records) if "eval_loss" in r), {})
