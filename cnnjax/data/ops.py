"""Image kernels on one ``[h, w, c]`` uint8 image, as torchvision.transforms.v2.functional
computes them on uint8 tensors, written in jnp so that they run per example under ``vmap``
inside the jitted train step.

Each kernel mirrors torchvision's arithmetic step by step (float32, the same order of
operations, truncation where torchvision casts to uint8, ``round`` where it rounds), so that
results match to the last bit or differ by one where float32 rounding of the same expression
differs (the tolerances, per kernel, are in docs/data.md and tests/test_augment.py). dm-pix's
colour ops work on float images in [0, 1] and do not reproduce torchvision's uint8 steps
(the floor of the grey image, truncation after each blend), so they are not used here.

Geometric kernels take the inverse affine matrix that torchvision's
``_get_inverse_affine_matrix`` gives (``inverse_affine``, computed on the host in float64, as
torchvision does in Python) and sample with nearest interpolation, out-of-image pixels set to
``fill``, as ``grid_sample(mode="nearest", align_corners=False)`` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_F = jnp.float32


def _u8(x: jax.Array) -> jax.Array:
    """float32 already in [0, 255] -> uint8 by truncation, as torch's ``.to(torch.uint8)``."""
    return x.astype(jnp.uint8)


def _blend(image: jax.Array, other: jax.Array, ratio) -> jax.Array:
    """torchvision's ``_blend``: ``clamp(image * ratio + other * (1 - ratio))``, truncated.

    ``1 - ratio`` is computed in float64 for a Python float, as torchvision does; a traced
    ratio computes it in float32, which can differ in the last bit (then +-1 on a few pixels).
    """
    complement = 1.0 - ratio if isinstance(ratio, float) else 1.0 - jnp.asarray(ratio, _F)
    ratio = jnp.asarray(ratio, _F)
    if jnp.ndim(other):  # torch's add_(other, alpha) over a tensor: a fused multiply-add
        out = _fma(other, complement, image.astype(_F) * ratio)
    else:
        out = image.astype(_F) * ratio + other * jnp.asarray(complement, _F)
    return _u8(jnp.clip(out, 0.0, 255.0))


def grayscale(image: jax.Array) -> jax.Array:
    """``[h, w, 1]`` float32: ``0.2989 r + 0.587 g + 0.114 b`` (torchvision's weights)."""
    x = image.astype(_F)
    # torchvision's ``r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114)`` runs as fused
    # multiply-adds (one rounding each); emulated exactly, since the grey image is floored.
    grey = _fma(x[..., 2], 0.114, _fma(x[..., 1], 0.587, x[..., 0] * 0.2989))
    return grey[..., None]


def _fma(a: jax.Array, b, c: jax.Array) -> jax.Array:
    """``round(a * b + c)`` with one rounding, for ``a`` integers in [0, 255]: Dekker's exact
    product and Knuth's exact sum (XLA:CPU does not fuse them itself)."""
    b32 = jnp.asarray(b, _F)
    b_hi = jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(b32, jnp.uint32) & jnp.uint32(0xFFFFF000), _F)
    b_lo = b32 - b_hi
    p = a * b32
    e = (a * b_hi - p) + a * b_lo  # a * b_hi and a * b_lo are exact: 8 + 12 bits
    s = p + c
    v = s - p
    t = (p - (s - v)) + (c - v)
    return s + (t + e)


def brightness(image: jax.Array, factor) -> jax.Array:
    """``F.adjust_brightness``: ``image * factor``, clamped and truncated."""
    return _u8(jnp.clip(image.astype(_F) * jnp.asarray(factor, _F), 0.0, 255.0))


def saturation(image: jax.Array, factor) -> jax.Array:
    """``F.adjust_saturation``: a blend with the floored grey image (grey images unchanged)."""
    if image.shape[-1] == 1:
        return image
    return _blend(image, jnp.floor(grayscale(image)), factor)


