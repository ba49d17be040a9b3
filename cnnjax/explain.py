"""What a trained network looks at: Grad-CAM and input-gradient saliency, for any model.

    cnnjax --mode=explain --workdir=W [--images=a.png,b.png | --images=x.npz] [--checkpoint=best]
    cnnjax.load(W).explain(images)

For each image, the class the model predicts and two maps of where that prediction comes from:

* **Grad-CAM** (Selvaraju et al., 2017): the feature maps ``A`` of the last convolution stage
  whose maps are larger than 1x1, weighted per channel by the mean gradient of the predicted
  class's logit over them, summed over channels and rectified, ``relu(sum_c mean_hw(dy/dA_c)
  A_c)``, then resized to the image (bilinear) and scaled to 0..1;
* **saliency** (Simonyan et al., 2014): the largest absolute gradient of that logit with respect
  to each input pixel, over the channels, scaled to 0..1.

The layer is found without knowing the model, as ``--mode=visualize`` finds its stages: the last
top-level module call with a 4-D output of more than one position (a ResNet's last stage, a
CNN's last convolution layer). Its gradient is taken by adding a zero to that output
(``flax.linen.intercept_methods``) and differentiating with respect to the zero. A model with no
such output (the MLP) gets saliency only.

Without images, the first 8 test images are explained, with their true class. The pictures are
``W/plots/explain_<i>.png`` for the latest checkpoint (``plots/<checkpoint>/`` otherwise), beside
the filter and feature-map plots: the image, the Grad-CAM overlay and the saliency map, titled
with the predicted class and its probability.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import errors, evaluate, plot_data, steps

DEFAULT_COUNT = 8  # test images explained when none are given


@dataclasses.dataclass
class Explanation:
    """Per image: the input, the predicted class and probability, and the two maps."""

    images: np.ndarray  # [n, h, w, c] uint8
    names: list[str]
    predicted: np.ndarray  # [n] int
    probability: np.ndarray  # [n] float: of the predicted class
    gradcam: np.ndarray | None  # [n, h, w] in 0..1; None for a model without feature maps
    saliency: np.ndarray  # [n, h, w] in 0..1
    layer: str | None  # the Grad-CAM layer's path and map shape, "layer3  4x4x64"
    labels: np.ndarray | None = None  # [n] true classes, when known
    paths: list[str] = dataclasses.field(default_factory=list)  # the PNGs written


def gradcam_layer(model: nn.Module, variables: Any, image_shape) -> tuple | None:
    """``(path, occurrence, [h, w, c])`` of the module call whose output Grad-CAM uses: the last
    top-level call with a 4-D output of more than one position; None without one."""
    images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    _, finished = plot_data.trace(model, variables, images, abstract=True)
    depth = min((len(p) for p, _ in finished if p), default=0)
    chosen = None
    seen: dict[tuple, int] = {}
    for path, out in finished:
        occurrence = seen.get(path, 0)
        seen[path] = occurrence + 1
        if len(path) == depth and out.shape[1] * out.shape[2] > 1:
            chosen = (path, occurrence, tuple(out.shape[1:]))
    return chosen


def _scale(maps: jax.Array) -> jax.Array:
    """Each ``[h, w]`` map divided by its largest value (a map of zeros stays zeros)."""
    top = maps.max(axis=(1, 2), keepdims=True)
    return jnp.where(top > 0, maps / jnp.where(top > 0, top, 1), 0)


def make_explain(model: nn.Module, variables: Any, image_shape, mean, std):
    """``explain(images uint8 [n, h, w, c]) -> (probabilities, gradcam or None, saliency)``,
    jitted; see the module docstring."""
    layer = gradcam_layer(model, variables, image_shape)
    h, w = image_shape[:2]

    def forward(pixels, delta):
        calls = [0]
        captured = []

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if (layer is not None and context.method_name == "__call__"
                    and tuple(context.module.scope.path) == layer[0]):
                if calls[0] == layer[1]:
                    out = out + delta.astype(out.dtype)
                    captured.append(out)
                calls[0] += 1
            return out

        with nn.intercept_methods(interceptor):
            logits = model.apply(variables, steps.normalize(pixels, mean, std), train=False)
        logits = logits.astype(jnp.float32)
        chosen = jax.nn.one_hot(jnp.argmax(jax.lax.stop_gradient(logits), -1), logits.shape[-1])
        # Eval mode: each image's logits depend on that image only, so the gradient of the sum
        # is each image's own gradient.
        return jnp.sum(logits * chosen), (logits, captured[0] if captured else None)

    @jax.jit
    def explain(images):
        pixels = images.astype(jnp.float32)
        n = images.shape[0]
        delta = jnp.zeros((n, *layer[2]), jnp.float32) if layer else jnp.zeros((n,))
        grad_of = jax.grad(forward, argnums=(0, 1), has_aux=True)
        (d_pixels, d_maps), (logits, maps) = grad_of(pixels, delta)
        saliency = _scale(jnp.abs(d_pixels).max(axis=-1))
        gradcam = None
        if layer is not None:
            weights = d_maps.mean(axis=(1, 2))  # [n, c]
            cam = jax.nn.relu(jnp.einsum("nhwc,nc->nhw", maps.astype(jnp.float32), weights))
            gradcam = _scale(jax.image.resize(cam, (n, h, w), "bilinear"))
        return jax.nn.softmax(logits), gradcam, saliency

    return explain, None if layer is None else (
        f"{'/'.join(layer[0])}  {'x'.join(map(str, layer[2]))}")


def explain(run, images: Any = None, *, labels: Any = None, names: list[str] | None = None,
            plots_dir: str | None = None, write: bool = True) -> Explanation:
    """Grad-CAM and saliency of ``run`` (a ``cnnjax.run.Run``) for ``images`` (``[n, h, w(, c)]``
    0..255 pixels, or image file paths; default: the first 8 test images), drawn into
    ``plots_dir`` (default ``W/plots``) unless ``write=False``."""
    info = run.info
    if images is None:
        images, labels = run.test_images(DEFAULT_COUNT)
        names = names or [f"test image {i}" for i in range(len(images))]
    elif isinstance(images, (list, tuple)) and images and isinstance(images[0], str):
        names, images = evaluate.load_inputs(",".join(images), info.image_shape)
    images = evaluate.check_images(images, info)
    names = names or [f"image {i}" for i in range(len(images))]
    fn, layer = make_explain(run.model, run.variables, info.image_shape, info.mean, info.std)
    probs, gradcam, saliency = jax.device_get(fn(images))
    result = Explanation(
        images=images, names=list(names), predicted=probs.argmax(-1),
        probability=probs.max(-1), gradcam=None if gradcam is None else np.asarray(gradcam),
        saliency=np.asarray(saliency), layer=layer,
        labels=None if labels is None else np.asarray(labels))
    if write and jax.process_index() == 0:
        from cnnjax import viz

        plots_dir = plots_dir or os.path.join(run.workdir, "plots")
        with errors.writing(f"the plots in {plots_dir}", plots_dir):
            result.paths = viz.write_explanations(plots_dir, result,
                                                  f"{run.config.model.name}, step {run.step}")
    return result
