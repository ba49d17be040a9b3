"""A trained run, loaded once from its workdir: what ``cnnjax.load`` returns and what every
mode on a trained run works on.

    run = cnnjax.load(W)              # or run.load(W, "best"|"latest"|STEP, ema=False)
    run.predict(images)               # class probabilities
    run.evaluate()                    # the test split's metrics, as the training loop's
    run.explain(images), run.export("stablehlo"), run.visualize()

A ``Run`` is frozen: the config, the model, the variables and the dataset's description are
read once, when it is loaded. Its evaluation reads the test split alone, never the training
split, and is the training loop's (``evaluate.evaluation``). Every model it traces computes
with the run's own ``performance`` switches (``layers.performing``).

The command line's modes are the functions below the class (``run_eval``, ``run_predict``,
``run_visualize``, ``run_explain``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from cnnjax import (
    checkpoint,
    errors,
    evaluate,
    explain,
    export,
    files,
    metrics,
    models,
    optim,
    parallel,
    plot_data,
    steps,
    weights,
)
from cnnjax import config as config_lib
from cnnjax import data as data_lib
from cnnjax import runrecord as runrecord_lib
from cnnjax.errors import ConfigError
from cnnjax.models import layers


@dataclasses.dataclass(frozen=True)
class Run:
    """Checkpoint ``checkpoint`` (step ``step``) of ``workdir`` with the config it was trained
    with. ``variables`` are host arrays (the checkpoint's average of the weights with
    ``ema``); ``model.apply(variables, x, train=False)`` gives logits of images normalised as
    training did (``info.mean``, ``info.std``)."""

    workdir: str
    checkpoint: str
    step: int
    config: ml_collections.ConfigDict
    variables: dict[str, Any]
    info: data_lib.DatasetInfo
    model: nn.Module
    ema: bool = False

    @functools.cached_property
    def _predict(self) -> Any:
        """The jitted ``(variables, images) -> probabilities``: one per run, so that each
        image shape compiles once."""
        return evaluate.make_predict(self.model, self.info.mean, self.info.std)

    def eval_data(self, process_index: int = 0, process_count: int = 1) -> data_lib.EvalData:
        """This process's share of the test split, read on each call (the training split is
        never read)."""
        return data_lib.build_eval(self.config.data, self.info, process_index, process_count)

    def test_images(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``count`` test images ``[count, h, w, c]`` uint8 and their classes."""
        images, labels = [], []
        for batch in self.eval_data().eval_batches(max(count, 1)):
            keep = np.asarray(batch["mask"]) > 0
            images.append(np.asarray(batch["images"])[keep])
            labels.append(np.asarray(batch["labels"])[keep])
            if sum(len(i) for i in images) >= count:
                break
        return np.concatenate(images)[:count], np.concatenate(labels)[:count]

    def predict(self, images: Any) -> np.ndarray:
        """Class probabilities ``[n, classes]`` of ``images``: an array ``[n, h, w(, c)]`` of
        0..255 pixels at the training size, or a list of image file paths (converted to the
        dataset's channels and size)."""
        return predict(self, images)

    def evaluate(self) -> dict[str, Any]:
        """Top-1, top-5, loss, per-class accuracy and confusion matrix on the test split, as
        ``--mode=eval`` computes them (equal to the training loop's evaluation)."""
        return evaluate_run(self)

    def explain(self, images: Any = None, *, write: bool = True) -> explain.Explanation:
        """Grad-CAM and input-gradient saliency of the predicted class for ``images`` (as for
        ``predict``; default: the first 8 test images), drawn as PNGs into ``W/plots`` unless
        ``write=False``."""
        with layers.performing(self.config.performance):
            return explain.explain(self, images, write=write)

    def export(self, format: str = "stablehlo", *,
               tolerance: float | None = None) -> export.Exported:
        """Writes the model as ``W/export/step<N>[_ema].<format>`` (a key of
        ``export.FORMATS``) after checking its logits against this model's on test images."""
        with layers.performing(self.config.performance):  # export.export checks the request
            return export.export(self, format,
                                 tolerance=export.TOLERANCE if tolerance is None else tolerance)

    def visualize(self, plots_dir: str | None = None) -> list[str]:
        """Every picture of this checkpoint (curves, kernels, feature maps, confusion matrix)
        into ``plots_dir`` (default ``W/plots``); returns the PNG paths."""
        return visualize(self, plots_dir)