def contrast(image: jax.Array, factor) -> jax.Array:
    """``F.adjust_contrast``: a blend with the mean of the floored grey image."""
    grey = jnp.floor(grayscale(image)) if image.shape[-1] == 3 else image.astype(_F)
    # XLA:CPU runs the grey image fused into the mean's reduction far slower than the two
    # apart (docs/performance.md#augmentation-policies-on-cpu): the barrier keeps them apart.
    return _blend(image, jnp.mean(jax.lax.optimization_barrier(grey)), factor)


def sharpness(image: jax.Array, factor, complement=None) -> jax.Array:
    """``F.adjust_sharpness``: the interior blended with a rounded 3x3 smoothing
    (``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13``); the one-pixel border is kept.
    ``complement``: ``1 - factor`` where computed on the host (in float64, as torchvision)."""
    h, w, _ = image.shape
    if h <= 2 or w <= 2:
        return image
    x = image.astype(_F)
    a, b = 1.0 / 13.0, 5.0 / 13.0
    blurred = sum(x[dy:h - 2 + dy, dx:w - 2 + dx] * (b if (dy, dx) == (1, 1) else a)
                  for dy in range(3) for dx in range(3))
    blurred = jnp.round(blurred)
    inner = x[1:-1, 1:-1]
    if complement is None:
        complement = 1.0 - factor if isinstance(factor, float) else 1.0 - jnp.asarray(factor, _F)
    inner = inner + (blurred - inner) * jnp.asarray(complement, _F)
    return _u8(jnp.clip(x.at[1:-1, 1:-1].set(inner), 0.0, 255.0))


