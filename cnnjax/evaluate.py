"""The one evaluation, and what prediction needs: the training loop, ``--mode=eval``, the
API and the plots evaluate with ``evaluation`` (one pass over the test split by the loop's
``eval_step``: loss, top-1, top-5 and the confusion counts together), so their numbers are
equal. A loaded run (``cnnjax.run``) evaluates and predicts through these.

    python launch.py --mode=eval --workdir=W [--checkpoint=latest|best|STEP]
    python launch.py --mode=predict --workdir=W --inputs=a.png,b.png   # or --inputs=x.npz

``eval`` writes ``W/eval.json`` (top-1, top-5, loss, per-class accuracy, confusion matrix);
``predict`` writes ``W/predictions.csv``. Both read the config recorded in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image

from cnnjax import config as config_lib
from cnnjax import data as data_lib
from cnnjax import errors, steps
from cnnjax import metrics as metrics_lib
from cnnjax.data.local import read_npz


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


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One pass over the test split: ``metrics`` (``eval_loss``, ``eval_accuracy``,
    ``eval_top5_accuracy``) and ``confusion``, ``[true class, predicted class]`` counts."""

    metrics: dict[str, float]
    confusion: np.ndarray

    def report(self) -> dict[str, Any]:
        """The metrics with the example count, per-class accuracy and the confusion matrix."""
        per_class = np.diag(self.confusion) / np.maximum(self.confusion.sum(1), 1)
        return {**self.metrics, "num_examples": int(self.confusion.sum()),
                "per_class_accuracy": [float(a) for a in per_class],
                "confusion_matrix": self.confusion.tolist()}


def evaluation(eval_step: Callable, variables: Any, batches, mesh) -> Evaluation:
    """The one evaluation: the loop's, ``--mode=eval``'s, the API's and the plots'.
    ``eval_step``: ``steps.make_eval_step``; ``batches``: this process's host batches of the
    test split (``data.eval_batches(size)``); every process calls it."""
    sums = steps.eval_sums(eval_step, variables, batches, mesh)
    return Evaluation(metrics_lib.summarize_eval(sums),
                      np.asarray(jax.device_get(sums["confusion"]), np.int64))


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
