"""Which formulation of a model's convolutions trains it fastest on this machine.

    python -m experiments.benchmarks.conv_paths --model=cifar_resnet20 --batch_size=128 --torch
    python -m experiments.benchmarks.conv_paths --model=preact_resnet18 --batch_size=64 \\
        --paths=xla,tap_dw

Two measurements, both on synthetic data:

1. **Each convolution.** The distinct convolutions of the model's forward pass (shapes read from
   its jaxpr, with how often each occurs) are timed alone: forward pass, input gradient and
   kernel gradient, each a jitted program compiled as the step is, best of ``--repeats``
   after a warm-up; with ``--torch``, PyTorch's ``conv2d`` (its CPU default, NCHW) at the same
   shapes, each gradient timed as a backward pass alone. Totals weigh each shape by its count.
2. **The training step.** :func:`benchmark.prepare_jax`'s real step, with every
   ``nn.Conv`` of the model computed by each formulation in turn (``nn.intercept_methods``;
   the parameters and the function stay the same), rounds alternating between them.

The formulations (NHWC images, HWIO kernels, no dilation, one group):

* ``xla``: ``lax.conv_general_dilated``, what the models use;
* ``im2col``: every window gathered, then one matrix product (:func:`cnnjax.ops.conv2d`);
* ``taps``: one matrix product per kernel tap over a shifted (strided) view, summed;
* ``winograd``: Winograd's F(2x2, 3x3) (2.25x fewer multiplications; 3x3 kernels, stride 1,
  even output sizes);
* ``tap_dw``: XLA's forward pass and input gradient; the kernel gradient as one matrix product
  per tap (a custom VJP): XLA:CPU's kernel-gradient convolutions are its slowest.

A formulation that does not cover a convolution leaves it to XLA. Gradients and training
steps are differentiated through each formulation as written (``tap_dw`` excepted), so its
backward pass is what autodiff makes of it.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Pads = tuple[tuple[int, int], tuple[int, int]]
_NHWC = ("NHWC", "HWIO", "NHWC")


def _out_size(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> int:
    return (size + pads[0] + pads[1] - kernel) // stride + 1


def xla(x, w, strides, pads):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC)


def im2col(x, w, strides, pads):
    from cnnjax import ops

    return ops.conv2d(x, w, stride=strides, padding=pads).astype(jnp.result_type(x, w))


def _tap_views(x, kernel, strides, pads, out_hw):
    """``{(a, b): x_padded[:, a + s*i, b + s*j, :]}`` for every tap ``(a, b)``."""
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    (sh, sw), (oh, ow) = strides, out_hw
    n, c = x.shape[0], x.shape[3]
    return {(a, b): lax.slice(xp, (0, a, b, 0), (n, a + (oh - 1) * sh + 1,
                                                 b + (ow - 1) * sw + 1, c), (1, sh, sw, 1))
            for a in range(kernel[0]) for b in range(kernel[1])}


def taps(x, w, strides, pads):
    out_hw = tuple(_out_size(x.shape[1 + i], w.shape[i], strides[i], pads[i]) for i in range(2))
    views = _tap_views(x, w.shape[:2], strides, pads, out_hw)
    y = sum(lax.dot_general(v, w[a, b], (((3,), (0,)), ((), ())),
                            preferred_element_type=jnp.float32) for (a, b), v in views.items())
    return y.astype(jnp.result_type(x, w))


def _tap_kernel_grad(x, g, kernel, strides, pads):
    """d(sum(conv(x, w) * g))/dw, one ``[C_in, N*H*W] @ [N*H*W, C_out]`` product per tap."""
    views = _tap_views(x, kernel, strides, pads, g.shape[1:3])
    g2 = g.reshape(-1, g.shape[-1])
    grads = [lax.dot_general(views[a, b].reshape(-1, x.shape[-1]), g2, (((0,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)
             for a in range(kernel[0]) for b in range(kernel[1])]
    return jnp.stack(grads).reshape(*kernel, x.shape[-1], g.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def tap_dw(x, w, strides, pads):
    return xla(x, w, strides, pads)


def _tap_dw_fwd(x, w, strides, pads):
    return xla(x, w, strides, pads), (x, w)


def _tap_dw_bwd(strides, pads, residuals, g):
    x, w = residuals
    dx = jax.vjp(lambda a: xla(a, w, strides, pads), x)[1](g)[0]
    return dx, _tap_kernel_grad(x, g, w.shape[:2], strides, pads).astype(w.dtype)


tap_dw.defvjp(_tap_dw_fwd, _tap_dw_bwd)

# Winograd F(2x2, 3x3) (Lavin & Gray 2016): y = A^T [(G g G^T) * (B^T d B)] A per 4x4 tile d.
_WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)


def _bt(d):  # B^T d along one axis, d a list of 4 arrays
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _at(m):  # A^T m along one axis
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def winograd(x, w, strides, pads):
    n, c, d = x.shape[0], x.shape[3], w.shape[3]
    oh, ow = (_out_size(x.shape[1 + i], 3, 1, pads[i]) for i in range(2))
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    rows = _bt([lax.slice_in_dim(xp, a, a + oh - 1, 2, axis=1) for a in range(4)])
    tiles = [v for r in rows for v in _bt([lax.slice_in_dim(r, b, b + ow - 1, 2, axis=2)
                                           for b in range(4)])]
    v = jnp.stack(tiles).reshape(16, -1, c)
    u = jnp.einsum("ia,jb,abcd->ijcd", _WINOGRAD_G, _WINOGRAD_G, w).reshape(16, c, d)
    m = lax.dot_general(v, u.astype(v.dtype), (((2,), (1,)), ((0,), (0,))),
                        preferred_element_type=jnp.float32)
    m = m.reshape(4, 4, n, oh // 2, ow // 2, d)
    cols = _at([m[i] for i in range(4)])
    y = jnp.stack([jnp.stack(_at([col[j] for j in range(4)]), axis=3) for col in cols], axis=2)
    return y.reshape(n, oh, ow, d).astype(jnp.result_type(x, w))


def _winograd_covers(x_shape, w_shape, strides, pads) -> bool:
    if tuple(w_shape[:2]) != (3, 3) or tuple(strides) != (1, 1):
        return False
    return all(_out_size(x_shape[1 + i], 3, 1, pads[i]) % 2 == 0 for i in range(2))


PATHS: dict[str, Callable] = {"xla": xla, "im2col": im2col, "taps": taps, "winograd": winograd,
                              "tap_dw": tap_dw}
_COVERS = {"winograd": _winograd_covers}


def _check_paths(paths) -> None:
    for path in paths:
        if path not in PATHS:
            raise ValueError(f"unknown convolution path {path!r}; choose from {', '.join(PATHS)}")


def covers(path: str, x_shape, w_shape, strides, pads) -> bool:
    """Whether ``path`` computes this convolution itself (else it is left to XLA)."""
    check = _COVERS.get(path)
    return check is None or check(x_shape, w_shape, strides, pads)


def conv(path: str, x, w, strides=(1, 1), pads: Pads = ((0, 0), (0, 0))):
    """``lax.conv_general_dilated(x, w, strides, pads)`` (NHWC/HWIO) computed by ``path``."""
    _check_paths([path])
    strides, pads = tuple(strides), tuple(tuple(p) for p in pads)
    if not covers(path, x.shape, w.shape, strides, pads):
        path = "xla"
    return PATHS[path](x, w, strides, pads)


def conv_general_dilated(path: str) -> Callable:
    """A drop-in for ``lax.conv_general_dilated`` (as ``nn.Conv`` calls it) that computes plain
    NHWC/HWIO convolutions with ``path`` and passes anything else to ``lax``."""

    def fn(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
           dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
           preferred_element_type=None):
        plain = (lhs.ndim == 4 and feature_group_count == 1 and batch_group_count == 1
                 and all(d in (None, 1) for d in (lhs_dilation or ()) + (rhs_dilation or ()))
                 and preferred_element_type is None
                 and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
                 == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
        if plain:
            pads = (lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
                    if isinstance(padding, str) else padding)
            return conv(path, lhs, rhs, window_strides, pads)
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)

    return fn


def substituted(path: str):
    """A context in which every ``nn.Conv`` applied (not initialised) computes with ``path``,
    in place of lax or of :func:`cnnjax.models.layers.conv_general_dilated`."""
    import flax.linen as nn

    from cnnjax.models import layers

    fn = conv_general_dilated(path)
    replaceable = (None, layers.conv_general_dilated)  # plain, or the models' own formulations

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if (path != "xla" and context.method_name == "__call__" and isinstance(module, nn.Conv)
                and module.conv_general_dilated in replaceable
                and module.conv_general_dilated_cls is None
                and not module.is_initializing()):
            # This module instance only: linen builds new instances on every apply.
            object.__setattr__(module, "conv_general_dilated", fn)
        return next_fun(*args, **kwargs)

    return nn.intercept_methods(interceptor)


# --------------------------------------------------------------------------- the model's convs


def conv_shapes(model, image_shape: tuple[int, int, int], batch_size: int) -> list[dict]:
    """The convolutions of ``model``'s training forward pass: one entry per distinct
    (image shape, kernel shape, strides, padding), with ``count`` occurrences, in order."""
    x = jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                 rngs={"dropout": jax.random.key(0)}))(variables, x)
    found: collections.Counter = collections.Counter()
    for eqn in _equations(jaxpr.jaxpr):
        if eqn.primitive.name != "conv_general_dilated":
            continue
        p = eqn.params
        plain = (p["feature_group_count"] == 1 and p["batch_group_count"] == 1
                 and set(p["lhs_dilation"]) | set(p["rhs_dilation"]) <= {1}
                 and p["dimension_numbers"] == lax.conv_dimension_numbers(
                     eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, _NHWC))
        found[(tuple(eqn.invars[0].aval.shape), tuple(eqn.invars[1].aval.shape),
               tuple(p["window_strides"]), tuple(tuple(q) for q in p["padding"]), plain)] += 1
    return [{"x": list(x), "w": list(w), "strides": list(s), "pads": [list(q) for q in pads],
             "plain": plain, "count": count} for (x, w, s, pads, plain), count in found.items()]


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, list | tuple) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


# --------------------------------------------------------------------------------- timing

_WARMUP = 3  # calls before the timed ones (oneDNN and XLA:CPU both settle after the first)


def _best_ms(fn: Callable[[], Any], repeats: int) -> float:
    for _ in range(_WARMUP):
        jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def time_conv(path: str, shape: dict, repeats: int = 10) -> dict[str, float]:
    """Milliseconds of one convolution's forward pass, input and kernel gradients by ``path``."""
    from cnnjax import parallel

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape["x"], np.float32))
    w = jnp.asarray(rng.standard_normal(shape["w"], np.float32) * 0.1)
    strides, pads = tuple(shape["strides"]), tuple(tuple(p) for p in shape["pads"])
    f = functools.partial(conv, path, strides=strides, pads=pads)
    g = jnp.asarray(rng.standard_normal(jax.eval_shape(f, x, w).shape, np.float32))
    # Compiled as the training step is (parallel.compiler_options: on CPU, XLA's convolution
    # library kept off convolutions), so that each time is the one the step would see.
    options = parallel.compiler_options(parallel.make_mesh(jax.local_devices()[:1]))

    def compiled(fn, *args):
        return functools.partial(jax.jit(fn).lower(*args).compile(compiler_options=options), *args)

    fwd = compiled(f, x, w)
    dx = compiled(lambda x, w, g: jax.vjp(lambda a: f(a, w), x)[1](g)[0], x, w, g)
    dw = compiled(lambda x, w, g: jax.vjp(lambda b: f(x, b), w)[1](g)[0], x, w, g)
    return {"fwd": _best_ms(fwd, repeats), "dx": _best_ms(dx, repeats), "dw": _best_ms(dw, repeats)}