def _rgb_to_hsv(x: jax.Array) -> jax.Array:
    """torchvision's ``_rgb_to_hsv`` on ``[h, w, 3]`` float in [0, 1]."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc, minc = jnp.max(x, -1), jnp.min(x, -1)
    eqc = maxc == minc
    crange = maxc - minc
    s = crange / jnp.where(eqc, 1.0, maxc)
    div = jnp.where(eqc, 1.0, crange)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    neq_r, eq_g = maxc != r, maxc == g
    hr = jnp.where(~neq_r, bc - gc, 0.0)
    hg = jnp.where(eq_g & neq_r, (rc + 2.0) - bc, 0.0)
    hb = jnp.where(neq_r & ~eq_g, (gc + 4.0) - rc, 0.0)
    h = jnp.fmod((hr + hg + hb) * (1.0 / 6.0) + 1.0, 1.0)
    return jnp.stack((h, s, maxc), -1)


def _hsv_to_rgb(x: jax.Array) -> jax.Array:
    h, s, v = x[..., 0], x[..., 1], x[..., 2]
    h6 = h * 6.0
    i = jnp.floor(h6)
    f = h6 - i
    i = jnp.remainder(i.astype(jnp.int32), 6)
    sxf = s * f
    q = jnp.clip((1.0 - sxf) * v, 0.0, 1.0)
    t = jnp.clip((sxf + (1.0 - s)) * v, 0.0, 1.0)
    p = jnp.clip((1.0 - s) * v, 0.0, 1.0)
    vpqt = jnp.stack((v, p, q, t), -1)
    select = jnp.asarray([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]])
    index = select[:, i]  # [3, h, w]
    return jnp.take_along_axis(vpqt, jnp.moveaxis(index, 0, -1), -1)


def hue(image: jax.Array, factor) -> jax.Array:
    """``F.adjust_hue``: the hue shifted by ``factor`` in [-0.5, 0.5] turns, in HSV."""
    if image.shape[-1] == 1:
        return image
    hsv = _rgb_to_hsv(image.astype(_F) / 255.0)
    hsv = hsv.at[..., 0].set(jnp.remainder(hsv[..., 0] + jnp.asarray(factor, _F), 1.0))
    return _u8(_hsv_to_rgb(hsv) * (255.0 + 1.0 - 1e-3))


def posterize(image: jax.Array, bits) -> jax.Array:
    """``F.posterize``: keep the ``bits`` (0 to 8) highest bits of each value."""
    mask = jnp.left_shift(jnp.int32(255), 8 - jnp.asarray(bits, jnp.int32)) & 255
    return (image.astype(jnp.int32) & mask).astype(jnp.uint8)


def solarize(image: jax.Array, threshold) -> jax.Array:
    """``F.solarize``: values ``>= threshold`` (0 to 255) inverted."""
    return jnp.where(image.astype(_F) >= jnp.asarray(threshold, _F), 255 - image, image)


def invert(image: jax.Array) -> jax.Array:
    """``F.invert``: ``255 - image``."""
    return 255 - image


def autocontrast(image: jax.Array) -> jax.Array:
    """``F.autocontrast``: each channel stretched to [0, 255] (constant channels kept)."""
    x = image.astype(_F)
    lo, hi = jnp.min(x, (0, 1)), jnp.max(x, (0, 1))
    eq = hi == lo
    inv_scale = jnp.where(eq, 1.0, (hi - lo) * (1.0 / 255.0))
    lo = jnp.where(eq, 0.0, lo)
    # A true division, as torchvision's: XLA turns a division by a broadcast value into a
    # product with its reciprocal, which differs in the last bit.
    inv_scale = jax.lax.optimization_barrier(jnp.broadcast_to(inv_scale, x.shape))
    return _u8(jnp.clip((x - lo) / inv_scale, 0.0, 255.0))


def _equalize_channel(values: jax.Array) -> jax.Array:
    flat = values.reshape(-1).astype(jnp.int32)
    hist = jnp.bincount(flat, length=256)
    cum = jnp.cumsum(hist)
    # PIL's scheme, as torchvision follows it: the step leaves out the last non-empty bin.
    step = (flat.shape[0] - hist[jnp.argmax(cum)]) // 255
    lut = jnp.clip((cum[:-1] + step // 2) // jnp.maximum(step, 1), 0, 255)
    lut = jnp.concatenate([jnp.zeros((1,), lut.dtype), lut]).astype(jnp.uint8)
    return jnp.where(step != 0, lut[flat].reshape(values.shape), values)


def equalize(image: jax.Array) -> jax.Array:
    """``F.equalize``: each channel's histogram equalised (PIL's look-up table)."""
    return jnp.stack([_equalize_channel(image[..., c]) for c in range(image.shape[-1])], -1)


def inverse_affine(width: int, height: int, angle: float = 0.0,
                   translate: Sequence[float] = (0.0, 0.0), shear: Sequence[float] = (0.0, 0.0),
                   center: Sequence[float] | None = None) -> np.ndarray:
    """``[6]`` float32: torchvision's inverse affine matrix (``F.affine``'s conventions, scale
    1, angles in degrees, ``center`` in pixels; ``None`` = the image centre) in the grid units
    ``affine`` takes. Computed on the host, as torchvision does: the matrix in float64, then
    float32, then divided by the half-sizes in float32 (torchvision's ``_affine_grid``)."""
    cx, cy = ((0.0, 0.0) if center is None
              else (center[0] - width * 0.5, center[1] - height * 0.5))
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -(a * math.tan(sx) + math.sin(rot))
    c = math.sin(rot - sy) / math.cos(sy)
    d = math.cos(rot) - c * math.tan(sx)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += cx - m[0] * (cx + tx) - m[1] * (cy + ty)
    m[5] += cy - m[3] * (cx + tx) - m[4] * (cy + ty)
    return _grid_units(np.asarray(m, np.float32), width, height)


def _grid_units(m: np.ndarray, width: int, height: int) -> np.ndarray:
    half = np.asarray([0.5 * width] * 3 + [0.5 * height] * 3, np.float32)
    return (m / half).astype(np.float32)


def rotation(width: int, height: int, angle: float) -> np.ndarray:
    """``[6]`` float32: ``F.rotate``'s matrix (counter-clockwise degrees, about the centre),
    as ``inverse_affine``. Quarter turns are exact, as torchvision's ``rot90`` fast path is."""
    angle = angle % 360
    if angle in (0.0, 90.0, 180.0, 270.0):
        m = np.round(inverse_affine(width, height, -angle) * np.asarray(
            [0.5 * width] * 3 + [0.5 * height] * 3, np.float32))
        return _grid_units(m, width, height)
    return inverse_affine(width, height, -angle)


IDENTITY_AFFINE = np.asarray([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], np.float32)


def affine(image: jax.Array, matrix: jax.Array, fill: int = 0) -> jax.Array:
    """The image resampled through ``matrix`` ``[6]`` (``inverse_affine``; traced values are
    fine) with nearest interpolation; pixels from outside the image are ``fill``."""
    h, w, _ = image.shape
    m = jnp.asarray(matrix, _F)
    # Host constants: numpy's (and torch's) linspace, which jnp.linspace differs from in the
    # last bit of some points.
    x = np.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, dtype=np.float32)[None, :]
    y = np.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, dtype=np.float32)[:, None]
    # torchvision's _affine_grid (a float32 matmul), then grid_sample's unnormalisation
    # (align_corners=False) and nearest pixel (round half to even).
    gx = x * m[0] + y * m[1] + m[2]
    gy = x * m[3] + y * m[4] + m[5]
    ix = jnp.round((gx + 1.0) * (w / 2) - 0.5)
    iy = jnp.round((gy + 1.0) * (h / 2) - 0.5)
    inside = (ix >= 0) & (ix <= w - 1) & (iy >= 0) & (iy <= h - 1)
    ix = jnp.clip(ix, 0, w - 1).astype(jnp.int32)
    iy = jnp.clip(iy, 0, h - 1).astype(jnp.int32)
    out = image[iy, ix]
    return jnp.where(inside[..., None], out, jnp.asarray(fill, image.dtype))


