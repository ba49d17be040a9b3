"""On-device augmentation inside the jitted step, deterministic from (key, example index).

Each example's randomness comes from ``fold_in(key, global_index)``, where ``global_index`` is
the example's position in the global batch: the same example gets the same crop and flip
whether the batch runs on 1 device or 8.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _one(image: jax.Array, key: jax.Array, crop_padding: int, flip: bool) -> jax.Array:
    crop_key, flip_key = jax.random.split(key)
    if crop_padding:
        h, w, _ = image.shape
        p = crop_padding
        padded = jnp.pad(image, ((p, p), (p, p), (0, 0)))
        dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * p + 1)
        image = jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)
        del h, w
    if flip:
        image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
    return image


def augment(
    images: jax.Array,
    key: jax.Array,
    global_index: jax.Array,
    *,
    crop_padding: int = 0,
    flip: bool = False,
) -> jax.Array:
    """Random crop after zero padding, and horizontal flip.

    Args:
      images: ``[b, h, w, c]`` (any dtype; the output has the same shape and dtype).
      key: the step's key.
      global_index: ``[b] int32``, each example's position in the global batch.
      crop_padding: pixels of zero padding on each side before cropping back to ``h x w``.
      flip: flip each image left-right with probability 1/2.
    """
    if not crop_padding and not flip:
        return images
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, global_index)
    return jax.vmap(lambda im, k: _one(im, k, crop_padding, flip))(images, keys)


def _beta(key: jax.Array, alpha: float) -> jax.Array:
    return jax.random.beta(key, alpha, alpha) if alpha > 0 else jnp.ones(())


def _cutmix_mask(key: jax.Array, lam: jax.Array, height: int, width: int) -> jax.Array:
    """``[h, w]`` bool, True inside a box of about ``(1 - lam)`` of the area, centre uniform."""
    cy_key, cx_key = jax.random.split(key)
    cut = jnp.sqrt(1.0 - lam)
    cy = jax.random.uniform(cy_key) * height
    cx = jax.random.uniform(cx_key) * width
    y0, y1 = jnp.clip(jnp.round(cy - cut * height / 2), 0, height), jnp.clip(
        jnp.round(cy + cut * height / 2), 0, height)
    x0, x1 = jnp.clip(jnp.round(cx - cut * width / 2), 0, width), jnp.clip(
        jnp.round(cx + cut * width / 2), 0, width)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    return (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)


def mix(
    images: jax.Array,
    key: jax.Array,
    global_index: jax.Array,
    *,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mixup and cutmix: each example blends with its partner in the batch.

    Example ``g`` of the global batch pairs with ``g ^ 1`` (its neighbour; batches are
    shuffled, so pairs are random). Pairs stay on one device whenever the per-device batch is
    even; an unpaired last example pairs with itself. Each example draws its own weight from
    ``fold_in(key, g)``: mixup blends the pixels, ``x = lam * x + (1 - lam) * partner``;
    cutmix pastes a box of the partner covering ``1 - lam`` of the area (``lam`` is then the
    exact share kept). With both on, each example uses one of the two with probability 1/2.

    Args:
      images: ``[b, h, w, c]`` float (normalised); the output has the same shape.
      key: the step's key.
      global_index: ``[b] int32``, each example's position in the global batch.

    Returns:
      ``(images, lam, partner)``: mixed images, ``lam: [b]`` the share of each example's own
      label, ``partner: [b]`` the local index of its partner. Soft targets are
      ``soft_targets(labels, lam, partner, num_classes)``.
    """
    b, h, w, _ = images.shape
    local = jnp.arange(b)
    partner = jnp.where((local ^ 1) < b, local ^ 1, local)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, global_index)

    def one(image, other, k):
        choose_key, mixup_key, cutmix_key, box_key = jax.random.split(k, 4)
        use_cutmix = cutmix_alpha > 0 and (
            mixup_alpha <= 0 or jax.random.bernoulli(choose_key)
        )
        lam_mixup = _beta(mixup_key, mixup_alpha)
        lam_cut = _beta(cutmix_key, cutmix_alpha)
        box = _cutmix_mask(box_key, lam_cut, h, w)
        cut_image = jnp.where(box[..., None], other, image)
        cut_lam = 1.0 - jnp.mean(box.astype(jnp.float32))
        blended = lam_mixup * image + (1.0 - lam_mixup) * other
        mixed = jnp.where(use_cutmix, cut_image, blended)
        return mixed, jnp.where(use_cutmix, cut_lam, lam_mixup)

    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, jnp.ones((b,), images.dtype), local
    mixed, lam = jax.vmap(one)(images, images[partner], keys)
    return mixed.astype(images.dtype), lam.astype(jnp.float32), partner


def soft_targets(
    labels: jax.Array, lam: jax.Array, partner: jax.Array, num_classes: int
) -> jax.Array:
    """``[b, num_classes]``: ``lam`` of each example's one-hot label, the rest its partner's."""
    one_hot = jax.nn.one_hot(labels, num_classes)
    return lam[:, None] * one_hot + (1.0 - lam[:, None]) * one_hot[partner]
