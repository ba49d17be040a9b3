"""What a run's pictures show, computed from its model and a checkpoint: the module calls
of a forward pass, the first convolution's kernel, each stage's feature maps and the
confusion matrix. ``cnnjax.viz`` draws them.

Works for any registered model without knowing its layout: module calls are recorded in
execution order with ``flax.linen.intercept_methods`` (the mechanism behind
``capture_intermediates``, which records outputs but not their order). The first
convolution is the first module called that owns a 4-D ``kernel``; a "stage" is a run of
consecutive top-level modules whose outputs share one ``[h, w, c]`` shape, shown by its last
output (a ResNet stage's last block; a CNN layer's BatchNorm, or its convolution).

``python launch.py --mode=visualize --workdir=W [--checkpoint=latest|best|STEP]``
(``cnnjax.run.run_visualize``) draws any checkpoint's pictures (into ``plots/`` for the
latest, ``plots/<checkpoint>/`` otherwise).
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from cnnjax import data as data_lib
from cnnjax import errors, models, parallel, steps, viz

INIT_KERNEL = "first_conv_init.npy"  # the first conv's kernel at step 0, saved at the start


def trace(model: nn.Module, variables: Any, images: Any, abstract: bool = False):
    """Runs ``model`` on ``images`` (normalised float ``[b, h, w, c]``), recording module calls.

    Returns ``(started, finished)``: module paths in the order their calls began, and
    ``(path, output)`` pairs in the order they returned (4-D outputs only). ``abstract``
    traces shapes only (``jax.eval_shape``: nothing is compiled or computed).
    """
    started: list[tuple[str, ...]] = []
    paths: list[tuple[str, ...]] = []
    outputs: list = []

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        started.append(tuple(context.module.scope.path))
        out = next_fun(*args, **kwargs)
        if getattr(out, "ndim", 0) == 4:
            paths.append(tuple(context.module.scope.path))
            outputs.append(out)
        return out

    def run(variables, images):
        for recorded in (started, paths, outputs):
            recorded.clear()
        with nn.intercept_methods(interceptor):
            model.apply(variables, images, train=False)
        return list(outputs)

    if abstract:
        results = jax.eval_shape(run, variables, images)
    else:
        results = jax.jit(run)(variables, images)
    return list(started), list(zip(paths, results, strict=True))


def _conv_path(started: list, params: dict) -> tuple[str, ...] | None:
    for path in started:
        node = _subtree(params, path)
        if isinstance(node, dict) and getattr(node.get("kernel"), "ndim", 0) == 4:
            return path
    return None


def first_conv_kernel(model: nn.Module, params: dict, image_shape) -> np.ndarray | None:
    """``[kh, kw, in, out]`` kernel of the first convolution run, or None without one."""
    images = jax.ShapeDtypeStruct((1, *image_shape), np.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    started, _ = trace(model, variables, images, abstract=True)
    path = _conv_path(started, params)
    return None if path is None else _host(_subtree(params, path)["kernel"])


def _host(x: Any) -> np.ndarray:
    """A replicated (possibly multi-process) array as numpy."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def _subtree(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def save_initial_kernel(plots_dir: str, model: nn.Module, params: dict, image_shape) -> None:
    """Keeps the step-0 first-conv kernel for ``first_conv_filters.png`` at the end."""
    kernel = first_conv_kernel(model, params, image_shape)
    if kernel is not None:
        path = os.path.join(plots_dir, INIT_KERNEL)
        with errors.writing(path):
            os.makedirs(plots_dir, exist_ok=True)
            np.save(path, kernel)


def stages(finished: list) -> list[tuple[str, np.ndarray]]:
    """``(label, [h, w, c] feature maps)`` per convolution stage, from ``trace``'s output."""
    depth = min((len(p) for p, _ in finished if p), default=0)
    top = [(p, np.asarray(o[0])) for p, o in finished if len(p) == depth]
    groups: list[list] = []
    for path, out in top:
        if groups and groups[-1][-1][1].shape == out.shape:
            groups[-1].append((path, out))
        else:
            groups.append([(path, out)])
    result = []
    for g in groups:
        first, last = "/".join(g[0][0]), "/".join(g[-1][0])
        label = first if first == last else f"{first} .. {last}"
        result.append((f"{label}  {'x'.join(map(str, g[-1][1].shape))}", g[-1][1]))
    return result


def pictures(config, variables: dict, data: data_lib.Data, step: int,
             records: list[dict[str, Any]], init_dir: str,
             confusion: np.ndarray) -> viz.Pictures | None:
    """The arrays of every picture of checkpoint ``step`` (None off process 0).

    ``init_dir``: where the step-0 kernel was saved; ``confusion``: the evaluation's
    ``[true, predicted]`` counts of these weights (``evaluate.Evaluation.confusion``).
    """
    info = data.info
    if jax.process_index() != 0:
        return None
    model = models.from_config(config.model, info.num_classes)
    host = jax.tree.map(_host, variables)
    image = next(iter(data.eval_batches(config.data.eval_batch_size)))["images"][:1]
    started, finished = trace(model, host, steps.normalize(image, info.mean, info.std))
    path = _conv_path(started, host["params"])
    return viz.Pictures(
        title=f"{config.model.name} on {info.name}, step {step}", step=step,
        records=list(records), confusion=confusion, image=image[0], stages=stages(finished),
        kernel=None if path is None else _subtree(host["params"], path)["kernel"],
        initial_kernel=None if path is None else initial_kernel(
            init_dir, config, info.image_shape, info.num_classes))


def write_plots(plots_dir: str, config, variables: dict, data: data_lib.Data,
                step: int, records: list[dict[str, Any]], confusion: np.ndarray,
                init_dir: str | None = None) -> list[str]:
    """Computes and draws every picture of checkpoint ``step`` (every process calls it);
    returns the PNG paths."""
    shown = pictures(config, variables, data, step, records, init_dir or plots_dir, confusion)
    if shown is None:
        return []
    with errors.writing(f"the plots in {plots_dir}", plots_dir):
        return viz.write_plots(plots_dir, shown)


def initial_kernel(plots_dir: str, config, image_shape, num_classes: int) -> np.ndarray | None:
    """The first conv's step-0 kernel: saved at the start of training, or else re-initialised
    with the run's seed (exact unless the run started from other weights)."""
    saved = os.path.join(plots_dir, INIT_KERNEL)
    if os.path.exists(saved):
        return np.load(saved)
    model = models.from_config(config.model, num_classes)
    mesh = parallel.make_mesh(jax.local_devices()[:1])
    state = steps.init_state(model, optax.identity(), config.seed, image_shape, mesh)
    return first_conv_kernel(model, jax.device_get(state.params), image_shape)
