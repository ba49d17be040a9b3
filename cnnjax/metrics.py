"""Metric arithmetic and the writer of ``metrics.jsonl``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from cnnjax import files
from cnnjax.progress import ProgressBar
from cnnjax.tensorboard import EventWriter


def mean_of(steps: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Averages per-step metric dicts (device arrays are fetched once, together)."""
    if not steps:
        return {}
    host = to_floats(steps)
    return {k: float(np.mean(np.asarray([m[k] for m in host], np.float64))) for k in host[0]}


def train_record(steps: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The metrics.jsonl fields of a window of train steps: means, and skipped-step count."""
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
    s = {k: float(v) for k, v in jax.device_get(sums).items()}
    n = max(s["count"], 1.0)
    return {
        "eval_loss": s["loss"] / n,
        "eval_accuracy": s["correct"] / n,
        "eval_top5_accuracy": s["correct_top5"] / n,
    }


class JsonlWriter:
    """Appends one JSON object per line to ``path``; a resumed run first drops the lines
    written after the checkpoint it resumes from, so the file reads as one uninterrupted run.
    """

    def __init__(self, path: str, resume_step: int = 0):
        self.path = path
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                kept = [line for line in f if _step_of(line) <= resume_step]
            files.write_atomic(path, "".join(kept))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _step_of(line: str) -> float:
    """The step of a metrics line; a line cut short by a crash counts as not written."""
    try:
        record = json.loads(line) if line.endswith("\n") else None
        return float(record["step"]) if isinstance(record, dict) else float("inf")
    except (ValueError, KeyError, TypeError):
        return float("inf")


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The records of a metrics file (a line that is not one, torn or damaged, is skipped)."""
    records = []
    with open(path, errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


class RunWriter:
    """Process 0's record of a run: ``metrics.jsonl``, TensorBoard event files in
    ``tensorboard/`` (mirroring metrics.jsonl, resumed runs included) and the console (the
    lines of ``print`` plus, on a terminal, a progress bar).
    """

    def __init__(self, workdir: str, resume_step: int, total_steps: int, steps_per_epoch: int,
                 batch_size: int):
        self.jsonl = JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step)
        kept = read_jsonl(self.jsonl.path) if os.path.exists(self.jsonl.path) else []
        self.last_eval = next(({k: v for k, v in r.items() if k.startswith("eval_")}
                               for r in reversed(kept) if "eval_loss" in r), {})
        self.tensorboard = EventWriter(os.path.join(workdir, "tensorboard"), kept)
        self.bar = ProgressBar(total_steps, steps_per_epoch, batch_size)

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        """After every step: advances the progress bar (a no-op off a terminal)."""
        self.bar.update(step, metrics)

    def write(self, record: dict[str, Any], line: str) -> None:
        """Records a log/eval step and prints its one-line summary."""
        self.jsonl.write(record)
        self.tensorboard.write(record)
        if "eval_loss" in record:
            self.last_eval = {k: v for k, v in record.items() if k.startswith("eval_")}
        self.bar.print(line)

    def close(self) -> None:
        self.bar.close()
        self.tensorboard.close()
