"""``run(config, workdir)``: the training loop, readable top to bottom.

Workdir layout (written by process 0):
  config.json      the resolved config of the run
  metrics.jsonl    one JSON line per log step and per evaluation
  checkpoints/     Orbax checkpoints; a relaunch resumes from the newest complete one
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections

from cnnjax import config as config_lib
from cnnjax import data as data_lib
from cnnjax import metrics as metrics_lib
from cnnjax import models, optim, parallel, steps
from cnnjax.checkpoint import Checkpointer


def _log(*args: Any) -> None:
    if jax.process_index() == 0:
        print(*args, flush=True)


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str, allow_change: bool) -> None:
    """Creates ``workdir`` and records the config; refuses a workdir of a different run."""
    resolved = config_lib.to_dict(config)
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        changed = config_lib.diff(previous, resolved)
        if changed and not allow_change:
            raise config_lib.ConfigError(
                f"workdir {workdir} holds a run with a different config ({changed}); "
                "pass another --workdir to start fresh, or --allow_config_change to resume "
                "it with the new config"
            )
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(resolved, f, indent=2, sort_keys=True)
        os.replace(tmp, path)


def _eval(eval_step, state, data: data_lib.Data, batch_size: int, mesh) -> dict[str, float]:
    totals = None
    for local in data.eval_batches(batch_size):
        sums = eval_step(state, parallel.global_batch(local, mesh))
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    return metrics_lib.summarize_eval(totals)


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    allow_config_change: bool = False,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) the run described by ``config`` in ``workdir``.

    ``stop_at_step`` stops early as an interruption would (after saving a checkpoint), for a
    run that a later call resumes. Returns the summary that is also printed.
    """
    start_time = time.time()
    config_lib.validate(config, jax.device_count())
    workdir = os.path.abspath(workdir)
    prepare_workdir(config, workdir, allow_config_change)

    # Data: each process reads its slice of every global batch.
    data = data_lib.build(config.data, config.seed, jax.process_index(), jax.process_count())
    info, loader = data.info, data.train
    spe = loader.steps_per_epoch
    t = config.train
    total_steps = t.num_steps if t.num_steps >= 0 else int(round(t.num_epochs * spe))
    eval_every = {-1: spe, 0: total_steps}.get(t.eval_every_steps, t.eval_every_steps)

    # Model, optimizer, state: replicated over a 1-D mesh of every device.
    mesh = parallel.make_mesh()
    model_kwargs = {k: v for k, v in config.model.items() if k != "name"}
    model = models.get_model(
        config.model.name, num_classes=info.num_classes, axis_name=parallel.AXIS, **model_kwargs
    )
    schedule = optim.make_schedule(config.optimizer, spe, total_steps)
    tx = optim.make_optimizer(config.optimizer, schedule)
    state = steps.init_state(model, tx, config.seed, info.image_shape, mesh)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))

    # Resume from the newest complete checkpoint, if any.
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), t.keep_checkpoints)
    pending: list[dict[str, float]] = []
    start_step = 0
    if (latest := ckpt.latest_step()) is not None:
        state, progress = ckpt.restore(latest, state)
        start_step, pending = progress["step"], progress["pending_metrics"]
        loader.restore(start_step, progress["data"])
        _log(f"resumed from {ckpt.directory}/{latest}")
    writer = None
    if jax.process_index() == 0:
        writer = metrics_lib.JsonlWriter(os.path.join(workdir, "metrics.jsonl"), start_step)

    stats = {"mean": info.mean, "std": info.std}
    train_step = steps.make_train_step(
        mesh, model=model, tx=tx, schedule=schedule,
        label_smoothing=t.label_smoothing, crop_padding=config.data.crop_padding,
        flip=config.data.flip, **stats,
    )
    eval_step = steps.make_eval_step(mesh, model=model, **stats)
    _log(
        f"training {config.model.name} ({num_params:,} params) on {info.name} "
        f"({data.num_train} train / {data.num_eval} test) for {total_steps} steps "
        f"({spe} per epoch) on {jax.device_count()} device(s); workdir {workdir}"
    )

    end = total_steps if stop_at_step is None else min(stop_at_step, total_steps)
    last_eval: dict[str, float] = {}
    window_start, window_step = time.time(), start_step
    for step in range(start_step, end):
        batch = parallel.global_batch(loader.batch(step), mesh)
        state, metrics = train_step(state, batch)
        pending.append(metrics)
        done = step + 1
        record: dict[str, Any] = {}
        if done % t.log_every_steps == 0 or done == total_steps:
            elapsed = time.time() - window_start
            rate = (done - window_step) / max(elapsed, 1e-9)
            record.update({f"train_{k}" if k != "learning_rate" else k: v
                           for k, v in metrics_lib.mean_of(pending).items()})
            record.update(steps_per_sec=rate, images_per_sec=rate * config.data.batch_size)
            pending, window_start, window_step = [], time.time(), done
        if done % eval_every == 0 or done == total_steps:
            last_eval = _eval(eval_step, state, data, config.data.eval_batch_size, mesh)
            record.update(last_eval)
        if record:
            record = {"step": done, "epoch": done / spe, **record}
            if writer:
                writer.write(record)
            _log(_progress_line(record, total_steps))
        if done % t.checkpoint_every_steps == 0 or done == end:
            progress = {
                "step": done,
                "data": loader.state(done),
                "pending_metrics": metrics_lib.to_floats(pending),
                "config": config_lib.to_dict(config),
            }
            ckpt.save(done, state, progress)
    ckpt.wait()
    ckpt.close()

    summary = {
        "workdir": workdir,
        "step": end,
        "total_steps": total_steps,
        "wall_time_s": time.time() - start_time,
        **{k.replace("eval_", "test_"): v for k, v in last_eval.items()},
    }
    if end == total_steps:
        _log(
            f"done: test accuracy {summary.get('test_accuracy', float('nan')):.4f}, "
            f"test loss {summary.get('test_loss', float('nan')):.4f}, "
            f"{summary['wall_time_s']:.1f} s, workdir {workdir}"
        )
    else:
        _log(f"stopped at step {end}/{total_steps}; relaunch with --workdir={workdir} to resume")
    return summary


def _progress_line(record: dict[str, Any], total_steps: int) -> str:
    parts = [f"step {record['step']}/{total_steps}", f"epoch {record['epoch']:.2f}"]
    for key, fmt in (
        ("train_loss", "loss {:.4f}"), ("train_accuracy", "acc {:.4f}"),
        ("eval_loss", "test loss {:.4f}"), ("eval_accuracy", "test acc {:.4f}"),
        ("learning_rate", "lr {:.4g}"), ("images_per_sec", "{:.0f} img/s"),
    ):
        if key in record:
            parts.append(fmt.format(record[key]))
    return "  ".join(parts)
