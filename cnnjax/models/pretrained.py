"""torchvision weights -> cnnjax variables, and Orbax checkpoints of them (every arch in
``ARCHS``: the ResNets, ResNeXts, Wide ResNets and VGGs).

Usage::

    state_dict = load_state_dict("resnet50.pth")  # torch.load(weights_only=True); or .safetensors
    variables = convert_torchvision(state_dict, "resnet50")
    save_pretrained(variables, "/ckpt/resnet50")
    variables = load_pretrained("/ckpt/resnet50")
    logits = get_model("resnet50").apply(variables, images_nhwc)

or from the shell::

    python -m cnnjax.models.pretrained --arch=resnet50 --torch_weights=resnet50.pth --out=/ckpt/r50

Layouts: convolutions OIHW -> HWIO, Linear (out, in) -> (in, out); BatchNorm weight, bias,
running_mean, running_var -> scale, bias, mean, var; ``num_batches_tracked`` is dropped. Images
go in as NHWC here rather than torchvision's NCHW, normalised the same way.

torch and orbax are imported inside the functions that need them: the model registry imports
every file of this package, and importing the models must not require (or pay for) either.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from cnnjax.models import get_model
from cnnjax.models.regnet import REGNETS

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
         "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
         "wide_resnet50_2", "wide_resnet101_2",
         "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
         "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
         *(f"efficientnet_b{i}" for i in range(8)),
         "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l",
         "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
         "densenet121", "densenet161", "densenet169", "densenet201",
         *sorted(REGNETS))
# torchvision's name of the last layer (cnnjax's ``head``), by the arch's family (its prefix).
HEADS = {"resnet": "fc", "resnext": "fc", "wide_resnet": "fc", "vgg": "classifier.6",
         "convnext": "classifier.2", "efficientnet": "classifier.1",
         "mobilenet_v2": "classifier.1", "mobilenet_v3": "classifier.3",
         "densenet": "classifier", "regnet": "fc"}

# Flax leaf names -> torchvision's, per collection.
_LEAF = {
    "params": {"kernel": "weight", "scale": "weight", "bias": "bias"},
    "batch_stats": {"mean": "running_mean", "var": "running_var"},
}
# Flax module names that are not torchvision's with "_" -> ".".
_MODULE = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1",
           "trunk_output": "trunk_output"}


# torchvision's DenseNet files name a layer's norms and convolutions "norm.1", "conv.2" (the
# names of an older torchvision); torchvision renames them on loading, and so does this.
_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def head_key(arch: str) -> str:
    """torchvision's name of ``arch``'s last layer: ``fc`` (ResNets), ``classifier.6`` (VGG)."""
    return next(HEADS[f] for f in sorted(HEADS, key=len, reverse=True) if arch.startswith(f))


def _torch_key(collection: str, path: tuple[str, ...], head: str = "fc") -> str:
    *modules, leaf = path
    parts = [head if m == "head" else _MODULE.get(m, m.replace("_", ".")) for m in modules]
    return ".".join([*parts, _LEAF[collection].get(leaf, leaf)])  # layer_scale: as it is


_LEAF_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}


def _key_order(key: str):
    """Sorts keys module by module (``layer2.10`` after ``layer2.9``), leaves in torch's order."""
    module, _, leaf = key.rpartition(".")
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in module.split("."))
    return parts, _LEAF_ORDER.get(leaf, len(_LEAF_ORDER)), leaf


def _torch_shape(shape: tuple[int, ...], leaf: str = "") -> tuple[int, ...]:
    if leaf == "layer_scale":  # ConvNeXt's: (C, 1, 1) in torch, broadcast over NCHW
        return (*shape, 1, 1)
    if len(shape) == 4:  # HWIO -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:  # (in, out) -> (out, in)
        return (shape[1], shape[0])
    return tuple(shape)


def _from_torch_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        array = array.transpose(2, 3, 1, 0)
    elif array.ndim == 2:
        array = array.T
    return np.ascontiguousarray(array)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch.Tensor, without torch
        return value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def _shape_of(value: Any) -> tuple[int, ...]:
    shape = getattr(value, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else np.shape(value)


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def expected_variables(arch: str, num_classes: int | None = None) -> dict:
    """Shapes and dtypes (``jax.ShapeDtypeStruct``) of ``get_model(arch).init(...)``'s tree."""
    if arch not in ARCHS:
        raise ValueError(f"unsupported arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = get_model(arch, **kwargs)
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32))


