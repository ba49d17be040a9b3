"""``run(config, workdir)``: the training loop, readable top to bottom.

Workdir layout (written by process 0):
  config.json      the resolved config of the run
  metrics.jsonl    one JSON line per log step and per evaluation
  checkpoints/     Orbax checkpoints; a relaunch resumes from the newest readable one
  best_checkpoint/ the state with the best ``train.best_metric`` (named in best.json)
  tensorboard/     TensorBoard event files of the metrics.jsonl scalars
  plots/           PNGs of curves, filters, feature maps, confusion matrix (at the end)
  summary.json     the final summary, written when the run reaches its last step
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from cnnjax import config as config_lib
from cnnjax import data as data_lib
from cnnjax import files, models, optim, parallel, signals, steps, transfer, viz
from cnnjax import metrics as metrics_lib
from cnnjax.checkpoint import BestCheckpoint, Checkpointer, WorkdirLock
from cnnjax.preemption import PreemptionGuard


class Preempted(Exception):
    """Raised after a SIGTERM/SIGINT once the current step's checkpoint is committed."""

    def __init__(self, step: int, workdir: str):
        super().__init__(
            f"preempted: saved and committed the checkpoint of step {step} in "
            f"{workdir}/checkpoints; relaunch the same command to resume"
        )
        self.step = step


class NonFiniteError(RuntimeError):
    """The loss or the gradients stopped being finite under ``nan_policy='stop'``."""


def _log(*args: Any) -> None:
    if jax.process_index() == 0:
        print(*args, flush=True)


def check_workdir(config: ml_collections.ConfigDict, workdir: str, allow_change: bool) -> None:
    """Refuses, before anything is written, a workdir that holds a run of another config."""
    previous = recorded_config(workdir)
    if previous is not None and not allow_change:
        if changed := config_lib.diff(config_lib.complete(previous), config_lib.to_dict(config)):
            raise config_lib.ConfigError(
                f"workdir {workdir} holds a run with a different config ({changed}); "
                "pass another --workdir to start fresh, or --allow_config_change to resume "
                "it with the new config"
            )


def recorded_config(workdir: str) -> dict[str, Any] | None:
    """The config recorded in ``workdir/config.json`` (None: no run recorded there)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            previous = json.load(f)
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise config_lib.ConfigError(
            f"{path} is unreadable ({reason}); restore it (the config of every checkpoint is "
            "also in its progress file), or pass another --workdir") from None
    if not isinstance(previous, dict) or not isinstance(previous.get("model"), dict):
        raise config_lib.ConfigError(
            f"{path} does not hold a cnnjax config; restore it, or pass another --workdir")
    return previous


def finished_summary(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
    """The summary of the run in ``workdir`` if it is finished under ``config``, else None.

    Finished: ``summary.json`` records the last step, and ``config`` is the recorded config.
    """
    summary = read_summary(workdir)
    if not summary or summary.get("step", -1) < summary.get("total_steps", 0):
        return None
    previous = recorded_config(workdir)
    if previous is None or config_lib.diff(config_lib.complete(previous),
                                            config_lib.to_dict(config)):
        return None
    return summary


def read_summary(workdir: str) -> dict[str, Any] | None:
    """``workdir/summary.json`` (None if missing or unreadable: the run is then finished
    again from its last checkpoint, which rewrites it)."""
    try:
        with open(os.path.join(workdir, "summary.json")) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Creates ``workdir`` and records the resolved config (atomically)."""
    try:
        os.makedirs(workdir, exist_ok=True)
        files.write_json(os.path.join(workdir, "config.json"), config_lib.to_dict(config),
                         sort_keys=True)
    except OSError as e:
        raise config_lib.ConfigError(
            f"workdir {workdir} is not writable ({e.strerror}); pass a writable --workdir"
        ) from None


def check_input_shape(model, info: data_lib.DatasetInfo, model_name: str) -> None:
    """Traces ``model.init`` abstractly (no compilation) to catch an image size it can't take."""
    shape = (1, *info.image_shape)
    try:
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jax.numpy.zeros(shape)))
    except Exception as e:  # any shape error inside the model, reported in one line
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        h, w, c = info.image_shape
        raise config_lib.ConfigError(
            f"model {model_name!r} cannot take the {h}x{w}x{c} images of {info.name!r} "
            f"({reason}); choose a model for this image size or resize the data"
        ) from None


