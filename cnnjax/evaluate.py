"""Evaluation and prediction from a workdir's checkpoints.

    python launch.py --mode=eval --workdir=W [--checkpoint=latest|best|STEP]
    python launch.py --mode=predict --workdir=W --inputs=a.png,b.png   # or --inputs=x.npz

``eval`` writes ``W/eval.json`` (top-1, top-5, loss, per-class accuracy, confusion matrix);
its loss and accuracies come from the training loop's own ``eval_step`` on the same batches,
so they equal the loop's last evaluation of that checkpoint. ``predict`` writes
``W/predictions.csv``. Both read the config recorded in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image

from cnnjax import checkpoint, errors, files, models, parallel, steps
from cnnjax import config as config_lib
from cnnjax import data as data_lib
from cnnjax import metrics as metrics_lib
from cnnjax.data.local import read_npz

# --------------------------------------------------------------------------- loading a run


@dataclasses.dataclass
class Run:
    """A checkpoint of a workdir with the config it was trained with (``variables`` are host
    arrays): its ``model``, ``predict(images)`` and ``evaluate()``."""

    workdir: str
    checkpoint: str
    step: int
    config: ml_collections.ConfigDict
    variables: dict[str, Any]
    ema: bool = False  # the variables are the checkpoint's average of the weights

    @property
    def info(self) -> data_lib.DatasetInfo:
        """The dataset's description as training saw it (size, channels, classes, mean/std)."""
        return data_lib.describe(self.config.data)

    @property
    def model(self):
        """The Flax module: ``run.model.apply(run.variables, x, train=False)`` gives logits
        of images normalised as training did."""
        return models.from_config(self.config.model, self.info.num_classes)

    def predict(self, images: Any) -> np.ndarray:
        """Class probabilities ``[n, classes]`` of ``images``: an array ``[n, h, w(, c)]`` of
        0..255 pixels at the training size, or a list of image file paths (converted to the
        dataset's channels and size)."""
        info = self.info
        if isinstance(images, (list, tuple)) and images and isinstance(images[0], str):
            images = load_inputs(",".join(images), info.image_shape)[1]
        predict = make_predict(self.model, info.mean, info.std)
        return np.asarray(predict(self.variables, check_images(images, info)))

    def evaluate(self) -> dict[str, Any]:
        """Top-1, top-5, loss, per-class accuracy and confusion matrix on the test split, as
        ``--mode=eval`` computes them (equal to the training loop's evaluation)."""
        data = data_lib.build(self.config.data, self.config.seed, jax.process_index(),
                              jax.process_count())
        return evaluate(self.config, self.variables, data, parallel.make_mesh())


