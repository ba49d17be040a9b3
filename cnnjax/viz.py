"""Pictures of a run, drawn from arrays given to it, as PNGs in ``<workdir>/plots``:

* ``curves.png``: train and test loss and accuracy against the step (from metrics.jsonl);
* ``first_conv_filters.png``: the first convolution's filters at step 0 and now;
* ``feature_maps.png``: a test image and the feature maps of each convolution stage;
* ``confusion_matrix.png``: true against predicted class on the test split;
* ``explain_<i>.png`` (``--mode=explain``): an image, its Grad-CAM overlay and its saliency.

``cnnjax.plot_data`` computes what they show; this module only draws (matplotlib, no pyplot).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np


@dataclasses.dataclass
class Pictures:
    """What a checkpoint's pictures show; a picture whose arrays are missing is not drawn."""

    title: str  # "cnn on digits, step 1260"
    step: int
    records: list[dict[str, Any]]  # metrics.jsonl up to ``step``
    confusion: np.ndarray  # [true class, predicted class] counts
    image: np.ndarray  # [h, w, c] uint8: the test image of the feature maps
    stages: list[tuple[str, np.ndarray]]  # (label, [h, w, c] maps) per stage
    kernel: np.ndarray | None  # the first convolution's [kh, kw, in, out] kernel
    initial_kernel: np.ndarray | None  # the same at step 0


def write_plots(plots_dir: str, shown: Pictures) -> list[str]:
    """Draws ``shown`` into ``plots_dir``; returns the PNG paths."""
    os.makedirs(plots_dir, exist_ok=True)
    written = []

    def path(name: str) -> str:
        written.append(os.path.join(plots_dir, name))
        return written[-1]

    if shown.records:
        plot_curves(shown.records, path("curves.png"), shown.title)
    if shown.kernel is not None:
        plot_filters(shown.initial_kernel, shown.kernel, path("first_conv_filters.png"),
                     shown.step)
    if shown.stages:
        plot_feature_maps(shown.image, shown.stages, path("feature_maps.png"))
    plot_confusion(shown.confusion, path("confusion_matrix.png"), f"{shown.title}: ")
    return written


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


def _gray(image: np.ndarray) -> np.ndarray:
    return image[..., 0] if image.shape[-1] == 1 else image


def write_explanations(plots_dir: str, shown, title: str) -> list[str]:
    """One ``explain_<i>.png`` per image of ``shown`` (a ``cnnjax.explain.Explanation``)."""
    os.makedirs(plots_dir, exist_ok=True)
    written = []
    for i in range(len(shown.images)):
        path = os.path.join(plots_dir, f"explain_{i}.png")
        truth = "" if shown.labels is None else f", true class {int(shown.labels[i])}"
        plot_explanation(
            shown.images[i], None if shown.gradcam is None else shown.gradcam[i],
            shown.saliency[i], path,
            f"{shown.names[i]}: class {int(shown.predicted[i])} "
            f"(p={float(shown.probability[i]):.2f}){truth}\n{title}", shown.layer)
        written.append(path)
    return written


def plot_explanation(image: np.ndarray, gradcam: np.ndarray | None, saliency: np.ndarray,
                     path: str, title: str, layer: str | None = None) -> None:
    """The image, its Grad-CAM heat map over it (when there is one), and its saliency."""
    panels = 3 if gradcam is not None else 2
    fig = _figure(3.2 * panels, 3.9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.03, top=0.76, wspace=0.08)
    axes = np.atleast_1d(fig.subplots(1, panels))
    shown = _gray(image)
    cmap = "gray" if shown.ndim == 2 else None
    axes[0].imshow(shown, cmap=cmap, interpolation="nearest")
    axes[0].set_title("input", fontsize=9)
    if gradcam is not None:
        axes[1].imshow(shown, cmap=cmap, interpolation="nearest")
        axes[1].imshow(gradcam, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
        axes[1].set_title(f"Grad-CAM ({layer})" if layer else "Grad-CAM", fontsize=9)
    axes[-1].imshow(saliency, cmap="hot", vmin=0, vmax=1, interpolation="nearest")
    axes[-1].set_title("saliency |d logit / d pixel|", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)