def check_against_data(config: ml_collections.ConfigDict, data: data_lib.Data,
                       total_steps: int) -> None:
    """The config values whose range depends on the data, checked before any compile."""
    info, spe = data.info, data.train.steps_per_epoch
    h, w, _ = info.image_shape
    if info.num_classes < 2:
        raise config_lib.ConfigError(
            f"{info.name} has a single class (label 0): a classifier needs two or more")
    if config.data.crop_padding > min(h, w):
        raise config_lib.ConfigError(
            f"data.crop_padding={config.data.crop_padding} is larger than the {h}x{w} images "
            f"of {info.name}; pass at most --config.data.crop_padding={min(h, w)}")
    # The step counter, the schedules and the data position are int32 on device.
    for what, count in (("the run", total_steps),
                        ("optimizer.warmup_epochs", config.optimizer.warmup_epochs * spe)):
        if count >= 2**31:
            raise config_lib.ConfigError(
                f"{what} is {count:.3g} steps of {spe} per epoch, more than the step counter "
                "holds (2**31); train for fewer steps")
    limit = config.data.max_memory_mb * 2**20
    for key in ("batch_size", "eval_batch_size"):
        size = config.data[key] * h * w * info.image_shape[2]  # uint8 pixels on the host
        if size > limit:
            raise config_lib.ConfigError(
                f"data.{key}={config.data[key]} makes each batch {size / 2**30:.1f} GiB of "
                f"images, over data.max_memory_mb={config.data.max_memory_mb}; pass a smaller "
                f"--config.data.{key}")