def convert_torchvision(
    state_dict: Mapping[str, Any], arch: str, *, num_classes: int | None = None
) -> dict:
    """Converts a torchvision state_dict of ``arch`` into ``{"params", "batch_stats"}``.

    The result has exactly the tree of ``get_model(arch, num_classes=...).init(...)`` (float32
    arrays); ``num_classes`` defaults to the model's own default (1000, as torchvision's).
    Missing or unexpected keys and shape mismatches raise one ValueError naming all of them.
    """
    expected = expected_variables(arch, num_classes)
    wanted: dict[str, tuple[str, tuple[str, ...], Any]] = {}
    for collection in ("params", "batch_stats"):
        for path, spec in _flatten(expected.get(collection, {})).items():
            wanted[_torch_key(collection, path, head_key(arch))] = (collection, path, spec)

    given = {_LEGACY.sub(r"\1\2", k) if arch.startswith("densenet") else k: v
             for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")}
    missing = sorted((k for k in wanted if k not in given), key=_key_order)
    unexpected = sorted((k for k in given if k not in wanted), key=_key_order)
    mismatched = []
    for key in sorted(wanted, key=_key_order):
        spec = wanted[key][2]
        if key in given:
            shape, want = _shape_of(given[key]), _torch_shape(spec.shape, wanted[key][1][-1])
            if shape != want:
                mismatched.append(f"{key} {shape} vs expected {want}")
    problems = []
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected: " + ", ".join(unexpected))
    if mismatched:
        problems.append("shape mismatch: " + ", ".join(mismatched))
    if problems:
        raise ValueError(f"state_dict does not fit {arch}: " + "; ".join(problems))

    flat: dict[str, dict[tuple[str, ...], Any]] = {c: {} for c in expected}
    for key, (collection, path, spec) in wanted.items():
        array = _from_torch_layout(_to_numpy(given[key])).reshape(spec.shape)
        flat[collection][path] = jnp.asarray(array, dtype=spec.dtype)
    return {collection: _unflatten(leaves) for collection, leaves in flat.items()}


convert_torchvision_resnet = convert_torchvision  # the name it had when it took ResNets only


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """A torchvision state_dict from a ``.safetensors`` file (read with the ``safetensors``
    package alone: no torch, no code) or a ``.pth`` file (:func:`load_torch_state_dict`)."""
    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        return load_torch_state_dict(path)
    from safetensors import SafetensorError  # only for .safetensors files
    from safetensors.numpy import load_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} as a safetensors file ({e}); pass the "
                         ".safetensors file of a torchvision state_dict") from None


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a ``.pth`` state_dict with ``torch.load(weights_only=True)`` (tensors only, no code).

    Accepts a bare state_dict or a training checkpoint holding one under ``"state_dict"``.
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "reading .pth files needs PyTorch; install it (the CPU build is enough): "
            "pip install torch"
        ) from e
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; all mean "not a state_dict"
        raise ValueError(
            f"cannot read {path} as a PyTorch state_dict of tensors ({type(e).__name__}); "
            "pass the .pth file torchvision saves (torch.save(model.state_dict(), path))"
        ) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    return dict(obj)


def save_pretrained(variables: Any, directory: str | os.PathLike, *, overwrite: bool = False):
    """Writes ``variables`` as an Orbax checkpoint in ``directory`` (returned, made absolute)."""
    path = os.path.abspath(os.fspath(directory))
    checkpointer = ocp.StandardCheckpointer()
    try:
        checkpointer.save(path, variables, force=overwrite)
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()
    return path


def load_pretrained(directory: str | os.PathLike) -> Any:
    """Restores a checkpoint written by :func:`save_pretrained` (same tree, jax arrays)."""
    path = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint directory: {path}")
    checkpointer = ocp.StandardCheckpointer()
    try:
        metadata = checkpointer.metadata(path).item_metadata
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), metadata)
        return checkpointer.restore(path, target)
    finally:
        checkpointer.close()


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(
        prog="python -m cnnjax.models.pretrained",
        description="Convert torchvision weights (.pth) into a cnnjax Orbax checkpoint.",
    )
    parser.add_argument("--arch", required=True, help=f"one of: {', '.join(ARCHS)}")
    parser.add_argument("--torch_weights", required=True,
                        help="the torchvision state_dict: a .pth (needs torch) or a "
                             ".safetensors file (needs only the safetensors package)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--num_classes", type=int, default=None,
                        help="classifier width (default: the model's, 1000)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    try:
        if args.arch not in ARCHS:
            raise ValueError(f"unsupported arch {args.arch!r}; choose one of: {', '.join(ARCHS)}")
        if args.num_classes is not None and args.num_classes < 1:
            raise ValueError(f"--num_classes={args.num_classes} must be >= 1 (or left out for "
                             "the model's 1000)")
        parent = os.path.dirname(os.path.abspath(args.out))
        try:  # before the conversion: Orbax would fail only at the end, and hang
            tempfile.TemporaryFile(dir=parent).close()
        except OSError:
            raise ValueError(f"--out={args.out}: {parent} is not a writable folder; pass a path "
                             "in one") from None
        if os.path.exists(args.out) and not args.overwrite:
            raise ValueError(f"{args.out} already exists (pass --overwrite to replace it)")
        state_dict = load_state_dict(args.torch_weights)
        variables = convert_torchvision(state_dict, args.arch, num_classes=args.num_classes)
        path = save_pretrained(variables, args.out, overwrite=args.overwrite)
    except (OSError, ValueError, ImportError) as e:
        message = " ".join(str(e).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    classes = variables["params"]["head"]["bias"].shape[0]
    print(f"wrote {args.arch} ({params:,} parameters, {classes} classes) "
          f"from {args.torch_weights} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
