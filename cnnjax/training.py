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
import dataclasses
import os
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from cnnjax import config as config_lib
from cnnjax import data as data_lib
from cnnjax import (
    errors,
    evaluate,
    files,
    models,
    optim,
    parallel,
    plot_data,
    signals,
    steps,
    transfer,
)
from cnnjax import metrics as metrics_lib
from cnnjax import runrecord as runrecord_lib
from cnnjax import workdir as workdir_lib
from cnnjax.checkpoint import BestCheckpoint, Checkpointer, complete_steps
from cnnjax.data import augment as augment_lib
from cnnjax.losses import from_config as make_loss
from cnnjax.models import layers
from cnnjax.preemption import PreemptionGuard
from cnnjax.workdir import WorkdirLock


class Preempted(Exception):
    """Raised after a SIGTERM/SIGINT once the current step's checkpoint is committed."""

    exit_status = errors.EXIT_PREEMPTED
    line_prefix = ""  # not an error: the run stopped as asked, and says where it resumes

    def __init__(self, step: int, workdir: str):
        super().__init__(
            f"preempted: saved and committed the checkpoint of step {step} in "
            f"{workdir}/checkpoints; relaunch the same command to resume"
        )
        self.step = step


class Stopped(Exception):
    """Raised when ``run``'s ``on_eval`` asked to stop after an evaluation (a search's pruner),
    once that step's checkpoint is committed."""

    def __init__(self, step: int, workdir: str):
        super().__init__(f"stopped after the evaluation of step {step}; its checkpoint is "
                         f"committed in {workdir}/checkpoints")
        self.step = step


class NonFiniteError(RuntimeError):
    """The loss or the gradients stopped being finite under ``nan_policy='stop'``."""

    exit_status = errors.EXIT_NONFINITE


def _log(*args: Any) -> None:
    if jax.process_index() == 0:
        print(*args, flush=True)


def check_input_shape(model, info: data_lib.DatasetInfo, model_name: str) -> None:
    """Traces ``model.init`` abstractly (no compilation) to catch an image size it can't take."""
    shape = (1, *info.image_shape)
    try:
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jax.numpy.zeros(shape)))
    except Exception as e:  # any shape error inside the model, reported in one line
        reason = errors.first_line(e, 160)
        h, w, c = info.image_shape
        raise config_lib.ConfigError(
            f"model {model_name!r} cannot take the {h}x{w}x{c} images of {info.name!r} "
            f"({reason}); choose a model for this image size or resize the data"
        ) from None