def check_head(config: ml_collections.ConfigDict, params: Any) -> None:
    """A frozen or slower backbone needs ``optimizer.head`` to name some parameters."""
    o = config.optimizer
    if not o.freeze_backbone and o.backbone_lr_scale == 1.0:
        return
    paths = ["/".join(str(getattr(k, "key", k)) for k in path)
             for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    if not any(re.search(o.head, p) for p in paths):
        tops = sorted({p.split("/")[0] for p in paths})
        raise config_lib.ConfigError(
            f"optimizer.head={o.head!r} matches no parameter of {config.model.name} (its "
            f"layers: {', '.join(tops)}); pass a regex of the classifier's parameter paths")


def _eval(eval_step, state, data: data_lib.Data, batch_size: int, mesh) -> dict[str, float]:
    totals = None
    for local in data.eval_batches(batch_size):
        sums = eval_step(state, parallel.global_batch(local, mesh))
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    return metrics_lib.summarize_eval(totals)


def _check_finite(pending: list[dict[str, Any]], first_step: int, policy: str) -> None:
    if policy != "stop":
        return
    for i, m in enumerate(metrics_lib.to_floats(pending)):
        if m["nonfinite"]:
            raise NonFiniteError(
                f"loss or gradients are not finite at step {first_step + i + 1}; stopped without "
                "saving it (the last good checkpoint is kept). Lower the learning rate, add "
                "--config.optimizer.grad_clip_norm, or set --config.train.nan_policy=skip"
            )


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    allow_config_change: bool = False,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) the run described by ``config`` in ``workdir``.

    ``stop_at_step`` stops early as an interruption would (after saving a checkpoint), for a
    run that a later call resumes. Returns the summary that is also printed. Raises
    ``ConfigError`` before any work for a config that cannot run, ``Preempted`` after saving
    on SIGTERM/SIGINT, and ``NonFiniteError`` under ``nan_policy='stop'``.
    """
    start_time = time.time()
    config_lib.validate(config, jax.device_count())
    workdir = os.path.abspath(workdir)
    transfer.check_source(config.init.checkpoint)
    check_workdir(config, workdir, allow_config_change)  # read only, as is everything above
    if (summary := finished_summary(config, workdir)) is not None:
        return _report_finished(summary)
    with signals.stage(signals.STARTING, "before the first training step; relaunch the same "
                       "command to start (or resume) the run"):
        with _exclusive(workdir) as lock:
            # Again, now that no other launch can change the workdir under us.
            check_workdir(config, workdir, allow_config_change)
            if (summary := finished_summary(config, workdir)) is not None:
                return _report_finished(summary)
            return _train(config, workdir, lock, stop_at_step, start_time)


@contextlib.contextmanager
def _exclusive(workdir: str) -> Iterator[WorkdirLock | None]:
    """Process 0 holds the workdir's lock for the block; every process learns if it failed.

    A ``ConfigError`` raised in the block before ``lock.keep()`` removes what taking the lock
    created, so bad input found late (in the data, say) still leaves no trace.
    """
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
    error = None
    if lock:
        try:
            lock.acquire()
        except config_lib.ConfigError as e:
            error = e
    if jax.process_count() > 1:
        failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if failed and error is None:
            error = config_lib.ConfigError(f"process 0 could not lock workdir {workdir}")
    if error:
        raise error
    try:
        yield lock
    except config_lib.ConfigError:
        if lock:
            lock.abandon()
        raise
    finally:
        if lock:
            lock.release()


def _report_finished(summary: dict[str, Any]) -> dict[str, Any]:
    """A relaunch of a finished run: says so and changes nothing."""
    _log(f"already finished at step {summary['step']} of {summary['total_steps']} "
         f"({summary['workdir']}/summary.json); nothing to do")
    _log(_done_line(summary))
    return summary


def _done_line(summary: dict[str, Any]) -> str:
    return (f"done: test accuracy {summary.get('test_accuracy', float('nan')):.4f}, "
            f"test loss {summary.get('test_loss', float('nan')):.4f}, "
            f"{summary['wall_time_s']:.1f} s, workdir {summary['workdir']}")


def _train(config: ml_collections.ConfigDict, workdir: str, lock: WorkdirLock | None,
           stop_at_step: int | None, start_time: float) -> dict[str, Any]:
    # Data: each process reads its slice of every global batch.
    data = data_lib.build(config.data, config.seed, jax.process_index(), jax.process_count())
    info, loader = data.info, data.train
    spe = loader.steps_per_epoch
    t = config.train
    total_steps = t.num_steps if t.num_steps >= 0 else int(round(t.num_epochs * spe))
    if total_steps == 0:
        raise config_lib.ConfigError(
            f"train.num_epochs={t.num_epochs} is {t.num_epochs * spe:.2g} of the {spe} steps of an "
            "epoch, which rounds to no step; train for longer")
    eval_every = {-1: spe, 0: total_steps}.get(t.eval_every_steps, t.eval_every_steps)
    check_against_data(config, data, total_steps)

    # Model, optimizer, state: replicated over a 1-D mesh of every device.
    mesh = parallel.make_mesh()
    model = models.from_config(config.model, info.num_classes, axis_name=parallel.AXIS)
    check_input_shape(model, info, config.model.name)
    schedule = optim.make_schedule(config.optimizer, spe, total_steps)
    tx = optim.make_optimizer(config.optimizer, schedule)
    state = steps.init_state(model, tx, config.seed, info.image_shape, mesh)
    check_head(config, state.params)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), t.keep_checkpoints)
    if config.init.checkpoint and not ckpt.all_steps():
        state, notes = transfer.initialize_from(
            state, config.init.checkpoint, config.init.exclude, tx, parallel.replicated(mesh)
        )
        _log(f"initialised from {config.init.checkpoint}" + "".join(f"\n  {n}" for n in notes))
    # Resume from the newest readable checkpoint, if any.
    pending: list[dict[str, Any]] = []
    start_step, best_so_far = 0, None
    if (restored := ckpt.restore_latest(state, warn=_log)) is not None:
        state, progress = restored
        start_step, pending = progress["step"], progress["pending_metrics"]
        best_so_far = progress.get("best")
        loader.restore(start_step, progress["data"])
        _log(f"resumed from {ckpt.directory}/{start_step}")
    if jax.process_index() == 0:
        write_config(config, workdir)
        lock.keep()  # from here on the workdir holds this run: no more bad-input clean-up
    best = (BestCheckpoint(workdir, t.best_metric, t.best_mode, best_so_far)
            if t.best_metric else None)
    writer = None
    if jax.process_index() == 0:
        writer = metrics_lib.RunWriter(workdir, start_step, total_steps, spe,
                                       config.data.batch_size)
        if t.plots and start_step == 0:  # the filters before training, for the plots
            viz.save_initial_kernel(os.path.join(workdir, "plots"), model, state.params,
                                    info.image_shape)

    stats = {"mean": info.mean, "std": info.std}
    train_step = steps.make_train_step(
        mesh, model=model, tx=tx, schedule=schedule,
        label_smoothing=t.label_smoothing, skip_nonfinite=t.nan_policy == "skip",
        frozen_batch_stats=config.optimizer.freeze_backbone,
        **data.augment, **stats,  # crop, flip, mixup, cutmix: what the loader left to the device
    )
    eval_step = steps.make_eval_step(mesh, model=model, **stats)
    _log(
        f"training {config.model.name} ({num_params:,} params) on {info.name} "
        f"({data.num_train} train / {data.num_eval} test) for {total_steps} steps "
        f"({spe} per epoch) on {jax.device_count()} device(s); workdir {workdir}"
    )

    def save(done: int, to_best: bool = False) -> None:
        _check_finite(pending, done - len(pending), t.nan_policy)
        progress = {
            "step": done,
            "data": loader.state(done),
            "pending_metrics": metrics_lib.to_floats(pending),
            "config": config_lib.to_dict(config),
            "best": best.record if best else None,
        }
        if to_best:
            best.save(state, progress)
        else:
            ckpt.save(done, state, progress)

    end = total_steps if stop_at_step is None else min(stop_at_step, total_steps)
    last_eval: dict[str, float] = {}
    window_start, window_step = time.time(), start_step
    loop_start = window_start

    def close() -> None:
        ckpt.wait()
        ckpt.close()
        if best:
            best.close()
        if writer:
            writer.close()

    with PreemptionGuard() as preemption, contextlib.ExitStack() as cleanup:
        cleanup.callback(close)  # also on an error or a preemption: every save commits
        for step in range(start_step, end):
            batch = parallel.global_batch(loader.batch(step), mesh)
            state, metrics = train_step(state, batch)
            if step == start_step:  # compiled and running: a signal now saves this step
                signals.set_stage(signals.TRAINING, "")
            pending.append(metrics)
            done = step + 1
            if writer:
                writer.update(done, metrics)
            record: dict[str, Any] = {}
            if done % t.log_every_steps == 0 or done == total_steps:
                _check_finite(pending, step + 1 - len(pending), t.nan_policy)
                rate = (done - window_step) / max(time.time() - window_start, 1e-9)
                record.update(metrics_lib.train_record(pending))
                record.update(steps_per_sec=rate, images_per_sec=rate * config.data.batch_size)
                pending, window_start, window_step = [], time.time(), done
            if done % eval_every == 0 or done == total_steps:
                last_eval = _eval(eval_step, state, data, config.data.eval_batch_size, mesh)
                record.update(last_eval)
                if best and best.improves(last_eval):
                    best.update(done, last_eval)
                    save(done, to_best=True)
            if record:
                record = {"step": done, "epoch": done / spe, **record}
                if writer:
                    writer.write(record, _progress_line(record, total_steps))
            if preemption.requested():
                save(done)
                raise Preempted(done, workdir)  # once `close` has committed the save
            if done % t.checkpoint_every_steps == 0 or done == end:
                save(done)
    if preemption.requested():  # a signal while the last checkpoint was being committed
        raise Preempted(end, workdir)
    signals.set_stage(signals.FINISHING, "relaunch the same command to write the plots and "
                      "the summary")
    if writer:
        last_eval = last_eval or writer.last_eval  # a relaunch that only finishes the run
    if t.plots and end == total_steps:
        viz.write_plots(os.path.join(workdir, "plots"), config, state.variables, data,
                        mesh, end, writer and metrics_lib.read_jsonl(writer.jsonl.path))

    summary = {
        "workdir": workdir,
        "step": end,
        "total_steps": total_steps,
        "wall_time_s": time.time() - start_time,
        "train_time_s": time.time() - loop_start,  # the loop: steps, evals, first compile
        "num_params": int(num_params),
        **{k.replace("eval_", "test_"): v for k, v in last_eval.items()},
    }
    if best and best.record:
        summary.update(best_metric=best.record["metric"], best_value=best.record["value"],
                       best_step=best.record["step"])
    if end == total_steps:
        if jax.process_index() == 0:  # marks the run finished (sweeps skip it)
            _write_summary(summary, workdir)
        _log(_done_line(summary))
    else:
        _log(f"stopped at step {end}/{total_steps}; relaunch with --workdir={workdir} to resume")
    return summary


def _write_summary(summary: dict[str, Any], workdir: str) -> None:
    files.write_json(os.path.join(workdir, "summary.json"), summary)


def _progress_line(record: dict[str, Any], total_steps: int) -> str:
    parts = [f"step {record['step']}/{total_steps}", f"epoch {record['epoch']:.2f}"]
    for key, fmt in (
        ("train_loss", "loss {:.4f}"), ("train_accuracy", "acc {:.4f}"),
        ("eval_loss", "test loss {:.4f}"), ("eval_accuracy", "test acc {:.4f}"),
        ("learning_rate", "lr {:.4g}"), ("images_per_sec", "{:.0f} img/s"),
        ("skipped_steps", "skipped {:.0f}"),
    ):
        if record.get(key):
            parts.append(fmt.format(record[key]))
    return "  ".join(parts)
