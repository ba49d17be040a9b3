"""A trained run as a file a deployment runtime loads, checked against the run's own model.

    cnnjax export --workdir=W [--format=stablehlo|onnx] [--checkpoint=best] [--ema]
    cnnjax.load(W).export("stablehlo")

The exported program takes ``[batch, h, w, c]`` uint8 pixels (any batch: the dimension is
symbolic) and returns ``[batch, classes]`` float32 logits; the dataset's normalisation is
inside it. Every BatchNorm that directly follows a convolution is folded into it
(``fold_batchnorm``), so that the program holds convolutions with a bias and no statistics.

Before anything is written, the file's bytes are loaded back (``jax.export.deserialize``;
for ONNX, ``onnxruntime``) and run on a batch of the test split; their logits are compared
with the JAX model's, unfolded, as ``--mode=eval`` runs it. A file whose largest difference,
relative to the largest logit, is over ``tolerance`` is not written. The tolerance and the
difference are printed and recorded beside the file (``<file>.json``).

Files: ``W/export/step<N>[_ema].stablehlo`` (``jax.export``'s serialization, lowered for CPU
and CUDA: ``jax.export.deserialize(open(path, "rb").read()).call(images)``) and
``W/export/step<N>[_ema].onnx``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import errors, files, steps
from cnnjax import runrecord as runrecord_lib
from cnnjax.errors import ConfigError, first_line
from cnnjax.models import layers

TOLERANCE = 1e-5  # largest |exported - JAX| over the largest |JAX logit|
PLATFORMS = ("cpu", "cuda")  # the StableHLO file runs on either
CHECK_BATCH = 32  # test images the parity check runs


# ------------------------------------------------------------------------ BatchNorm folding

# Modules whose output is linear in ``kernel [..., out]`` per output channel, plus ``bias``.
CONVOLUTIONS = (nn.Conv, layers.SpaceToDepthStem)


def _batchnorm_pairs(model: nn.Module, variables: Any, images: Any) -> list[tuple]:
    """``(conv path, conv, batchnorm path, batchnorm)`` for every ``nn.BatchNorm`` whose input
    is the output of a convolution (``CONVOLUTIONS``), in an abstract (shape-only) forward
    pass; modules called more than once are left out."""
    outputs: dict[int, tuple] = {}  # id(conv output) -> (path, module)
    pairs = []
    calls: dict[tuple, int] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            module, path = context.module, tuple(context.module.scope.path)
            calls[path] = calls.get(path, 0) + 1
            if isinstance(module, CONVOLUTIONS):
                outputs[id(out)] = (path, module, out)
            elif (isinstance(module, nn.BatchNorm) and args and id(args[0]) in outputs
                  and outputs[id(args[0])][2] is args[0] and module.axis in (-1, 3)):
                conv_path, conv, _ = outputs[id(args[0])]
                pairs.append((conv_path, conv, path, module))
        return out

    def run(variables, images):
        with nn.intercept_methods(interceptor):
            model.apply(variables, images, train=False)
        return 0

    jax.eval_shape(run, variables, images)
    # A module called more than once (shared weights) is left as it is.
    return [p for p in pairs if calls[p[0]] == 1 and calls[p[2]] == 1]


def _copy(tree: Any) -> Any:
    """Nested dicts (or FrozenDicts) of arrays as new nested dicts of numpy arrays."""
    if isinstance(tree, Mapping):
        return {k: _copy(v) for k, v in tree.items()}
    return np.asarray(tree)


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def fold_batchnorm(model: nn.Module, variables: dict[str, Any], image_shape) -> tuple:
    """``(apply, folded variables, number folded)``: ``apply(variables, x)`` gives the eval-mode
    logits of ``model`` with each BatchNorm that directly follows a convolution folded into its
    kernel and a bias: ``conv(x, k * s) + (b - mean) * s + beta``, ``s = gamma / sqrt(var +
    eps)``; the BatchNorm itself passes its input through. Other BatchNorms stay as they are."""
    images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    pairs = _batchnorm_pairs(model, variables, images)
    params = _copy(variables["params"])  # the kernels and biases it changes are its own
    shifts: dict[tuple, np.ndarray] = {}
    folded_bn: set[tuple] = set()
    for conv_path, _, bn_path, bn in pairs:
        stats = _get(variables["batch_stats"], bn_path)
        bn_params = _get(variables["params"], bn_path) if bn.use_scale or bn.use_bias else {}
        mean, var = np.asarray(stats["mean"], np.float64), np.asarray(stats["var"], np.float64)
        gamma = np.asarray(bn_params["scale"], np.float64) if bn.use_scale else 1.0
        beta = np.asarray(bn_params["bias"], np.float64) if bn.use_bias else 0.0
        scale = gamma / np.sqrt(var + bn.epsilon)
        conv_params = _get(params, conv_path)
        kernel = np.asarray(conv_params["kernel"], np.float64)
        conv_params["kernel"] = (kernel * scale).astype(np.float32)
        if "bias" in conv_params:
            conv_params["bias"] = (np.asarray(conv_params["bias"], np.float64)
                                   * scale).astype(np.float32)
        shifts[conv_path] = (beta - mean * scale).astype(np.float32)
        folded_bn.add(bn_path)

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        path = tuple(context.module.scope.path)
        if path in folded_bn:
            return args[0]
        out = next_fun(*args, **kwargs)
        if path in shifts:
            out = out + shifts[path].astype(out.dtype)
        return out

    def apply(folded, x):
        with nn.intercept_methods(interceptor):
            return model.apply(folded, x, train=False)

    folded = {**variables, "params": params}
    return apply, folded, len(folded_bn)


# ------------------------------------------------------------------------------ exporting


@dataclasses.dataclass
class Exported:
    """An export that passed its check: the file, and what the check measured."""

    path: str
    format: str
    difference: float  # largest |exported - JAX| / largest |JAX logit| on the check batch
    tolerance: float
    folded_batchnorms: int
    check_images: int


def logits_fn(model: nn.Module, variables: Any, info, folded: bool = True):
    """``(images uint8 [b, h, w, c] -> logits float32, BatchNorms folded)`` of ``model``."""
    if folded:
        apply, variables, count = fold_batchnorm(model, variables, info.image_shape)
    else:
        count = 0
        apply = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
    variables = jax.tree.map(jnp.asarray, variables)

    def logits(images):
        return apply(variables, steps.normalize(images, info.mean, info.std)).astype(
            jnp.float32)

    return logits, count


def relative_difference(got: np.ndarray, want: np.ndarray) -> float:
    """Largest absolute difference over the largest absolute value of ``want``."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def stablehlo_bytes(logits, image_shape) -> bytes:
    """``logits`` lowered by ``jax.export`` for CPU and CUDA with a symbolic batch."""
    (batch,) = jax.export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch, *image_shape), jnp.uint8)
    exported = jax.export.export(jax.jit(logits), platforms=PLATFORMS)(spec)
    return bytes(exported.serialize())


