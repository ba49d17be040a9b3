"""The random image ops of ``augment.OPS`` that draw parameters: torchvision.transforms.v2's
RandAugment, TrivialAugmentWide, AutoAugment, RandomErasing, ColorJitter and
RandomResizedCrop, each ``fn(image [h, w, c] uint8, key, **args) -> image``.

The policies' op tables (``SPACES``: names, magnitude bins, signs) are torchvision's; each
op's parameters for every bin and sign are computed on the host (``_params``) as torchvision
computes them in Python, so the device only looks them up. A per-example choice of op is a
``lax.switch``, which under ``vmap`` computes every branch for every image and keeps one: the
cost is measured by ``python -m experiments.benchmarks.augment`` (docs/performance.md).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.data import ops


def _linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace in float32, as torchvision's bins are: a float32 step, each point from
    the nearer end with one rounding (torch's CPU kernel fuses the multiply-add)."""
    s32, e32 = np.float32(start), np.float32(end)
    step = np.float32((e32 - s32) / np.float32(steps - 1))
    i = np.arange(steps)
    low = (np.float64(s32) + np.float64(step) * i).astype(np.float32)
    high = (np.float64(e32) - np.float64(step) * (steps - 1 - i)).astype(np.float32)
    return np.where(i < steps // 2, low, high)


def _posterize_bins(n: int, levels: int) -> np.ndarray:
    return np.round(8 - np.arange(n, dtype=np.float32) / np.float32((n - 1) / levels)).astype(
        np.int32)


# name -> (magnitudes(num_bins, height, width) or None, signed), torchvision's tables.
Space = dict[str, tuple]
_COMMON: Space = {
    "ShearX": (lambda n, h, w: _linspace(0.0, 0.3, n), True),
    "ShearY": (lambda n, h, w: _linspace(0.0, 0.3, n), True),
    "TranslateX": (lambda n, h, w: _linspace(0.0, 150.0 / 331.0 * w, n), True),
    "TranslateY": (lambda n, h, w: _linspace(0.0, 150.0 / 331.0 * h, n), True),
    "Rotate": (lambda n, h, w: _linspace(0.0, 30.0, n), True),
    "Brightness": (lambda n, h, w: _linspace(0.0, 0.9, n), True),
    "Color": (lambda n, h, w: _linspace(0.0, 0.9, n), True),
    "Contrast": (lambda n, h, w: _linspace(0.0, 0.9, n), True),
    "Sharpness": (lambda n, h, w: _linspace(0.0, 0.9, n), True),
    "Posterize": (lambda n, h, w: _posterize_bins(n, 4), False),
    "Solarize": (lambda n, h, w: _linspace(1.0, 0.0, n), False),
    "AutoContrast": (None, False),
    "Equalize": (None, False),
}
SPACES: dict[str, Space] = {
    "autoaugment": {**_COMMON, "Invert": (None, False)},
    "randaugment": {"Identity": (None, False), **_COMMON},
    "trivialaugment": {
        "Identity": (None, False),
        "ShearX": (lambda n, h, w: _linspace(0.0, 0.99, n), True),
        "ShearY": (lambda n, h, w: _linspace(0.0, 0.99, n), True),
        "TranslateX": (lambda n, h, w: _linspace(0.0, 32.0, n), True),
        "TranslateY": (lambda n, h, w: _linspace(0.0, 32.0, n), True),
        "Rotate": (lambda n, h, w: _linspace(0.0, 135.0, n), True),
        "Brightness": (lambda n, h, w: _linspace(0.0, 0.99, n), True),
        "Color": (lambda n, h, w: _linspace(0.0, 0.99, n), True),
        "Contrast": (lambda n, h, w: _linspace(0.0, 0.99, n), True),
        "Sharpness": (lambda n, h, w: _linspace(0.0, 0.99, n), True),
        "Posterize": (lambda n, h, w: _posterize_bins(n, 6), False),
        "Solarize": (lambda n, h, w: _linspace(1.0, 0.0, n), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
    },
}

# AutoAugment's learned sub-policies: ((op, probability, magnitude bin), (op, ...)).
AUTOAUGMENT: dict[str, list] = {
    "imagenet": [
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ],
    "cifar10": [
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
        (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
        (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ],
}
AUTOAUGMENT_POLICIES = tuple(AUTOAUGMENT)


def _params(name: str, magnitude: float, height: int, width: int) -> np.ndarray:
    """``[6]`` float32: what branch ``name`` needs for ``magnitude``, as torchvision's
    ``_apply_image_or_video_transform`` derives it (in float64, then float32)."""
    out = np.zeros(6, np.float32)
    if name == "ShearX":
        return ops.inverse_affine(width, height, shear=(math.degrees(math.atan(magnitude)), 0.0),
                                  center=(0.0, 0.0))
    if name == "ShearY":
        return ops.inverse_affine(width, height, shear=(0.0, math.degrees(math.atan(magnitude))),
                                  center=(0.0, 0.0))
    if name == "TranslateX":
        return ops.inverse_affine(width, height, translate=(int(magnitude), 0))
    if name == "TranslateY":
        return ops.inverse_affine(width, height, translate=(0, int(magnitude)))
    if name == "Rotate":
        return ops.rotation(width, height, magnitude)
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        out[:2] = 1.0 + magnitude, 1.0 - (1.0 + magnitude)
    elif name == "Posterize":
        out[0] = int(magnitude)
    elif name == "Solarize":
        out[0] = 255.0 * magnitude
    return out


# The non-geometric ops (the geometric ones share one resampling: ``_apply``).
_BRANCHES = {
    "Identity": lambda im, p: im,
    "Brightness": lambda im, p: ops.brightness(im, p[0]),
    "Color": lambda im, p: ops.saturation(im, p[0]),
    "Contrast": lambda im, p: ops.contrast(im, p[0]),
    "Sharpness": lambda im, p: ops.sharpness(im, p[0], p[1]),
    "Posterize": lambda im, p: ops.posterize(im, p[0].astype(jnp.int32)),
    "Solarize": lambda im, p: ops.solarize(im, p[0]),
    "AutoContrast": lambda im, p: ops.autocontrast(im),
    "Equalize": lambda im, p: ops.equalize(im),
    "Invert": lambda im, p: ops.invert(im),
}


def table(space: Space, num_bins: int, height: int, width: int) -> np.ndarray:
    """``[ops, bins, 2, 6]`` float32: each op's parameters per magnitude bin, positive and
    negated magnitude."""
    out = np.zeros((len(space), num_bins, 2, 6), np.float32)
    for i, (name, (magnitudes, signed)) in enumerate(space.items()):
        values = magnitudes(num_bins, height, width) if magnitudes else np.zeros(num_bins)
        for b in range(num_bins):
            for s in range(2):
                m = float(values[b]) * (-1.0 if (s and signed) else 1.0)
                out[i, b, s] = _params(name, m, height, width)
    return out


_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _apply(image, space: Space, params: np.ndarray, op, magnitude_bin, negate):
    """Op ``op`` (index into ``space``) at ``magnitude_bin``, negated where ``negate``.

    The geometric ops differ only in their matrix, so they share one resampling with the
    chosen op's matrix (the identity for the others): under ``vmap`` the switch then computes
    one gather instead of five, with the same pixels.
    """
    p = jnp.asarray(params)[op, magnitude_bin, negate.astype(jnp.int32)]
    geometric = jnp.asarray([name in _GEOMETRIC for name in space])[op]
    moved = ops.affine(image, jnp.where(geometric, p, ops.IDENTITY_AFFINE))
    branches = [_BRANCHES.get(name, _BRANCHES["Identity"]) for name in space]
    return jnp.where(geometric, moved, jax.lax.switch(op, branches, image, p))


def randaugment(image, key, num_ops: int, magnitude: int, num_magnitude_bins: int):
    """``num_ops`` ops drawn uniformly, each at bin ``magnitude``, signed at random."""
    space = SPACES["randaugment"]
    params = table(space, num_magnitude_bins, *image.shape[:2])
    for k in jax.random.split(key, num_ops):
        op_key, sign_key = jax.random.split(k)
        op = jax.random.randint(op_key, (), 0, len(space))
        image = _apply(image, space, params, op, magnitude, jax.random.bernoulli(sign_key))
    return image


def trivialaugment(image, key, num_magnitude_bins: int):
    """One op drawn uniformly at a uniformly drawn bin, signed at random."""
    space = SPACES["trivialaugment"]
    params = table(space, num_magnitude_bins, *image.shape[:2])
    op_key, bin_key, sign_key = jax.random.split(key, 3)
    op = jax.random.randint(op_key, (), 0, len(space))
    magnitude = jax.random.randint(bin_key, (), 0, num_magnitude_bins)
    return _apply(image, space, params, op, magnitude, jax.random.bernoulli(sign_key))


def autoaugment(image, key, policy: str):
    """One of the policy's sub-policies, drawn uniformly; each of its two ops applied with
    its probability at its bin (of 10), signed at random."""
    space = SPACES["autoaugment"]
    names = list(space)
    params = table(space, 10, *image.shape[:2])
    rows = AUTOAUGMENT[policy]
    op_table = jnp.asarray([[names.index(n) for n, _, _ in row] for row in rows])
    p_table = jnp.asarray([[p for _, p, _ in row] for row in rows], jnp.float32)
    bin_table = jnp.asarray([[b or 0 for _, _, b in row] for row in rows])
    choose_key, *slot_keys = jax.random.split(key, 3)
    row = jax.random.randint(choose_key, (), 0, len(rows))
    for slot, k in enumerate(slot_keys):
        apply_key, sign_key = jax.random.split(k)
        out = _apply(image, space, params, op_table[row, slot], bin_table[row, slot],
                     jax.random.bernoulli(sign_key))
        image = jnp.where(jax.random.uniform(apply_key) <= p_table[row, slot], out, image)
    return image


def _box(key, height: int, width: int, scale, ratio, tries: int = 10):
    """torchvision's sampling of a box of area ``scale`` and aspect ``ratio`` (w / h):
    ``tries`` draws, the first that fits wins. Returns (h, w, fits, draw keys)."""
    area_key, ratio_key = jax.random.split(key)
    area = height * width * jax.random.uniform(area_key, (tries,), minval=scale[0],
                                               maxval=scale[1])
    log_ratio = jax.random.uniform(ratio_key, (tries,), minval=math.log(ratio[0]),
                                   maxval=math.log(ratio[1]))
    aspect = jnp.exp(log_ratio)
    return area, aspect


def erasing(image, key, p: float, scale, ratio, value: int):
    """torchvision's RandomErasing with probability ``p``: a box of ``scale`` of the area and
    aspect ``ratio`` (10 tries; none fitting erases nothing), set to ``value``."""
    h, w, _ = image.shape
    box_key, pos_key, apply_key = jax.random.split(key, 3)
    area, aspect = _box(box_key, h, w, scale, ratio)
    eh = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    ew = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (eh < h) & (ew < w)
    first = jnp.argmax(fits)
    eh, ew = eh[first], ew[first]
    top_key, left_key = jax.random.split(pos_key)
    top = jax.random.randint(top_key, (), 0, h - eh + 1)
    left = jax.random.randint(left_key, (), 0, w - ew + 1)
    erased = ops.erase(image, top, left, eh, ew, value)
    return jnp.where(jnp.any(fits) & jax.random.bernoulli(apply_key, p), erased, image)


def resized_crop(image, key, scale, ratio):
    """torchvision's RandomResizedCrop at the image's own size: a box of ``scale`` of the area
    and aspect ``ratio`` (10 tries, else the central crop of the nearest allowed aspect),
    resized bilinearly with antialiasing."""
    h, w, _ = image.shape
    box_key, pos_key = jax.random.split(key)
    area, aspect = _box(box_key, h, w, scale, ratio)
    cw = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    ch = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = jnp.argmax(fits)
    in_ratio = w / h
    if in_ratio < ratio[0]:
        fw, fh = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(h * ratio[1])), h
    else:
        fw, fh = w, h
    ok = jnp.any(fits)
    ch, cw = jnp.where(ok, ch[first], fh), jnp.where(ok, cw[first], fw)
    top_key, left_key = jax.random.split(pos_key)
    top = jnp.where(ok, jax.random.randint(top_key, (), 0, h - ch + 1), (h - fh) // 2)
    left = jnp.where(ok, jax.random.randint(left_key, (), 0, w - cw + 1), (w - fw) // 2)
    return ops.resized_crop(image, top, left, ch, cw, (h, w))


def jitter(image, key, brightness: float, contrast: float, saturation: float, hue: float):
    """torchvision's ColorJitter: factors uniform in ``[max(0, 1 - x), 1 + x]`` (hue in
    ``[-hue, hue]``), the four adjustments applied in a random order (those at 0 skipped)."""
    order_key, *keys = jax.random.split(key, 5)

    def factor(k, x):
        return jax.random.uniform(k, minval=max(0.0, 1.0 - x), maxval=1.0 + x)

    fns = [
        lambda im: ops.brightness(im, factor(keys[0], brightness)) if brightness else im,
        lambda im: ops.contrast(im, factor(keys[1], contrast)) if contrast else im,
        lambda im: ops.saturation(im, factor(keys[2], saturation)) if saturation else im,
        lambda im: ops.hue(im, jax.random.uniform(keys[3], minval=-hue, maxval=hue))
        if hue else im,
    ]
    order = jax.random.permutation(order_key, 4)
    for position in range(4):
        image = jax.lax.switch(order[position], fns, image)
    return image