def test_images(run, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` images of the run's test split and their classes."""
    data = data_lib.build(run.config.data, run.config.seed, 0, 1)
    images, labels = [], []
    for batch in data.eval_batches(max(count, 1)):
        keep = np.asarray(batch["mask"]) > 0
        images.append(np.asarray(batch["images"])[keep])
        labels.append(np.asarray(batch["labels"])[keep])
        if sum(len(i) for i in images) >= count:
            break
    return np.concatenate(images)[:count], np.concatenate(labels)[:count]


def resolve_checkpoint(workdir: str, which: str = "latest") -> tuple[str, int]:
    """(Orbax directory, step) of ``which``: ``latest``, ``best`` or a step number."""
    regular, best = os.path.join(workdir, "checkpoints"), os.path.join(workdir, checkpoint.BEST_DIR)
    found, found_best = checkpoint.complete_steps(regular), checkpoint.complete_steps(best)
    if which == "latest":
        if not found:
            raise config_lib.ConfigError(f"no checkpoint in {regular}; train first")
        return regular, found[-1]
    if which == "best":
        if not found_best:
            raise config_lib.ConfigError(
                f"no best checkpoint in {workdir} (train.best_metric is empty, or no eval yet)")
        return best, found_best[-1]
    if not which.isdigit():
        raise config_lib.ConfigError(
            f"--checkpoint must be 'latest', 'best' or a step number, got {which!r}")
    for directory, there in ((regular, found), (best, found_best)):
        if int(which) in there:
            return directory, int(which)
    raise config_lib.ConfigError(
        f"no checkpoint at step {which} in {workdir}; there are: {found}")


def load_run(workdir: str, which: str = "latest", ema: bool = False) -> Run:
    """Restores checkpoint ``which`` of ``workdir`` with the config it was trained with;
    ``ema``: its moving average of the weights instead of the weights."""
    workdir = os.path.abspath(workdir)
    directory, step = resolve_checkpoint(workdir, which)
    try:
        state, progress = checkpoint.read_step(directory, step)
    except Exception as e:  # noqa: BLE001 -- files missing or damaged: one line naming it
        reason = errors.first_line(e)
        raise config_lib.ConfigError(
            f"checkpoint {directory}/{step} is unreadable ({type(e).__name__}: {reason}); "
            "choose another with --checkpoint=STEP (there are: "
            f"{checkpoint.complete_steps(directory)})") from None
    variables = steps.variables(state["params"], state.get("batch_stats"))
    if ema:
        if not state.get("ema"):
            raise config_lib.ConfigError(
                f"checkpoint {directory}/{step} holds no average of the weights (the run had "
                "train.ema_decay=0); leave out --ema")
        variables = dict(state["ema"])
    # Completed with the defaults of fields added since it was trained.
    config = ml_collections.ConfigDict(config_lib.complete(progress["config"]))
    return Run(workdir, which, step, config, variables, ema)


def check_images(images: Any, info: data_lib.DatasetInfo) -> np.ndarray:
    """``images`` as uint8 ``[n, h, w, c]`` at the dataset's shape, or a one-line error."""
    images = np.asarray(images)
    if images.ndim == 3 and info.image_shape[2] == 1:
        images = images[..., None]
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(info.image_shape) or not len(images):
        raise config_lib.ConfigError(
            f"images of shape {images.shape} do not fit {info.name}'s "
            f"{'x'.join(map(str, info.image_shape))}; pass [n, "
            f"{', '.join(map(str, info.image_shape))}] pixels, or image file paths")
    return images.astype(np.uint8)


def make_predict(model, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """``(variables, images [b, h, w, c] uint8) -> probabilities [b, classes] float32``."""

    def predict(variables, images):
        logits = model.apply(variables, steps.normalize(images, mean, std), train=False)
        return jax.nn.softmax(logits, axis=-1)

    return jax.jit(predict)


# ------------------------------------------------------------------------------ evaluation


def _eval_setup(config, variables, data, mesh):
    info = data.info
    stats = {"mean": info.mean, "std": info.std}
    return info, stats, jax.device_put(variables, parallel.replicated(mesh))


def eval_metrics(config: ml_collections.ConfigDict, variables: dict[str, Any],
                 data: data_lib.Data, mesh) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy over the test split, computed as the training loop
    does (its ``eval_step``, batch size and summation order), so the numbers are equal."""
    info, stats, variables = _eval_setup(config, variables, data, mesh)
    model = models.from_config(config.model, info.num_classes, axis_name=parallel.AXIS)
    eval_step = steps.make_eval_step(mesh, model=model, **stats)
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                             batch_stats=variables.get("batch_stats", {}), opt_state=None,
                             rng=jnp.zeros((2,), jnp.uint32))
    return metrics_lib.summarize_eval(steps.eval_sums(
        eval_step, state, data.eval_batches(config.data.eval_batch_size), mesh))


def confusion_matrix(config: ml_collections.ConfigDict, variables: dict[str, Any],
                     data: data_lib.Data, mesh) -> np.ndarray:
    """``[true class, predicted class]`` counts over the test split (every process calls)."""
    info, stats, variables = _eval_setup(config, variables, data, mesh)
    predict = make_predict(models.from_config(config.model, info.num_classes), **stats)
    confusion = np.zeros((info.num_classes,) * 2, np.int64)
    for local in data.eval_batches(config.data.eval_batch_size):
        batch = parallel.global_batch(local, mesh)
        probs = predict(variables, batch["images"])
        predicted, labels, mask = _gather(jnp.argmax(probs, -1), batch["labels"], batch["mask"])
        keep = mask > 0
        np.add.at(confusion, (labels[keep], predicted[keep]), 1)
    return confusion


def evaluate(config: ml_collections.ConfigDict, variables: dict[str, Any],
             data: data_lib.Data, mesh) -> dict[str, Any]:
    """``eval_metrics`` plus per-class accuracy and the confusion matrix."""
    result: dict[str, Any] = eval_metrics(config, variables, data, mesh)
    confusion = confusion_matrix(config, variables, data, mesh)
    per_class = np.diag(confusion) / np.maximum(confusion.sum(1), 1)
    result.update(num_examples=int(confusion.sum()),
                  per_class_accuracy=[float(a) for a in per_class],
                  confusion_matrix=confusion.tolist())
    return result


def _gather(*arrays: jax.Array) -> list[np.ndarray]:
    if jax.process_count() == 1:
        return [np.asarray(a) for a in arrays]
    return [np.asarray(a) for a in multihost_utils.process_allgather(arrays, tiled=True)]


def run_eval(workdir: str, which: str = "latest", ema: bool = False) -> dict[str, Any]:
    """``--mode=eval``: evaluates checkpoint ``which`` (its average of the weights with
    ``ema``), prints a table, writes eval.json."""
    run = load_run(workdir, which, ema)
    config_lib.validate(run.config, jax.device_count())
    result = {"workdir": run.workdir, "checkpoint": which, "step": run.step,
              "weights": "ema" if ema else "trained", **run.evaluate()}
    if jax.process_index() == 0:
        files.write_json(os.path.join(run.workdir, "eval.json"), result)
        print(format_eval(result))
    return result


def format_eval(result: dict[str, Any]) -> str:
    """The eval result as a plain-text report: metrics, per-class table, confusion matrix."""
    cm = np.asarray(result["confusion_matrix"])
    lines = [
        f"checkpoint {result['checkpoint']} (step {result['step']}) of {result['workdir']}"
        + (" (average of the weights)" if result.get("weights") == "ema" else ""),
        f"top-1 accuracy {result['eval_accuracy']:.4f}  top-5 accuracy "
        f"{result['eval_top5_accuracy']:.4f}  loss {result['eval_loss']:.4f}  "
        f"({result['num_examples']} examples)",
        "", "class  examples  accuracy",
    ]
    for c, acc in enumerate(result["per_class_accuracy"]):
        lines.append(f"{c:>5}  {cm[c].sum():>8}  {acc:>8.4f}")
    width = max(len(str(cm.max())), len(str(len(cm) - 1))) + 1
    lines += ["", "confusion matrix (rows: true class, columns: predicted)",
              "     " + "".join(f"{c:>{width}}" for c in range(len(cm)))]
    lines += [f"{c:>4} " + "".join(f"{v:>{width}}" for v in row) for c, row in enumerate(cm)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ prediction


def load_inputs(spec: str, image_shape: Sequence[int]) -> tuple[list[str], np.ndarray]:
    """Names and ``[n, h, w, c] uint8`` images from ``a.png,b.png`` or ``x.npz``.

    Image files are converted to the dataset's channels and resized to its size. An ``.npz``
    holds ``images`` (or a single array) ``[n, h, w(, c)]`` in 0..255, of the dataset's size.
    """
    h, w, c = image_shape
    paths = [p for p in spec.split(",") if p]
    if not paths:
        raise config_lib.ConfigError("--inputs is empty; pass a.png,b.png or x.npz")
    for p in paths:
        if not os.path.isfile(p):
            raise config_lib.ConfigError(f"input file {p!r} not found")
    npz = [p for p in paths if p.endswith(".npz")]
    if npz and len(paths) > 1:
        raise config_lib.ConfigError(
            f"--inputs mixes an .npz ({npz[0]}) with other files; pass image files, or one .npz")
    if npz:
        arrays = read_npz(paths[0])
        if not arrays:
            raise config_lib.ConfigError(f"{paths[0]} holds no array; expected images "
                                         "[n, h, w(, c)] in 0..255")
        images = arrays["images"] if "images" in arrays else next(iter(arrays.values()))
        if images.ndim not in (3, 4) or not len(images) or not (
                np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype,
                                                                        np.floating)):
            raise config_lib.ConfigError(
                f"{paths[0]} holds {images.dtype} images of shape {images.shape}; expected "
                "[n, h, w(, c)] numbers in 0..255")
        if not (np.all(np.isfinite(images)) and images.min() >= 0 and images.max() <= 255):
            raise config_lib.ConfigError(
                f"{paths[0]} holds values outside 0..255 (from {images.min()} to "
                f"{images.max()}); scale the images to 0..255")
        if images.ndim == 3:
            images = images[..., None]
        if images.shape[1:] != (h, w, c):
            raise config_lib.ConfigError(
                f"{paths[0]} holds images of shape {images.shape[1:]}; the model takes "
                f"{(h, w, c)}")
        names = [f"{paths[0]}[{i}]" for i in range(len(images))]
        return names, images.astype(np.uint8)
    images = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert("L" if c == 1 else "RGB")
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                images.append(np.asarray(im, np.uint8).reshape(h, w, c))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise config_lib.ConfigError(
                f"input {p} is not an image PIL can read ({type(e).__name__}: "
                f"{errors.first_line(e)}); pass image files (.png, "
                ".jpg, ...) or one .npz") from None
    return paths, np.stack(images)


def run_predict(workdir: str, inputs: str, which: str = "latest",
                ema: bool = False) -> list[dict[str, Any]]:
    """``--mode=predict``: classes and probabilities for ``inputs``, into predictions.csv."""
    run = load_run(workdir, which, ema)
    names, images = load_inputs(inputs, run.info.image_shape)
    probs = run.predict(images)
    rows = [{"input": n, "predicted": int(p.argmax()), "probability": float(p.max()),
             **{f"p_{k}": float(v) for k, v in enumerate(p)}}
            for n, p in zip(names, probs, strict=True)]
    path = os.path.join(run.workdir, "predictions.csv")
    if jax.process_index() == 0:
        files.write_csv(path, rows, "input")
        print(f"checkpoint {which} (step {run.step}); predictions in {path}")
        for r in rows:
            print(f"{r['input']}: class {r['predicted']} (p={r['probability']:.4f})")
    return rows