def run_stablehlo(blob: bytes, images: np.ndarray) -> np.ndarray:
    """Logits from a serialized StableHLO export, as a deployment would load it."""
    return np.asarray(jax.export.deserialize(bytearray(blob)).call(jnp.asarray(images)))


ONNX_NEEDS = ("--format=onnx needs jax2onnx, onnx and onnxruntime, not installed: pip install "
              "'cnnjax[export]' && pip install --no-deps 'jax2onnx==0.17.1' (docs/deploy.md); "
              "or export --format=stablehlo")


def onnx_available() -> bool:
    try:
        import jax2onnx  # noqa: F401
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_bytes(logits, image_shape) -> bytes:
    """``logits`` converted by jax2onnx with a symbolic batch."""
    import logging

    # jax2onnx imports all its plugins, and logs each one whose framework (Equinox, dm-pix)
    # is not installed: nothing a cnnjax model uses.
    quiet = logging.getLogger("jax2onnx")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        import jax2onnx
        from jax2onnx.plugins import plugin_system

        plugin_system.import_all_plugins()
    finally:
        quiet.setLevel(level)

    import onnx

    model = jax2onnx.to_onnx(logits, [jax.ShapeDtypeStruct(("batch", *image_shape), jnp.uint8)],
                             model_name="cnnjax")
    # jax2onnx 0.17.1's transpose-removal pass keeps the shape annotations of the values it
    # rewrote, so a residual sum is annotated with an NCHW operand and an NHWC one, which
    # onnxruntime rejects; the computation is right. The annotations are dropped and inferred
    # again from the graph, and the result is checked as a whole.
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def run_onnx(blob: bytes, images: np.ndarray) -> np.ndarray:
    """Logits from a serialized ONNX model, run by onnxruntime on CPU."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: not jax2onnx's shape annotations
    session = onnxruntime.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: np.asarray(images)})[0])


@dataclasses.dataclass(frozen=True)
class Format:
    """An export format: how its file is written and run back, and what it needs.

    Attributes:
      write: ``(logits function, image shape) -> file bytes``.
      run: ``(file bytes, images [n, h, w, c] uint8) -> logits [n, classes]``, as a
        deployment runtime loads the file.
      folded: BatchNorm folded into the convolutions before writing (else the runtime folds).
      switches: the speed switches the model is traced with (``layers.Performance``).
      platforms: where the file runs, recorded beside it.
      available: whether its packages are installed; ``needs``: the line saying how, if not.
    """

    write: Callable[[Callable, tuple[int, ...]], bytes]
    run: Callable[[bytes, np.ndarray], np.ndarray]
    folded: bool
    switches: layers.Performance | None  # None: the run's own
    platforms: tuple[str, ...]
    available: Callable[[], bool] = lambda: True
    needs: str = ""


# The formats --format and .export() accept: a new format is one entry.
FORMATS: dict[str, Format] = {
    "stablehlo": Format(stablehlo_bytes, run_stablehlo, folded=True, switches=None,
                        platforms=PLATFORMS),
    # jax2onnx replaces flax's Conv and BatchNorm calls with its own, which the folding's
    # interception does not see: an ONNX file keeps its BatchNormalization nodes, which
    # onnxruntime folds into the convolutions when it loads the file. Its speed switches are
    # off: each is the same function as its plain form, which ONNX has operators for.
    "onnx": Format(onnx_bytes, run_onnx, folded=False, switches=layers.PORTABLE,
                   platforms=("onnxruntime",), available=lambda: onnx_available(),
                   needs=ONNX_NEEDS),
}


def convert(model: nn.Module, variables: Any, info, images: np.ndarray, fmt: str,
            tolerance: float = TOLERANCE, name: str = "the model") -> tuple[bytes, float, int]:
    """``(file bytes, measured difference, BatchNorms folded)`` of ``model`` exported as
    ``fmt``, its bytes loaded back and run on ``images``; a ``ConfigError`` if the
    difference from the unfolded model's logits is over ``tolerance`` or the converter
    refuses the model."""
    with layers.performing(FORMATS[fmt].switches or layers.performance()):
        return _convert(model, variables, info, images, fmt, tolerance, name)


def _convert(model, variables, info, images, fmt, tolerance, name):
    form = FORMATS[fmt]
    want = np.asarray(jax.jit(logits_fn(model, variables, info, folded=False)[0])(images))
    logits, count = logits_fn(model, variables, info, folded=form.folded)
    try:
        blob = form.write(logits, info.image_shape)
        got = form.run(blob, images)
    except Exception as e:  # noqa: BLE001 -- a converter's or runtime's refusal: one line
        first = first_line(e, 300)
        raise ConfigError(f"{name} cannot be exported as {fmt} ({type(e).__name__}: "
                          f"{first}); nothing was written") from None
    difference = relative_difference(got, want)
    if not difference <= tolerance:
        raise ConfigError(
            f"the {fmt} export of {name} differs from the JAX model by {difference:.2e} "
            f"(relative to the largest logit) on {len(images)} test images, over the "
            f"tolerance {tolerance:.0e}; nothing was written (raise --tolerance to accept it)")
    return blob, difference, count


def check_request(fmt: str, tolerance: float) -> None:
    """A one-line ``ConfigError`` for an unknown format, a bad tolerance or a missing extra."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise ConfigError(f"the export tolerance must be a number >= 0, got {tolerance!r}")
    if not FORMATS[fmt].available():
        raise ConfigError(FORMATS[fmt].needs)