def erase(image: jax.Array, top, left, height, width, value: int = 0) -> jax.Array:
    """``F.erase``: the box ``[top, top + height) x [left, left + width)`` set to ``value``."""
    rows = jnp.arange(image.shape[0])[:, None]
    cols = jnp.arange(image.shape[1])[None, :]
    box = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    return jnp.where(box[..., None], jnp.asarray(value, image.dtype), image)


def _aa_weights(start, length, size: int, full: int) -> jax.Array:
    """``[size, full]``: torch's antialiased bilinear weights (``_upsample_bilinear2d_aa``,
    PIL's scheme) taking the ``length`` pixels from ``start`` to ``size`` outputs; the box's
    start and length may be traced."""
    length = jnp.asarray(length, _F)
    scale = length / size
    support = jnp.where(scale >= 1.0, scale, 1.0)
    inv_scale = jnp.where(scale >= 1.0, 1.0 / scale, 1.0)
    center = scale * (jnp.arange(size, dtype=_F)[:, None] + 0.5)
    j = (jnp.arange(full)[None, :] - jnp.asarray(start)).astype(_F)  # index inside the box
    lo = jnp.maximum(jnp.floor(center - support + 0.5), 0.0)
    hi = jnp.minimum(jnp.floor(center + support + 0.5), length)
    w = jnp.maximum(0.0, 1.0 - jnp.abs((j - center + 0.5) * inv_scale))
    w = jnp.where((j >= lo) & (j < hi), w, 0.0)
    return w / jnp.sum(w, 1, keepdims=True)


def resized_crop(image: jax.Array, top, left, height, width,
                 size: tuple[int, int]) -> jax.Array:
    """``F.resized_crop`` (bilinear, antialiased): the box resized to ``size`` = (h, w) with
    torch's separable filter (across, then down), the box dynamic, the output shape static.
    torch rounds its uint8 passes in fixed point, this computes in float32: +-1."""
    wy = _aa_weights(top, height, size[0], image.shape[0])
    wx = _aa_weights(left, width, size[1], image.shape[1])
    x = jnp.einsum("xw,hwc->hxc", wx, image.astype(_F), precision="highest")
    x = jnp.einsum("yh,hxc->yxc", wy, x, precision="highest")
    return _u8(jnp.clip(jnp.round(x), 0.0, 255.0))


def pad_crop(image: jax.Array, top, left, padding: int) -> jax.Array:
    """The ``h x w`` window at (top, left) of the image padded with ``padding`` zeros."""
    p = padding
    padded = jnp.pad(image, ((p, p), (p, p), (0, 0)))
    return jax.lax.dynamic_slice(padded, (top, left, 0), image.shape)