def time_torch_conv(shape: dict, repeats: int = 10) -> dict[str, float] | str:
    """The same three timings for ``torch.nn.functional.conv2d`` (NCHW), or why not."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        return f"n/a ({e})"
    (t, b), (left, right) = shape["pads"]
    if t != b or left != right:
        return "n/a (asymmetric padding)"
    n, h, wd, c = shape["x"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, wd, generator=gen)
    w = torch.randn(shape["w"][3], c, *shape["w"][:2], generator=gen) * 0.1
    kw = {"stride": tuple(shape["strides"]), "padding": (t, left)}
    g = torch.randn_like(F.conv2d(x, w, **kw))

    def backward(wrt_x: bool):  # the forward pass once, outside the timing; its graph kept
        a, k = x.detach().requires_grad_(wrt_x), w.detach().requires_grad_(not wrt_x)
        y = F.conv2d(a, k, **kw)
        return lambda: torch.autograd.grad(y, a if wrt_x else k, g, retain_graph=True)

    with torch.no_grad():  # torch on CPU returns when done: nothing for _best_ms to wait for
        fwd = _best_ms(lambda: F.conv2d(x, w, **kw), repeats)
    return {"fwd": fwd, "dx": _best_ms(backward(True), repeats),
            "dw": _best_ms(backward(False), repeats)}


def time_steps(paths: list[str], model: str, model_kwargs: dict[str, Any], batch_size: int,
               image_shape: tuple[int, int, int], num_classes: int, steps: int, warmup: int,
               rounds: int) -> dict[str, dict[str, Any]]:
    """The training step's images/s with the model's convolutions computed by each path."""
    from experiments.benchmarks import benchmark

    runners, results = {}, {}
    for path in paths:
        with substituted(path):
            info, runners[path] = benchmark.prepare_jax(
                model, model_kwargs, batch_size, image_shape, num_classes, "float32", warmup)
        results[path] = {"compile_s": info["lower_s"] + info["compile_s"],
                         "loss_after_warmup": info["loss_after_warmup"]}
    for path, times in benchmark.interleave(runners, steps, rounds).items():
        results[path].update(benchmark.timing(times))
        results[path]["images_per_s"] = batch_size / results[path]["median_s"]
    return results


def measure(model: str = "cifar_resnet20", *, batch_size: int = 128, image_size: int = 32,
            channels: int = 3, num_classes: int = 10, model_kwargs: dict[str, Any] | None = None,
            paths: tuple[str, ...] = tuple(PATHS), torch: bool = False, repeats: int = 10,
            step: bool = True, steps: int = 10, warmup: int = 2, rounds: int = 2,
            json_path: str | None = None) -> dict[str, Any]:
    """Both measurements of the module docstring; returns (and optionally writes) a dict."""
    from cnnjax import models

    _check_paths(paths)
    model_kwargs = dict(model_kwargs or {})
    image_shape = (image_size, image_size, channels)
    module = models.get_model(model, num_classes=num_classes, dtype=jnp.float32, **model_kwargs)
    shapes = conv_shapes(module, image_shape, batch_size)
    for shape in shapes:
        args = (shape["x"], shape["w"], shape["strides"], shape["pads"])
        shape["ms"] = {p: time_conv(p, shape, repeats) if shape["plain"] and covers(p, *args)
                       else "n/a (left to xla)" for p in paths}
        if torch:
            shape["ms"]["torch"] = time_torch_conv(shape, repeats)
    result = {"config": {"model": model, "model_kwargs": model_kwargs, "batch_size": batch_size,
                         "image_shape": list(image_shape), "paths": list(paths),
                         "repeats": repeats},
              "environment": {"device_kind": jax.devices()[0].device_kind,
                              "platform": jax.devices()[0].platform, "jax": jax.__version__},
              "convolutions": shapes, "totals_ms": _totals(shapes)}
    if step:
        result["steps"] = time_steps(list(paths), model, model_kwargs, batch_size, image_shape,
                                     num_classes, steps, warmup, rounds)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return result


def _totals(shapes: list[dict]) -> dict[str, dict[str, float]]:
    """Per path, fwd/dx/dw milliseconds over all convolutions (weighted by count); a path that
    leaves a convolution to XLA is charged XLA's time for it."""
    names = {p for s in shapes for p, v in s["ms"].items() if isinstance(v, dict)}
    totals = {}
    for path in sorted(names):
        total = dict.fromkeys(("fwd", "dx", "dw"), 0.0)
        for s in shapes:
            ms = s["ms"].get(path)
            ms = ms if isinstance(ms, dict) else s["ms"].get("xla")
            if not isinstance(ms, dict):
                break
            for k in total:
                total[k] += ms[k] * s["count"]
        else:
            totals[path] = total
    return totals


