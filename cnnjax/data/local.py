"""Your own images without a TFDS builder: ``npz:/path/file.npz`` and ``folder:/path/dir``.

npz: arrays ``images`` (``[n, h, w]`` or ``[n, h, w, c]`` uint8) and ``labels`` (``[n]``
integers from 0); optionally ``test_images`` and ``test_labels``.

folder: the ImageFolder layout, ``dir/train/<class>/*.png`` and ``dir/test/<class>/...``,
or a single level ``dir/<class>/...``. Classes are the sub-directory names sorted by name
(label 0 is the first). Files ending in .png, .jpg, .jpeg, .bmp, .gif, .webp, .tif or .tiff
are decoded with PIL: greyscale if every image is greyscale, else RGB.

Without a test split, a fixed hold-out is used: ``HOLDOUT_FRACTION`` (20%) of every class, chosen
by ``sklearn.model_selection.train_test_split(test_size=0.2, stratify=labels,
random_state=0)`` (unstratified, same seed, when a class has a single example).
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from cnnjax.data import catalog
from cnnjax.data.sources import ArrayRecords, CorruptImageError, Source
from cnnjax.errors import ConfigError, first_line, warn

HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def holdout(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed hold-out: sorted ``(train_indices, test_indices)`` of ``labels``."""
    from sklearn.model_selection import train_test_split  # 1-2 s to import: only for a split

    index = np.arange(len(labels))
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if counts.min() >= 2 else None
    train, test = train_test_split(
        index, test_size=HOLDOUT_FRACTION, stratify=stratify, random_state=HOLDOUT_SEED
    )
    return np.sort(train), np.sort(test)


def _spec(shape: tuple[int, ...] | None) -> catalog.DatasetSpec:
    # Images of mixed sizes are framed like natural images, at the size the user chooses.
    spec = catalog.fallback(fixed=shape is not None)
    return spec if shape is not None else dataclasses.replace(spec, image_size=0)


def open_npz(path: str, *, skip_corrupt: bool = False, name: str = "") -> Source:
    """Opens an npz file of uint8 images and integer labels (see the module docstring)."""
    del skip_corrupt  # arrays cannot hold a corrupt image
    name = name or f"npz:{path}"
    if not os.path.isfile(path):
        raise ConfigError(f"npz file {path} not found (from --config.data.name={name})")
    arrays = read_npz(path)
    for key in ("images", "labels"):
        if key not in arrays:
            raise ConfigError(
                f"{path} has no array {key!r} (it has: {', '.join(sorted(arrays))}); "
                "expected images [n, h, w(, c)] uint8 and labels [n]"
            )
    if ("test_images" in arrays) != ("test_labels" in arrays):
        raise ConfigError(f"{path} must hold both test_images and test_labels, or neither")
    train_images, train_labels = _checked(path, arrays["images"], arrays["labels"], "")
    if "test_images" in arrays:
        test_images, test_labels = _checked(
            path, arrays["test_images"], arrays["test_labels"], "test_"
        )
        if test_images.shape[1:] != train_images.shape[1:]:
            raise ConfigError(
                f"{path}: test_images are {test_images.shape[1:]} but images are "
                f"{train_images.shape[1:]}"
            )
    else:
        train_idx, test_idx = holdout(train_labels)
        test_images, test_labels = train_images[test_idx], train_labels[test_idx]
        train_images, train_labels = train_images[train_idx], train_labels[train_idx]
    num_classes = int(max(train_labels.max(), test_labels.max(initial=0))) + 1
    shape = tuple(int(d) for d in train_images.shape[1:])
    return Source(
        name=name,
        train=ArrayRecords(train_images, train_labels, f"{name}:train"),
        eval=ArrayRecords(test_images, test_labels, f"{name}:test"),
        num_classes=num_classes, native_shape=shape, channels=shape[-1], spec=_spec(shape),
    )


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file at ``path``; ``ConfigError`` for anything else (a file
    of another kind, a damaged archive, object arrays, which would need pickle)."""
    try:
        # Opened here, so that it is closed whatever np.load raises (it keeps a damaged zip's
        # file open).
        with open(path, "rb") as file:
            loaded = np.load(file, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an .npz archive")
            with loaded as f:
                return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        reason = first_line(e).split(". ")[0]
        raise ConfigError(
            f"{path} is not a readable .npz of arrays ({reason}); write one with "
            "np.savez(path, images=..., labels=...)") from None


def _checked(path: str, images: np.ndarray, labels: np.ndarray, prefix: str):
    if images.dtype != np.uint8:
        raise ConfigError(
            f"{path}: {prefix}images must be uint8 (0..255), got {images.dtype}; convert with "
            "np.clip(np.round(x), 0, 255).astype(np.uint8) (x in 0..255)"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or len(images) == 0:
        raise ConfigError(
            f"{path}: {prefix}images must be [n, h, w] or [n, h, w, c] with n > 0, "
            f"got shape {images.shape}"
        )
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(
            f"{path}: {prefix}labels must be [{len(images)}] integers, got shape "
            f"{labels.shape} dtype {labels.dtype}"
        )
    if labels.min() < 0:
        raise ConfigError(f"{path}: {prefix}labels must be >= 0, got {labels.min()}")
    return images, labels.astype(np.int32)


class FolderRecords:
    """Image files decoded with PIL on access: ``{"image": [h, w, c] uint8, "label": int}``."""

    def __init__(self, paths: list[str], labels: np.ndarray, mode: str, name: str):
        self.paths, self.labels, self.mode, self.name = paths, labels, mode, name

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        image = decode(path, self.mode)
        return {"image": image, "label": int(self.labels[index])}

    def encoded(self, index: int) -> dict[str, Any]:
        """The file's bytes, for a loader that decodes them itself (``{"encoded", "label",
        "name"}``)."""
        path = self.paths[index]
        with open(path, "rb") as f:
            return {"encoded": f.read(), "label": int(self.labels[index]), "name": path}

    def __repr__(self) -> str:
        return f"FolderRecords({self.name!r}, n={len(self)})"


def decode(path: str, mode: str) -> np.ndarray:
    """The image at ``path`` as ``[h, w, c] uint8`` in PIL ``mode`` ('L' or 'RGB')."""
    try:
        with Image.open(path) as im:
            image = np.asarray(im.convert(mode))
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
        raise CorruptImageError(
            f"corrupt image {path}: {type(e).__name__}: {e}; remove or replace it, or set "
            "--config.data.skip_corrupt=True to skip it"
        ) from None
    return image if image.ndim == 3 else image[..., None]


def _header(path: str) -> tuple[str, tuple[int, int]] | Exception:
    """``(mode, (height, width))`` from the file's header and integrity check, or the error."""
    try:
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
            im.verify()  # checks what the format allows without decoding (PNG chunk CRCs)
        return mode, (h, w)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
        return e


