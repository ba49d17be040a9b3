"""Metric arithmetic and the writer of ``metrics.jsonl``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np


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
            with open(path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, path)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