def check_against_data(config: ml_collections.ConfigDict, data: data_lib.Data,
                       total_steps: int) -> None:
    """The config values whose range depends on the data, checked before any compile."""
    info, spe = data.info, data.train.steps_per_epoch
    if total_steps == 0:
        raise config_lib.ConfigError(
            f"train.num_epochs={config.train.num_epochs} is "
            f"{config.train.num_epochs * spe:.2g} of the {spe} steps of an epoch, which rounds "
            "to no step; train for longer")
    h, w, _ = info.image_shape
    if info.num_classes < 2:
        raise config_lib.ConfigError(
            f"{info.name} has a single class (label 0): a classifier needs two or more")
    padding = dict(dict(augment_lib.chain(config.data)).get("crop", ())).get("padding", 0)
    if padding > min(h, w):
        field = ("data.crop_padding" if config.data.crop_padding else "data.augment's crop "
                 "padding")
        raise config_lib.ConfigError(
            f"{field}={padding} is larger than the {h}x{w} images of {info.name}; pass at "
            f"most {min(h, w)}")
    # The step counter, the schedules and the data position are int32 on device.
    for what, count in (("the run", total_steps),
                        ("optimizer.warmup_epochs", config.optimizer.warmup_epochs * spe),
                        ("optimizer.warmup_steps", config.optimizer.warmup_steps)):
        if count >= 2**31:
            raise config_lib.ConfigError(
                f"{what} is {count:.3g} steps of {spe} per epoch, more than the step counter "
                "holds (2**31); train for fewer steps")
    if config.optimizer.accumulate_steps > total_steps:
        raise config_lib.ConfigError(
            f"optimizer.accumulate_steps={config.optimizer.accumulate_steps} is more than the "
            f"run's {total_steps} steps, which then make no update; pass at most "
            f"--config.optimizer.accumulate_steps={total_steps}")
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
    if not o.freeze_backbone and o.backbone_lr_scale == 1.0 and o.layer_decay == 1.0:
        return
    paths = ["/".join(str(getattr(k, "key", k)) for k in path)
             for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    if not any(re.search(o.head, p) for p in paths):
        tops = sorted({p.split("/")[0] for p in paths})
        raise config_lib.ConfigError(
            f"optimizer.head={o.head!r} matches no parameter of {config.model.name} (its "
            f"layers: {', '.join(tops)}); pass a regex of the classifier's parameter paths")


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
    allow_data_change: bool = False,
    on_eval: Callable[[int, dict[str, float]], bool] | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) the run described by ``config`` in ``workdir``.

    ``stop_at_step`` stops early as an interruption would (after saving a checkpoint), for a
    run that a later call resumes. ``on_eval(step, metrics)`` is called after each evaluation
    with its metrics; returning True stops the run there: the step's checkpoint is saved and
    committed, then ``Stopped`` is raised (a search's pruner). Returns the summary that is
    also printed. Raises
    ``ConfigError`` before any work for a config that cannot run, ``Preempted`` after saving
    on SIGTERM/SIGINT, ``NonFiniteError`` under ``nan_policy='stop'``, and ``WriteError`` when
    a checkpoint, the metrics or another file of the workdir cannot be written (a full disk),
    once every save that could complete is committed; its message says where a relaunch
    resumes from. ``allow_data_change`` resumes on data other than the run recorded in
    ``run.json`` (else a ``ConfigError``), and records that it did.
    """
    start_time = time.time()
    config_lib.validate(config, jax.device_count())
    workdir = os.path.abspath(workdir)
    transfer.check_source(config.init.checkpoint)
    workdir_lib.check_workdir(config, workdir, allow_config_change)  # read only, as above
    if (summary := workdir_lib.finished_summary(config, workdir)) is not None:
        return _report_finished(summary)
    data_id = runrecord_lib.check_data(config, workdir, allow_data_change)  # read only, as above
    pretrained = _pretrained(config, workdir)  # downloaded before the workdir is touched
    with signals.stage(signals.STARTING, "before the first training step; relaunch the same "
                       "command to start (or resume) the run"):
        # Every model the run traces (init, steps, plots) computes as its performance section
        # says; the section is no part of the run's identity (config.RUN_LEVEL).
        with workdir_lib.exclusive(workdir) as lock, layers.performing(config.performance):
            # Again, now that no other launch can change the workdir under us.
            workdir_lib.check_workdir(config, workdir, allow_config_change)
            if (summary := workdir_lib.finished_summary(config, workdir)) is not None:
                return _report_finished(summary)
            runrecord_lib.check_data(config, workdir, allow_data_change, data_id)
            try:
                job = setup(config, workdir, lock, start_time, pretrained)
                try:
                    runrecord_lib.launched(workdir, job.start_step, data_id)
                    end = job.total_steps if stop_at_step is None else min(stop_at_step,
                                                                            job.total_steps)
                    summary = finish(job, end, train_loop(job, end, on_eval))
                    if end == job.total_steps:
                        runrecord_lib.finished(workdir, end)
                except BaseException:
                    _close_quietly(job.writer)
                    raise
                if job.writer:  # after the summary and the plots, which the writers get too
                    job.writer.close()
                return summary
            except errors.WriteError as e:  # a full disk: say where a relaunch goes on from
                e.then = _relaunch_note(workdir)
                raise


def _pretrained(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The converted weights of ``init.pretrained`` (fetched, verified and cached on first use),
    or "" without it or when the workdir already holds checkpoints to resume from."""
    if not config.init.pretrained or complete_steps(os.path.join(workdir, "checkpoints")):
        return ""
    from cnnjax import weights

    weights.check_config(config, data_lib.open_source(config.data).num_classes)
    return weights.fetch(config.init.pretrained, log=_log)


def _close_quietly(writer: metrics_lib.Writers | None) -> None:
    """Closes ``writer`` on the way out of an error, which stays the one reported."""
    if writer:
        with contextlib.suppress(Exception):
            writer.close()


def _relaunch_note(workdir: str) -> str:
    """What relaunching the same command does now: resume from the newest checkpoint."""
    steps_saved = complete_steps(os.path.join(workdir, "checkpoints"))
    if not steps_saved:
        return "relaunch the same command to start the run from step 0"
    return f"relaunch the same command to resume from step {steps_saved[-1]}"


def _report_finished(summary: dict[str, Any]) -> dict[str, Any]:
    """A relaunch of a finished run: says so and changes nothing."""
    _log(f"already finished at step {summary['step']} of {summary['total_steps']} "
         f"({summary['workdir']}/summary.json); nothing to do")
    _log(_done_line(summary))
    return summary


def _done_line(summary: dict[str, Any]) -> str:
    return (f"done: test accuracy {summary.get('eval_accuracy', float('nan')):.4f}, "
            f"test loss {summary.get('eval_loss', float('nan')):.4f}, "
            f"{summary['wall_time_s']:.1f} s, workdir {summary['workdir']}")


@dataclasses.dataclass
class Job:
    """What the loop needs, made once by ``setup``: the data, the compiled steps, the state,
    where it is saved and logged, and the schedule of periodic work (in steps)."""

    config: ml_collections.ConfigDict
    workdir: str
    data: data_lib.Data
    mesh: Any
    state: steps.TrainState
    num_params: int
    train_step: Callable
    eval_step: Callable
    ckpt: Checkpointer
    best: BestCheckpoint | None
    writer: metrics_lib.Writers | None  # process 0 only
    start_step: int
    total_steps: int
    eval_every: int
    pending: list[dict[str, Any]]  # per-step metrics since the last log line
    start_time: float  # when the launch began
    loop_start: float  # when the loop began: train_time_s counts steps, evals, first compile
    window: tuple[int, float] = (0, 0.0)  # (step, time) the log window started at
    last: evaluate.Evaluation | None = None  # the newest evaluation of the weights: the plots'

    def batch(self, step: int) -> dict[str, jax.Array]:
        return parallel.global_batch(self.data.train.batch(step), self.mesh)

    def log_window(self, done: int) -> dict[str, Any]:
        """The train metrics of the steps since the last log line; starts a new window."""
        t = self.config.train
        _check_finite(self.pending, done - len(self.pending), t.nan_policy)
        rate = (done - self.window[0]) / max(time.time() - self.window[1], 1e-9)
        record = {**metrics_lib.train_record(self.pending), "steps_per_sec": rate,
                  "images_per_sec": rate * self.config.data.batch_size}
        self.pending, self.window = [], (done, time.time())
        return record

    def evaluate(self, done: int) -> dict[str, float]:
        """Evaluates the state (and its average of the weights, if any); keeps it as the best
        checkpoint when it improves."""
        self.last = self.evaluation(self.state.with_eval_params())
        result = dict(self.last.metrics)
        if self.state.ema:
            ema = self.evaluation(self.state.with_ema_weights()).metrics
            result.update({k.replace("eval_", "eval_ema_", 1): v for k, v in ema.items()})
        if self.best and self.best.improves(result):
            self.best.update(done, result)
            self.best.save(self.state, self.progress(done))
        return result

    def evaluation(self, state: steps.TrainState) -> evaluate.Evaluation:
        """One pass over the test split with ``state``'s weights."""
        batches = self.data.eval_batches(self.config.data.eval_batch_size)
        return evaluate.evaluation(self.eval_step, state.variables, batches, self.mesh)

    def write(self, done: int, record: dict[str, Any]) -> None:
        if self.writer:
            self.writer.write_scalars(
                done, {"epoch": done / self.data.train.steps_per_epoch, **record})

    def progress(self, done: int) -> dict[str, Any]:
        """The JSON saved beside the state: what a resume needs besides the arrays."""
        _check_finite(self.pending, done - len(self.pending), self.config.train.nan_policy)
        return {"step": done, "data": self.data.train.state(done),
                "pending_metrics": metrics_lib.to_floats(self.pending),
                "config": config_lib.to_dict(self.config),
                "best": self.best.record if self.best else None}

    def save(self, done: int) -> None:
        if self.best:
            self.best.commit_before(done)
        self.ckpt.save(done, self.state, self.progress(done))

    def close(self) -> None:
        """Commits every started save, also after an error or a preemption; each manager is
        closed whatever another raises, and the first error is raised."""
        first = None
        for close in (self.ckpt.close, *((self.best.close,) if self.best else ())):
            try:
                close()
            except Exception as e:
                first = first or e
        if first is not None:
            raise first


def setup(config: ml_collections.ConfigDict, workdir: str, lock: WorkdirLock | None,
          start_time: float, pretrained: str = "") -> Job:
    """Data, model, optimizer, state (fresh, transferred or resumed), steps and writers;
    ``pretrained``: the converted weights of ``init.pretrained`` (``_pretrained``)."""
    data = data_lib.build(config.data, config.seed, jax.process_index(), jax.process_count())
    info, spe, t = data.info, data.train.steps_per_epoch, config.train
    total_steps = t.num_steps if t.num_steps >= 0 else int(round(t.num_epochs * spe))
    check_against_data(config, data, total_steps)
    mesh = parallel.make_mesh()  # 1-D, every device of every process; the state replicated
    model = models.from_config(config.model, info.num_classes, axis_name=parallel.AXIS)
    check_input_shape(model, info, config.model.name)
    schedule = optim.make_schedule(config.optimizer, spe, total_steps)
    depths = (optim.layer_depths(model, info.image_shape, config.optimizer.head)
              if config.optimizer.layer_decay != 1 else None)
    tx = optim.make_optimizer(config.optimizer, schedule, depths)
    state = steps.init_state(model, tx, config.seed, info.image_shape, mesh)
    check_head(config, state.params)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), t.keep_checkpoints)
    if (source := config.init.checkpoint or pretrained) and not ckpt.all_steps():
        state, notes = transfer.initialize_from(
            state, source, config.init.exclude, tx, parallel.replicated(mesh))
        _log(f"initialised from {source}" + "".join(f"\n  {n}" for n in notes))
    if t.ema_decay:  # the average starts at the initial (or transferred) weights
        state = state.replace(ema=steps.copy(state.variables))
    start_step, pending, best_so_far = 0, [], None
    if (restored := ckpt.restore_latest(state, warn=_log)) is not None:
        fresh, (state, progress) = state, restored
        if t.ema_decay and state.ema is fresh.ema:  # a checkpoint without an average
            state = state.replace(ema=steps.copy(state.variables))
        start_step, pending = progress["step"], progress["pending_metrics"]
        best_so_far = progress.get("best")
        data.train.restore(start_step, progress["data"])
        _log(f"resumed from {ckpt.directory}/{start_step}")
    writer = None
    if jax.process_index() == 0:
        workdir_lib.write_config(config, workdir)
        lock.keep()  # from here on the workdir holds this run: no more bad-input clean-up
        writer = metrics_lib.Writers(t.writers, metrics_lib.RunInfo(
            workdir, start_step, total_steps, spe, config.data.batch_size,
            config_lib.to_dict(config)))
        try:
            writer.write_hparams(config_lib.to_dict(config))
            if t.plots and start_step == 0:  # the filters before training, for the plots
                plot_data.save_initial_kernel(os.path.join(workdir, "plots"), model,
                                              state.params, info.image_shape)
        except BaseException:  # a full disk, say: the files are closed, the error reported
            _close_quietly(writer)
            raise
    stats = {"mean": info.mean, "std": info.std}
    train_step = steps.make_train_step(
        mesh, model=model, tx=tx, schedule=optim.step_schedule(config.optimizer, schedule),
        sam_rho=config.optimizer.sam_rho,
        train_loss=make_loss(t), skip_nonfinite=t.nan_policy == "skip",
        frozen_batch_stats=config.optimizer.freeze_backbone, ema_decay=t.ema_decay,
        **data.augment, **stats,  # data.augment: the ops the loader left to the device
    )
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    _log(f"training {config.model.name} ({num_params:,} params) on {info.name} "
         f"({data.num_train} train / {data.num_eval} test) for {total_steps} steps "
         f"({spe} per epoch) on {jax.device_count()} device(s); workdir {workdir}")
    job = Job(
        config=config, workdir=workdir, data=data, mesh=mesh, state=state,
        num_params=int(num_params),
        train_step=train_step, eval_step=steps.make_eval_step(mesh, model=model, **stats),
        ckpt=ckpt, best=(BestCheckpoint(workdir, t.best_metric, t.best_mode, best_so_far)
                         if t.best_metric else None),
        writer=writer, start_step=start_step, total_steps=total_steps,
        eval_every={-1: spe, 0: total_steps}.get(t.eval_every_steps, t.eval_every_steps),
        pending=pending, start_time=start_time, loop_start=time.time(),
        window=(start_step, time.time()))
    if job.best and job.best.lost(start_step):  # the state resumed is the best: save it again
        job.best.save(job.state, job.progress(start_step))
    return job