def export(run, fmt: str = "stablehlo", *, tolerance: float = TOLERANCE,
           out_dir: str | None = None, images: np.ndarray | None = None) -> Exported:
    """Exports ``run`` (a ``cnnjax.run.Run``) as ``fmt``, checks it, and writes it; see the
    module docstring. ``images``: the check batch (default: the test split's first 32)."""
    check_request(fmt, tolerance)
    runrecord_lib.warn_if_other_data(run.workdir, run.config.data)  # the check batch is test data
    info = run.info
    if images is None:
        images = run.test_images(CHECK_BATCH)[0]
    blob, difference, count = convert(run.model, run.variables, info, images, fmt,
                                      tolerance, run.config.model.name)
    out_dir = out_dir or os.path.join(run.workdir, "export")
    ema = "_ema" if run.ema else ""
    path = os.path.join(out_dir, f"step{run.step}{ema}.{fmt}")
    result = Exported(path, fmt, difference, tolerance, count, len(images))
    with errors.writing(path):
        os.makedirs(out_dir, exist_ok=True)
    files.write_atomic(path, blob)
    files.write_json(f"{path}.json", {
        **dataclasses.asdict(result), "workdir": run.workdir, "checkpoint": run.checkpoint,
        "step": run.step, "ema": bool(ema), "model": run.config.model.name,
        "input": {"shape": ["batch", *info.image_shape], "dtype": "uint8",
                  "mean": list(info.mean), "std": list(info.std)},
        "output": {"shape": ["batch", info.num_classes], "dtype": "float32",
                   "meaning": "logits"},
        "platforms": list(FORMATS[fmt].platforms)})
    return result


def describe(result: Exported) -> str:
    return (f"{result.path}: {result.format}, logits within {result.difference:.1e} of the JAX "
            f"model on {result.check_images} test images (tolerance {result.tolerance:.0e}; "
            f"{result.folded_batchnorms} BatchNorms folded)")


def read_meta(path: str) -> dict[str, Any]:
    with open(f"{path}.json") as f:
        return json.load(f)
