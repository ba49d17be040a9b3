"""Pictures of a run, as PNGs in ``<workdir>/plots``:

* ``curves.png``: train and test loss and accuracy against the step (from metrics.jsonl);
* ``first_conv_filters.png``: the first convolution's filters at step 0 and now;
* ``feature_maps.png``: a test image and the feature maps of each convolution stage;
* ``confusion_matrix.png``: true against predicted class on the test split.

Written at the end of training (``train.plots``), and by
``python launch.py --mode=visualize --workdir=W [--checkpoint=latest|best|STEP]`` for any
checkpoint (into ``plots/`` for the latest, ``plots/<checkpoint>/`` otherwise).

Works for any registered model without knowing its layout: module calls are recorded in
execution order with ``flax.linen.intercept_methods`` (the mechanism behind
``capture_intermediates``, which records outputs but not their order). The first
convolution is the first module called that owns a 4-D ``kernel``; a "stage" is a run of
consecutive top-level modules whose outputs share one ``[h, w, c]`` shape, shown by its last
output (a ResNet stage's last block; a CNN layer's BatchNorm, or its convolution).
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from cnnjax import data as data_lib
from cnnjax import evaluate, metrics, models, parallel, steps

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
        os.makedirs(plots_dir, exist_ok=True)
        np.save(os.path.join(plots_dir, INIT_KERNEL), kernel)


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


# ------------------------------------------------------------------------------ drawing


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    # Margins are set by hand: a layout engine would double the drawing time.
    return Figure(figsize=(width, height), dpi=100)


def plot_curves(records: list[dict[str, Any]], path: str, title: str = "") -> None:
    fig = _figure(10, 4)
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
        for split, style in (("train", "-"), ("eval", "o-")):
            points = [(r["step"], r[f"{split}_{metric}"]) for r in records
                      if f"{split}_{metric}" in r]
            if points:
                x, y = zip(*points, strict=True)
                ax.plot(x, y, style, ms=3, label="test" if split == "eval" else split)
        ax.set(xlabel="step", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.84, wspace=0.22)
    fig.savefig(path)


def _mosaic(tiles: np.ndarray, columns: int, fill: float = np.nan) -> np.ndarray:
    """``[n, h, w(, 3)]`` tiles -> one image, ``columns`` wide, with 1-pixel gaps."""
    n, h, w = tiles.shape[:3]
    rows = -(-n // columns)
    out = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1, *tiles.shape[3:]), fill)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = tile
    return out


def _filter_image(kernel: np.ndarray) -> tuple[np.ndarray, bool]:
    tiles = np.moveaxis(kernel, -1, 0)  # [out, kh, kw, in]
    columns = int(np.ceil(np.sqrt(len(tiles))))
    if tiles.shape[-1] == 3:  # colour filters: each stretched to [0, 1]
        lo = tiles.min(axis=(1, 2, 3), keepdims=True)
        hi = tiles.max(axis=(1, 2, 3), keepdims=True)
        return _mosaic((tiles - lo) / np.maximum(hi - lo, 1e-12), columns, 1.0), True
    return _mosaic(tiles.mean(-1), columns), False


def plot_filters(before: np.ndarray | None, after: np.ndarray, path: str, step: int) -> None:
    """Side by side: the first conv's filters at step 0 and at ``step``."""
    panels = [("step 0 (initialisation)", before), (f"step {step}", after)]
    panels = [(t, k) for t, k in panels if k is not None]
    fig = _figure(5 * len(panels), 5.4)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.03, top=0.84, wspace=0.1)
    for ax, (title, kernel) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels,
                                   strict=True):
        image, rgb = _filter_image(np.asarray(kernel, np.float64))
        if rgb:
            ax.imshow(image, interpolation="nearest")
        else:
            vmax = np.nanmax(np.abs(image))
            shown = ax.imshow(image, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
            fig.colorbar(shown, ax=ax, shrink=0.8)
        ax.set_title(f"{title}\n{kernel.shape[-1]} filters {kernel.shape[0]}x{kernel.shape[1]}"
                     f"x{kernel.shape[2]}")
        ax.axis("off")
    fig.suptitle("first convolution layer")
    fig.savefig(path)


def plot_feature_maps(image: np.ndarray, maps: list[tuple[str, np.ndarray]], path: str,
                      max_channels: int = 16) -> None:
    """The input image, then per stage its ``max_channels`` most active channels."""
    fig = _figure(10, 1.9 * (len(maps) + 1))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.8 / fig.get_figheight(),
                        hspace=0.35)
    axes = np.atleast_1d(fig.subplots(len(maps) + 1, 1))
    axes[0].imshow(image.squeeze(-1) if image.shape[-1] == 1 else image,
                   cmap="gray", interpolation="nearest")
    axes[0].set_title(f"input {'x'.join(map(str, image.shape))}")
    for ax, (label, fmap) in zip(axes[1:], maps, strict=True):
        order = np.argsort(-fmap.mean(axis=(0, 1)))[:max_channels]
        tiles = np.moveaxis(fmap[..., order], -1, 0).astype(np.float64)
        # Each map on its own scale shows its pattern; 1x1 maps have none, so they share one.
        scale_axes = (1, 2) if fmap.shape[0] * fmap.shape[1] > 1 else (0, 1, 2)
        lo = tiles.min(axis=scale_axes, keepdims=True)
        hi = tiles.max(axis=scale_axes, keepdims=True)
        tiles = (tiles - lo) / np.maximum(hi - lo, 1e-12)
        ax.imshow(_mosaic(tiles, min(len(tiles), 8)), cmap="viridis", interpolation="nearest")
        ax.set_title(f"{label}  ({len(order)} most active of {fmap.shape[-1]} channels)")
    for ax in axes:
        ax.axis("off")
    fig.suptitle("feature maps", y=1 - 0.1 / fig.get_figheight(), va="top")
    fig.savefig(path)