def train_loop(job: Job, end: int,
               on_eval: Callable[[int, dict[str, float]], bool] | None = None
               ) -> dict[str, float]:
    """Steps ``job`` to step ``end``; returns the last evaluation (``{}`` if none ran).
    ``on_eval`` returning True after an evaluation before ``end`` raises ``Stopped``."""
    t, last_eval, stop = job.config.train, {}, False

    def due(done: int, every: int) -> bool:
        return done % every == 0 or done == job.total_steps

    with PreemptionGuard() as preemption, contextlib.ExitStack() as cleanup:
        cleanup.callback(job.close)  # also on an error or a preemption: every save commits
        for step in range(job.start_step, end):
            job.state, metrics = job.train_step(job.state, job.batch(step))
            parallel.pace(metrics, job.mesh)
            if step == job.start_step:  # compiled and running: a signal now saves this step
                signals.set_stage(signals.TRAINING, "")
            done = step + 1
            job.pending.append(metrics)
            if job.writer:
                job.writer.on_step(done, metrics)
            record: dict[str, Any] = {}
            if due(done, t.log_every_steps):
                record.update(job.log_window(done))
            if due(done, job.eval_every):
                record.update(last_eval := job.evaluate(done))
                stop = on_eval is not None and bool(on_eval(done, last_eval)) and done < end
            if record:
                job.write(done, record)
            if preemption.requested():
                job.save(done)
                raise Preempted(done, job.workdir)  # once `job.close` has committed the save
            if done % t.checkpoint_every_steps == 0 or done == end or stop:
                job.save(done)
            if stop:
                raise Stopped(done, job.workdir)  # once `job.close` has committed the save
    if preemption.requested():  # a signal while the last checkpoint was being committed
        raise Preempted(end, job.workdir)
    return last_eval


