"""Experiment trackers as metric writers: Weights & Biases and MLflow, each an optional extra.

Off unless configured (``--config.logging.wandb.project=P``, ``--config.logging.mlflow.
experiment=E``), and imported only then. Each gets the scalars of ``metrics.jsonl``, the
config as hyperparameters, the final summary and the plots as images. The tracker's run id is
kept in the workdir (``W/trackers.json``), so a resumed run continues the same tracker run
instead of starting another: steps it logs again after a resume carry the values they had
(resumes are exact), and W&B, which keeps a step's first values, drops them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from typing import Any

from flax.traverse_util import flatten_dict

from cnnjax import files
from cnnjax.errors import ConfigError

IDS_FILE = "trackers.json"
EXTRAS = {"wandb": ("wandb", "logging.wandb.project"),
          "mlflow": ("mlflow", "logging.mlflow.experiment")}


def configured(config: dict[str, Any]) -> list[str]:
    """The trackers that ``config`` (a plain dict) turns on."""
    logging = config.get("logging", {})
    return [name for name, (_, key) in EXTRAS.items()
            if logging.get(name, {}).get(key.rsplit(".", 1)[-1])]


def check_installed(names: list[str]) -> None:
    """A one-line ``ConfigError`` for a configured tracker whose package is missing."""
    for name in names:
        module, key = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{key} needs the {module} package, which is not installed; "
                              f"pip install 'cnnjax[{name}]', or leave {key} empty")


def _read_ids(workdir: str) -> dict[str, str]:
    try:
        with open(os.path.join(workdir, IDS_FILE)) as f:
            ids = json.load(f)
        return ids if isinstance(ids, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_id(workdir: str, name: str, run_id: str) -> None:
    ids = _read_ids(workdir)
    if ids.get(name) != run_id:
        files.write_json(os.path.join(workdir, IDS_FILE), {**ids, name: run_id}, sort_keys=True)



class WandbWriter:
    """A Weights & Biases run in ``W/wandb`` (online, or offline with ``WANDB_MODE=offline``
    or ``logging.wandb.mode=offline``, to sync later with ``wandb sync``)."""

    def __init__(self, run):  # run: metrics.RunInfo
        import wandb

        self._wandb = wandb
        settings = run.config["logging"]["wandb"]
        run_id = _read_ids(run.workdir).get("wandb")  # None: a new run, wandb picks the id
        self.run = wandb.init(
            project=settings["project"], entity=settings["entity"] or None,
            mode=settings["mode"] or None, id=run_id, resume="allow" if run_id else None,
            dir=run.workdir,
            name=os.path.basename(run.workdir), config=run.config,
            settings=wandb.Settings(console="off", silent=True))
        _save_id(run.workdir, "wandb", self.run.id)

    def write_scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def write_hparams(self, config: dict[str, Any]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.run.summary.update({f"final/{k}": v for k, v in summary.items()})

    def write_images(self, step: int, images: dict[str, str]) -> None:
        self.run.log({f"plots/{name}": self._wandb.Image(path)
                      for name, path in images.items()}, step=step)

    def close(self) -> None:
        self.run.finish()
        # W&B keeps its service (a wandb-core process and an asyncio thread) for the life of
        # the Python process; a finished run has no use for them, and a process that goes on
        # computing (a sweep, an API user, the test suite) should not carry another library's
        # threads beside XLA's. Only when no other W&B run is open in this process.
        if self._wandb.run is None:
            self._wandb.teardown()


class MlflowWriter:
    """An MLflow run in experiment ``logging.mlflow.experiment`` of
    ``logging.mlflow.tracking_uri`` (MLflow's own default when empty)."""

    def __init__(self, run):  # run: metrics.RunInfo
        from mlflow.tracking import MlflowClient

        settings = run.config["logging"]["mlflow"]
        self.client = MlflowClient(tracking_uri=settings["tracking_uri"] or None)
        name = settings["experiment"]
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (experiment.experiment_id if experiment
                         else self.client.create_experiment(name))
        run_id = _read_ids(run.workdir).get("mlflow")
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self.client.create_run(
                experiment_id, run_name=os.path.basename(run.workdir),
                tags={"workdir": run.workdir}).info.run_id
            _save_id(run.workdir, "mlflow", run_id)
        self.run_id, self.finished = run_id, False

    def write_scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(key, float(value), now, step) for key, value in values.items()])

    def write_hparams(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params  # a resumed run has them
        params = [Param(key, json.dumps(value) if not isinstance(value, str) else value)
                  for key, value in flatten_dict(config, sep=".").items() if key not in logged]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.client.log_dict(self.run_id, summary, "summary.json")
        self.finished = True

    def write_images(self, step: int, images: dict[str, str]) -> None:
        for path in images.values():
            self.client.log_artifact(self.run_id, path, "plots")

    def close(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if self.finished else "KILLED")