def plot_confusion(confusion: np.ndarray, path: str, title: str = "") -> None:
    cm = np.asarray(confusion)
    n = len(cm)
    # Capped: at 1,000 classes an uncapped figure is 45,000 pixels a side (gigabytes).
    fig = _figure(min(max(5, 0.45 * n + 2), 16), min(max(4.5, 0.45 * n + 1.5), 15.5))
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.1, top=0.92)
    ax = fig.subplots()
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    shown = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, label="fraction of the true class")
    if n <= 30:
        for (i, j), v in np.ndenumerate(cm):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"{title}accuracy {np.trace(cm) / max(cm.sum(), 1):.4f} on {cm.sum()} examples")
    fig.savefig(path)


# ------------------------------------------------------------------------------ a run's plots


def write_plots(
    plots_dir: str, config, variables: dict, data, mesh, step: int,
    records: list[dict[str, Any]] | None = None, init_dir: str | None = None,
) -> list[str]:
    """Draws every picture of checkpoint ``step``; returns the PNG paths (process 0 draws;
    every process must call it, as the confusion matrix is computed over all devices).

    ``init_dir``: where the step-0 kernel was saved (default ``plots_dir``).
    """
    info = data.info
    confusion = evaluate.confusion_matrix(config, variables, data, mesh)
    if jax.process_index() != 0:
        return []
    model = models.from_config(config.model, info.num_classes)
    host = jax.tree.map(_host, variables)
    image = next(iter(data.eval_batches(config.data.eval_batch_size)))["images"][:1]
    started, finished = trace(model, host, steps.normalize(image, info.mean, info.std))
    os.makedirs(plots_dir, exist_ok=True)
    name = f"{config.model.name} on {info.name}, step {step}"
    written = {}
    if records:
        written["curves"] = os.path.join(plots_dir, "curves.png")
        plot_curves(records, written["curves"], name)
    path = _conv_path(started, host["params"])
    if path is not None:
        written["filters"] = os.path.join(plots_dir, "first_conv_filters.png")
        before = initial_kernel(init_dir or plots_dir, config, info.image_shape,
                                info.num_classes)
        plot_filters(before, _subtree(host["params"], path)["kernel"],
                     written["filters"], step)
    maps = stages(finished)
    if maps:
        written["maps"] = os.path.join(plots_dir, "feature_maps.png")
        plot_feature_maps(image[0], maps, written["maps"])
    written["confusion"] = os.path.join(plots_dir, "confusion_matrix.png")
    plot_confusion(confusion, written["confusion"], f"{name}: ")
    return list(written.values())


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


def visualize(workdir: str, which: str = "latest") -> list[str]:
    """``--mode=visualize``: every picture for checkpoint ``which`` of ``workdir``."""
    run = evaluate.load_run(workdir, which)
    data = data_lib.build(run.config.data, run.config.seed, jax.process_index(),
                          jax.process_count())
    init_dir = os.path.join(run.workdir, "plots")
    plots_dir = init_dir if which == "latest" else os.path.join(init_dir, which)
    jsonl = os.path.join(run.workdir, "metrics.jsonl")
    records = metrics.read_jsonl(jsonl) if os.path.exists(jsonl) else []
    written = write_plots(plots_dir, run.config, run.variables, data, parallel.make_mesh(),
                          run.step, [r for r in records if r["step"] <= run.step], init_dir)
    for path in written:
        print(path)
    return written