def finish(job: Job, end: int, last_eval: dict[str, float]) -> dict[str, Any]:
    """Plots and ``summary.json`` once the last step is reached; the summary either way."""
    signals.set_stage(signals.FINISHING, "relaunch the same command to write the plots and "
                      "the summary")
    records = metrics_lib.read_jsonl(metrics_lib.metrics_path(job.workdir)) if job.writer else []
    last_eval = last_eval or metrics_lib.last_eval(records)  # a relaunch that only finishes
    if job.config.train.plots and end == job.total_steps:
        # The last evaluation's confusion: the loop evaluates at the last step, so only a
        # relaunch that just finishes has to evaluate again.
        evaluated = job.state.with_eval_params()
        confusion = (job.last or job.evaluation(evaluated)).confusion
        pngs = plot_data.write_plots(os.path.join(job.workdir, "plots"), job.config,
                                     evaluated.variables, job.data, end,
                                     records, confusion)
        if job.writer:
            job.writer.write_images(end, {os.path.splitext(os.path.basename(p))[0]: p
                                          for p in pngs})
    summary = {
        "workdir": job.workdir, "step": end, "total_steps": job.total_steps,
        "wall_time_s": time.time() - job.start_time,
        "train_time_s": time.time() - job.loop_start,
        "num_params": job.num_params,
        **last_eval,
    }
    if job.best and job.best.record:
        summary.update(best_metric=job.best.record["metric"],
                       best_value=job.best.record["value"], best_step=job.best.record["step"])
    if end < job.total_steps:
        _log(f"stopped at step {end}/{job.total_steps}; relaunch with --workdir={job.workdir} "
             "to resume")
        return summary
    if jax.process_index() == 0:  # marks the run finished (sweeps skip it)
        _write_summary(summary, job.workdir)
        job.writer.write_summary(summary)
    _log(_done_line(summary))
    return summary


def _write_summary(summary: dict[str, Any], workdir: str) -> None:
    files.write_json(os.path.join(workdir, "summary.json"), summary)