def resolve_checkpoint(workdir: str, which: str = "latest") -> tuple[str, int]:
    """(Orbax directory, step) of ``which``: ``latest``, ``best`` or a step number."""
    regular, best = os.path.join(workdir, "checkpoints"), os.path.join(workdir, checkpoint.BEST_DIR)
    found, found_best = checkpoint.complete_steps(regular), checkpoint.complete_steps(best)
    if which == "latest":
        if not found:
            raise ConfigError(f"no checkpoint in {regular}; train first")
        return regular, found[-1]
    if which == "best":
        if not found_best:
            raise ConfigError(
                f"no best checkpoint in {workdir} (train.best_metric is empty, or no eval yet)")
        return best, found_best[-1]
    if not which.isdigit():
        raise ConfigError(f"--checkpoint must be 'latest', 'best' or a step number, got {which!r}")
    for directory, there in ((regular, found), (best, found_best)):
        if int(which) in there:
            return directory, int(which)
    raise ConfigError(f"no checkpoint at step {which} in {workdir}; there are: {found}")


def load(workdir: str, which: str = "latest", ema: bool = False) -> Run:
    """Restores checkpoint ``which`` of ``workdir`` with the config it was trained with;
    ``ema``: its moving average of the weights instead of the weights."""
    workdir = os.path.abspath(workdir)
    directory, step = resolve_checkpoint(workdir, which)
    try:
        state, progress = checkpoint.read_step(directory, step)
    except Exception as e:  # noqa: BLE001 -- files missing or damaged: one line naming it
        raise ConfigError(
            f"checkpoint {directory}/{step} is unreadable ({type(e).__name__}: "
            f"{errors.first_line(e)}); choose another with --checkpoint=STEP (there are: "
            f"{checkpoint.complete_steps(directory)})") from None
    # A schedule-free run is evaluated at its averaged weights, as its training loop was.
    variables = steps.variables(optim.eval_params(state.get("opt_state"), state["params"]),
                                state.get("batch_stats"))
    if ema:
        if not state.get("ema"):
            raise ConfigError(
                f"checkpoint {directory}/{step} holds no average of the weights (the run had "
                "train.ema_decay=0); leave out --ema")
        variables = dict(state["ema"])
    # Completed with the defaults of fields added since it was trained.
    config = ml_collections.ConfigDict(config_lib.complete(progress["config"]))
    info = data_lib.describe(config.data)
    model = models.from_config(config.model, info.num_classes)
    return Run(workdir, which, step, config, variables, info, model, ema)


# ------------------------------------------------------------------- functions over a run


def predict(run: Run, images: Any) -> np.ndarray:
    """``Run.predict``: probabilities ``[n, classes]`` float32."""
    info = run.info
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], str):
        images = evaluate.load_inputs(",".join(images), info.image_shape)[1]
    images = evaluate.check_images(images, info)
    with layers.performing(run.config.performance):
        return np.asarray(run._predict(run.variables, images))


def evaluation(run: Run, data: data_lib.EvalData | None = None) -> evaluate.Evaluation:
    """One pass over the test split (``data``: this process's share, read here if not given)
    by the training loop's evaluation (its ``eval_step``, batch size and summation order): the
    numbers equal the loop's. Every process calls it."""
    mesh = parallel.make_mesh()
    data = data or run.eval_data(jax.process_index(), jax.process_count())
    # The run's own model: in evaluation BatchNorm reads its running statistics, so the
    # loop's device axis (axis_name) changes nothing.
    with layers.performing(run.config.performance):
        eval_step = steps.make_eval_step(mesh, model=run.model, mean=run.info.mean,
                                         std=run.info.std)
        return evaluate.evaluation(
            eval_step, jax.device_put(run.variables, parallel.replicated(mesh)),
            data.eval_batches(run.config.data.eval_batch_size), mesh)


def evaluate_run(run: Run) -> dict[str, Any]:
    """``Run.evaluate``: the metrics, per-class accuracy and confusion matrix; warns when the
    data is not the data the run recorded."""
    runrecord_lib.warn_if_other_data(run.workdir, run.config.data)
    return evaluation(run).report()


def visualize(run: Run, plots_dir: str | None = None) -> list[str]:
    """``Run.visualize``: the pictures of the run's checkpoint, its confusion matrix from one
    evaluation."""
    plots_dir = plots_dir or os.path.join(run.workdir, "plots")
    records = metrics.read_jsonl(metrics.metrics_path(run.workdir))
    data = run.eval_data(jax.process_index(), jax.process_count())  # read once, for both
    confusion = evaluation(run, data).confusion
    with layers.performing(run.config.performance):
        return plot_data.write_plots(
            plots_dir, run.config, run.variables, data, run.step,
            [r for r in records if r["step"] <= run.step], confusion,
            os.path.join(run.workdir, "plots"))