def table(result: dict[str, Any]) -> str:
    """A readable summary of :func:`measure`'s result."""
    c = result["config"]
    lines = [f"{c['model']} {c['model_kwargs'] or ''}, batch {c['batch_size']} x "
             f"{tuple(c['image_shape'])}, {result['environment']['device_kind']}; "
             f"ms per convolution (fwd / input grad / kernel grad), best of {c['repeats']}"]
    for s in result["convolutions"]:
        lines.append(f"  x {tuple(s['x'])} w {tuple(s['w'])} stride {tuple(s['strides'])} "
                     f"x{s['count']}")
        for path, ms in s["ms"].items():
            text = ms if isinstance(ms, str) else " / ".join(f"{ms[k]:8.2f}" for k in ms)
            lines.append(f"    {path:<9} {text}")
    lines.append("all convolutions, weighted by count (ms: fwd / input grad / kernel grad = sum)")
    for path, t in result["totals_ms"].items():
        lines.append(f"  {path:<9} {t['fwd']:8.1f} / {t['dx']:8.1f} / {t['dw']:8.1f} = "
                     f"{sum(t.values()):8.1f}")
    if "steps" in result:
        lines.append("training step with the model's convolutions by each path")
        for path, r in result["steps"].items():
            lines.append(f"  {path:<9} {r['images_per_s']:9,.1f} images/s (step "
                         f"{r['median_s'] * 1e3:.1f} ms median), compiled in "
                         f"{r['compile_s']:.1f} s, loss after warm-up "
                         f"{r['loss_after_warmup']:.6f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from experiments.benchmarks import benchmark

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchmark.add_model_arguments(p)
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated: {', '.join(PATHS)}")
    p.add_argument("--torch", action="store_true", help="also time torch's conv2d")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no_step", action="store_true", help="time the convolutions only")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None, help="write the result here")
    a = p.parse_args(argv)
    paths = tuple(s.strip() for s in a.paths.split(",") if s.strip())
    unknown = [s for s in paths if s not in PATHS]
    if unknown or not paths:
        p.error(f"--paths: unknown {unknown or 'none given'}; choose from {', '.join(PATHS)}")
    result = measure(a.model, batch_size=a.batch_size, image_size=a.image_size,
                     channels=a.channels, num_classes=a.num_classes,
                     model_kwargs=json.loads(a.model_kwargs), paths=paths, torch=a.torch,
                     repeats=a.repeats, step=not a.no_step, steps=a.steps, warmup=a.warmup,
                     rounds=a.rounds, json_path=a.json)
    print(table(result))
    return result


if __name__ == "__main__":
    main()