def listing(root: str) -> tuple[list[str], list[str], np.ndarray]:
    """``(classes, paths, labels)`` of a one-level class directory, sorted by name."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    paths, labels = [], []
    for label, cls in enumerate(classes):
        folder = os.path.join(root, cls)
        for file in sorted(os.listdir(folder)):
            if file.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(folder, file))
                labels.append(label)
    return classes, paths, np.asarray(labels, np.int32)


def _scan(paths: list[str], labels: np.ndarray, skip_corrupt: bool):
    """Reads every header: reports (or skips) corrupt files; ``(paths, labels, headers)``."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        headers = list(pool.map(_header, paths))
    ok = np.asarray([not isinstance(h, Exception) for h in headers], bool)
    for path, header in zip(paths, headers, strict=True):
        if isinstance(header, Exception):
            message = f"corrupt image {path}: {type(header).__name__}: {header}"
            if not skip_corrupt:
                raise CorruptImageError(
                    f"{message}; remove or replace it, or set "
                    "--config.data.skip_corrupt=True to skip it"
                )
            warn(f"skipping {message}")
    kept = [p for p, k in zip(paths, ok, strict=True) if k]
    return kept, labels[ok], [h for h in headers if not isinstance(h, Exception)]


def open_folder(root: str, *, skip_corrupt: bool = False, name: str = "") -> Source:
    """Opens an ImageFolder directory (see the module docstring)."""
    name = name or f"folder:{root}"
    if not os.path.isdir(root):
        raise ConfigError(f"image folder {root} not found (from --config.data.name={name})")
    split_dirs = [os.path.join(root, s) for s in ("train", "test")]
    if all(os.path.isdir(d) for d in split_dirs):
        classes, train_paths, train_labels = listing(split_dirs[0])
        test_classes, test_paths, test_labels = listing(split_dirs[1])
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise ConfigError(
                f"{split_dirs[1]} has classes that {split_dirs[0]} lacks: {', '.join(unknown)}"
            )
        # Test labels follow the train classes' order.
        test_labels = np.asarray([classes.index(test_classes[i]) for i in test_labels], np.int32)
    else:
        classes, paths, labels = listing(root)
        train_paths, train_labels, test_paths, test_labels = paths, labels, [], labels[:0]
    if not train_paths:
        raise ConfigError(
            f"no images found in {root}: expected {root}/train/<class>/*.png|jpg and "
            f"{root}/test/<class>/..., or {root}/<class>/*.png|jpg"
        )
    train_paths, train_labels, train_headers = _scan(train_paths, train_labels, skip_corrupt)
    test_paths, test_labels, test_headers = _scan(test_paths, test_labels, skip_corrupt)
    if not test_paths:  # single level: the fixed hold-out
        train_idx, test_idx = holdout(train_labels)
        test_paths = [train_paths[i] for i in test_idx]
        test_headers = [train_headers[i] for i in test_idx]
        test_labels = train_labels[test_idx]
        train_paths = [train_paths[i] for i in train_idx]
        train_headers = [train_headers[i] for i in train_idx]
        train_labels = train_labels[train_idx]
    headers = train_headers + test_headers
    mode = "L" if all(m in _GREY_MODES for m, _ in headers) else "RGB"
    channels = 1 if mode == "L" else 3
    sizes = {size for _, size in headers}
    shape = (*next(iter(sizes)), channels) if len(sizes) == 1 else None
    return Source(
        name=name,
        train=FolderRecords(train_paths, train_labels, mode, f"{name}:train"),
        eval=FolderRecords(test_paths, test_labels, mode, f"{name}:test"),
        num_classes=len(classes), native_shape=shape, channels=channels, spec=_spec(shape),
    )