# ---------------------------------------------------------------- the modes on a trained run


def run_eval(workdir: str, which: str = "latest", ema: bool = False) -> dict[str, Any]:
    """``--mode=eval``: evaluates checkpoint ``which`` (its average of the weights with
    ``ema``), prints a table, writes eval.json."""
    run = load(workdir, which, ema)
    config_lib.validate(run.config, jax.device_count())
    result = {"workdir": run.workdir, "checkpoint": which, "step": run.step,
              "weights": "ema" if ema else "trained", **evaluate_run(run)}
    if jax.process_index() == 0:
        files.write_json(os.path.join(run.workdir, "eval.json"), result)
        print(evaluate.format_eval(result))
    return result


def run_predict(workdir: str, inputs: str, which: str = "latest",
                ema: bool = False) -> list[dict[str, Any]]:
    """``--mode=predict``: classes and probabilities for ``inputs``, into predictions.csv."""
    run = load(workdir, which, ema)
    names, images = evaluate.load_inputs(inputs, run.info.image_shape)
    probs = predict(run, images)
    classes = weights.class_names(run.config, probs.shape[-1])  # ImageNet's, else None
    rows = [{"input": n, "predicted": int(p.argmax()), "probability": float(p.max()),
             **({"class_name": classes[int(p.argmax())]} if classes else {}),
             **{f"p_{k}": float(v) for k, v in enumerate(p)}}
            for n, p in zip(names, probs, strict=True)]
    path = os.path.join(run.workdir, "predictions.csv")
    if jax.process_index() == 0:
        files.write_csv(path, rows, "input")
        print(f"checkpoint {which} (step {run.step}); predictions in {path}")
        for r in rows:
            name = f" ({r['class_name']})" if "class_name" in r else ""
            print(f"{r['input']}: class {r['predicted']}{name} (p={r['probability']:.4f})")
    return rows


def run_visualize(workdir: str, which: str = "latest", ema: bool = False) -> list[str]:
    """``--mode=visualize``: every picture for checkpoint ``which`` of ``workdir`` (of its
    average of the weights with ``ema``, into ``plots/<which>_ema``)."""
    run = load(workdir, which, ema)
    written = visualize(run, _plots_dir(run))
    for path in written:
        print(path)
    return written


def run_explain(workdir: str, images: str | None = None, which: str = "latest",
                ema: bool = False) -> explain.Explanation:
    """``--mode=explain``: the pictures of checkpoint ``which`` for ``images`` (a.png,b.png or
    x.npz; default: the first test images), into ``W/plots`` (``plots/<which>[_ema]``
    for another checkpoint than the latest or for ``ema``); prints one line per image."""
    run = load(workdir, which, ema)
    names, pixels = (evaluate.load_inputs(images, run.info.image_shape) if images
                     else (None, None))  # None: explain's default, the first test images
    with layers.performing(run.config.performance):
        result = explain.explain(run, pixels, names=names, plots_dir=_plots_dir(run))
    if jax.process_index() == 0:
        print(f"checkpoint {which} (step {run.step}); Grad-CAM of "
              f"{result.layer or 'no feature maps (saliency only)'}")
        truth = [None] * len(result.names) if result.labels is None else result.labels
        classes = weights.class_names(run.config, run.info.num_classes)  # ImageNet's, or None
        called = (lambda c: f"class {c} ({classes[c]})") if classes else (lambda c: f"class {c}")
        for name, k, p, y, path in zip(result.names, result.predicted, result.probability,
                                       truth, result.paths, strict=True):
            known = "" if y is None else f", true {called(int(y))}"
            print(f"{name}: {called(int(k))} (p={p:.4f}){known} -> {path}")
    return result


def _plots_dir(run: Run) -> str:
    """Where a mode draws: ``W/plots``, ``W/plots/<which>`` for another checkpoint than the
    latest, ``W/plots/<which>_ema`` for its average of the weights."""
    plots = os.path.join(run.workdir, "plots")
    if run.ema:
        return os.path.join(plots, f"{run.checkpoint}_ema")
    return plots if run.checkpoint == "latest" else os.path.join(plots, run.checkpoint)


def run_export(workdir: str, fmt: str, which: str = "latest", ema: bool = False,
               tolerance: float = export.TOLERANCE) -> export.Exported:
    """``--mode=export``: checkpoint ``which`` as ``fmt``, checked; prints where it went."""
    export.check_request(fmt, tolerance)  # before the checkpoint is read
    result = load(workdir, which, ema).export(fmt, tolerance=tolerance)
    print(export.describe(result))
    return result
