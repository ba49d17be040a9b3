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
