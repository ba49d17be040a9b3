"""Where a zoo model's convolutions spend their time, and what cnnjax's formulations save.

    python -m experiments.benchmarks.zoo_convs resnet18 mobilenet_v2 resnext50_32x4d

Every distinct convolution of each model's training forward pass (batch 32, 64x64 images, as
the zoo benchmark; shapes read from its jaxpr) is timed alone, as ``lax.conv_general_dilated``
and as :func:`cnnjax.models.layers.conv_formulation` picks it on this backend: forward pass,
input gradient and kernel gradient, each a jitted program compiled as the step is, best of
``--repeats`` after a warm-up. A line per shape that either takes ``--min_ms`` or more or has a
formulation of its own, with the largest relative difference of the output and both gradients
against lax's; then the totals, each shape weighted by how often the model has it.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import models, parallel
from cnnjax.models import layers
from experiments.benchmarks.conv_paths import _best_ms, conv_shapes


def _times(conv, x, w, repeats: int, options) -> list[float]:
    """Milliseconds of the forward pass, the input gradient and the kernel gradient."""
    g = jnp.full(jax.eval_shape(conv, x, w).shape, 0.01, jnp.float32)
    programs = (
        (lambda x, w, g: conv(x, w)),
        (lambda x, w, g: jax.vjp(lambda a: conv(a, w), x)[1](g)[0]),
        (lambda x, w, g: jax.vjp(lambda b: conv(x, b), w)[1](g)[0]),
    )
    return [_best_ms(functools.partial(
        jax.jit(p).lower(x, w, g).compile(compiler_options=options), x, w, g), repeats)
        for p in programs]


def _differences(ref, fast, x, w) -> list[float]:
    g = jax.random.normal(jax.random.key(2), jax.eval_shape(ref, x, w).shape)
    (r, r_vjp), (f, f_vjp) = jax.vjp(ref, x, w), jax.vjp(fast, x, w)
    return [float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-30))
            for a, b in zip((r, *r_vjp(g)), (f, *f_vjp(g)), strict=True)]


def measure(name: str, *, batch_size: int = 32, image_size: int = 64, repeats: int = 5,
            min_ms: float = 3.0, seen: dict | None = None) -> tuple[float, float]:
    """Prints the lines of model ``name``; returns its totals in ms (lax, cnnjax)."""
    options = parallel.compiler_options(parallel.make_mesh(jax.local_devices()[:1]))
    model = models.get_model(name, num_classes=1000)
    seen = {} if seen is None else seen
    totals = np.zeros(2)
    with layers.performing(layers.Performance(conv_impl="xla")):  # every convolution seen
        shapes = conv_shapes(model, (image_size, image_size, 3), batch_size)
    for s in shapes:
        strides, pads = tuple(s["strides"]), tuple(tuple(p) for p in s["pads"])
        groups = s["x"][3] // s["w"][2]
        key = (tuple(s["x"]), tuple(s["w"]), strides, pads)
        fast = layers.conv_formulation(key[0], key[1], strides, pads, groups)
        if key not in seen:
            x = jax.random.normal(jax.random.key(0), key[0])
            w = jax.random.normal(jax.random.key(1), key[1]) * 0.1
            ref = functools.partial(layers._lax_conv, strides=strides, pads=pads,
                                    groups=groups)
            plain = _times(ref, x, w, repeats, options)
            chosen = _times(fast, x, w, repeats, options) if fast else plain
            seen[key] = plain, chosen, _differences(ref, fast, x, w) if fast else []
        plain, chosen, diffs = seen[key]
        totals += s["count"] * np.array([sum(plain), sum(chosen)])
        if sum(plain) >= min_ms or fast:
            what = fast.func.__name__.strip("_") if fast else "lax"
            print(f"{name:18s} x{s['x']} w{s['w']} s{list(strides)} g{groups} x{s['count']}: "
                  f"lax {plain[0]:7.2f} {plain[1]:7.2f} {plain[2]:7.2f} | {what:9s} "
                  f"{chosen[0]:7.2f} {chosen[1]:7.2f} {chosen[2]:7.2f}  "
                  f"{' '.join(f'{d:.0e}' for d in diffs)}", flush=True)
    print(f"== {name}: convolutions (forward + input grad + kernel grad) lax {totals[0]:.0f} "
          f"ms, cnnjax {totals[1]:.0f} ms", flush=True)
    return float(totals[0]), float(totals[1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min_ms", type=float, default=3.0,
                   help="print the shapes whose three programs take this long or longer")
    args = p.parse_args(argv)
    print("per shape, ms: forward, input grad, kernel grad; then the relative differences")
    seen: dict = {}
    for name in args.models:
        measure(name, batch_size=args.batch_size, image_size=args.image_size,
                repeats=args.repeats, min_ms=args.min_ms, seen=seen)


if __name__ == "__main__":
    main()
