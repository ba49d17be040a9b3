"""On-device augmentation inside the jitted step: a table of ops composed from the config.

``data.augment`` lists ops with their arguments, e.g.
``'crop(padding=4) flip randaugment(num_ops=2,magnitude=9) erasing(p=0.25)'``; ``OPS`` is the
table (one entry per op: its arguments with their defaults and ranges, and the function).
Image ops run in the order listed, per example under ``vmap`` on the uint8 batch, before
normalisation; batch ops (mixup, cutmix) run after it and give soft targets. The older fields
``data.crop_padding``, ``data.flip``, ``data.mixup_alpha`` and ``data.cutmix_alpha`` are
shorthands for ``crop``, ``flip``, ``mixup`` and ``cutmix``, placed first (``chain``).

Each example's randomness comes from ``fold_in(key, global_index)``, where ``global_index`` is
the example's position in the global batch, split into one key per image op: the same example
gets the same pixels whether the batch runs on 1 device or 8, and a resumed run repeats them.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from cnnjax.data import policies
from cnnjax.data.ops import pad_crop
from cnnjax.errors import ConfigError

Chain = tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]


@dataclasses.dataclass(frozen=True)
class Arg:
    """An op's argument: its default, and the test a value must pass (given all arguments)."""

    default: Any
    ok: Callable[[Any, dict[str, Any]], bool] = lambda v, a: True
    allowed: str = ""


@dataclasses.dataclass(frozen=True)
class Op:
    """An augmentation op.

    Attributes:
      fn: image ops: ``fn(image [h, w, c] uint8, key, **args) -> image`` (same shape);
        ``None`` for batch ops, which ``mix`` runs on the normalised batch.
      args: the op's arguments by name.
      what: one line for the docs and errors.
      batch: a batch op (mixes examples, soft targets).
    """

    fn: Callable[..., jax.Array] | None
    args: dict[str, Arg]
    what: str
    batch: bool = False


def _crop(image, key, padding):
    dy, dx = jax.random.randint(key, (2,), 0, 2 * padding + 1)
    return pad_crop(image, dy, dx, padding)


def _flip(image, key, p):
    return jnp.where(jax.random.bernoulli(key, p), image[:, ::-1], image)


_unit = Arg(0.5, lambda v, a: 0 <= v <= 1, "in [0, 1]")
_pair = lambda lo, hi: (lambda v, a: lo <= v[0] <= v[1] <= hi)  # noqa: E731
_bins = Arg(31, lambda v, a: 2 <= v <= 256, "in [2, 256]")

OPS: dict[str, Op] = {
    "crop": Op(_crop, {"padding": Arg(4, lambda v, a: v >= 0, ">= 0")},
               "a random h x w window of the image padded with zeros (torchvision RandomCrop)"),
    "flip": Op(_flip, {"p": _unit}, "left-right flip with probability p"),
    "resized_crop": Op(policies.resized_crop, {
        "scale": Arg((0.08, 1.0), _pair(1e-6, 1.0), "(lo, hi) with 0 < lo <= hi <= 1"),
        "ratio": Arg((3 / 4, 4 / 3), _pair(1e-3, 1e3), "(lo, hi) with 0 < lo <= hi")},
        "random-resized crop back to the image size (RandomResizedCrop, bilinear)"),
    "jitter": Op(policies.jitter, {
        "brightness": Arg(0.4, lambda v, a: v >= 0, ">= 0"),
        "contrast": Arg(0.4, lambda v, a: v >= 0, ">= 0"),
        "saturation": Arg(0.4, lambda v, a: v >= 0, ">= 0"),
        "hue": Arg(0.0, lambda v, a: 0 <= v <= 0.5, "in [0, 0.5]")},
        "colour jitter in a random order (ColorJitter)"),
    "randaugment": Op(policies.randaugment, {
        "num_ops": Arg(2, lambda v, a: 0 <= v <= 16, "in [0, 16]"),
        "magnitude": Arg(9, lambda v, a: 0 <= v < a["num_magnitude_bins"],
                         "in [0, num_magnitude_bins - 1]"),
        "num_magnitude_bins": _bins}, "RandAugment (torchvision's RandAugment)"),
    "trivialaugment": Op(policies.trivialaugment, {"num_magnitude_bins": _bins},
                         "TrivialAugment (torchvision's TrivialAugmentWide)"),
    "autoaugment": Op(policies.autoaugment, {
        "policy": Arg("imagenet", lambda v, a: v in policies.AUTOAUGMENT_POLICIES,
                      "one of " + ", ".join(policies.AUTOAUGMENT_POLICIES))},
        "AutoAugment's learned policy (torchvision's AutoAugment)"),
    "erasing": Op(policies.erasing, {
        "p": _unit, "scale": Arg((0.02, 0.33), _pair(1e-6, 1.0),
                                 "(lo, hi) with 0 < lo <= hi <= 1"),
        "ratio": Arg((0.3, 3.3), _pair(1e-3, 1e3), "(lo, hi) with 0 < lo <= hi"),
        "value": Arg(0, lambda v, a: 0 <= v <= 255, "in [0, 255]")},
        "random erasing of a box, set to value (RandomErasing)"),
    "mixup": Op(None, {"alpha": Arg(1.0, lambda v, a: v > 0, "> 0")},
                "mixup: blend with a partner, Beta(alpha, alpha) weights", batch=True),
    "cutmix": Op(None, {"alpha": Arg(1.0, lambda v, a: v > 0, "> 0")},
                 "cutmix: paste a box of a partner, Beta(alpha, alpha) kept area", batch=True),
}

_SYNTAX = ("data.augment={spec!r} is not a list of ops like "
           "'crop(padding=4) flip randaugment(num_ops=2,magnitude=9)' ({why})")


def parse(spec: str) -> Chain:
    """``spec`` (``data.augment``) as ``((name, ((arg, value), ...)), ...)``, every argument
    given (defaults filled in), in the order listed; ``ConfigError`` (one line) otherwise."""
    ops, i = [], 0
    word = re.compile(r"[\s,]*([A-Za-z_]\w*)\s*")
    while spec[i:].strip(" ,\t\n"):
        m = word.match(spec, i)
        if not m:
            raise ConfigError(_SYNTAX.format(spec=spec, why=f"at {spec[i:].strip()!r}"))
        name, i, text = m.group(1), m.end(), ""
        if spec[i:i + 1] == "(":
            depth, j = 0, i
            for j in range(i, len(spec)):
                depth += {"(": 1, ")": -1}.get(spec[j], 0)
                if depth == 0:
                    break
            if depth:
                raise ConfigError(_SYNTAX.format(spec=spec, why="a '(' is not closed"))
            text, i = spec[i + 1:j], j + 1
        ops.append((name, _arguments(spec, name, text)))
    names = [n for n, _ in ops]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"data.augment names {twice[0]!r} twice; give each op once")
    return tuple(ops)


def _arguments(spec: str, name: str, text: str) -> tuple[tuple[str, Any], ...]:
    if name not in OPS:
        raise ConfigError(f"unknown augmentation op {name!r} in data.augment; choose from: "
                          + ", ".join(sorted(OPS)))
    op = OPS[name]
    try:
        call = ast.parse(f"f({text})", mode="eval").body
        if not isinstance(call, ast.Call) or call.args:
            raise ValueError("arguments are name=value")
        given = {k.arg: (k.value.id if isinstance(k.value, ast.Name)
                         else ast.literal_eval(k.value)) for k in call.keywords}
    except (SyntaxError, ValueError) as e:
        raise ConfigError(_SYNTAX.format(spec=spec, why=f"{name}({text}): {e}")) from None
    for key in given:
        if key not in op.args:
            raise ConfigError(f"data.augment: {name} has no argument {key!r}; its arguments: "
                              + ", ".join(op.args))
    args = {k: a.default for k, a in op.args.items()} | given
    for key, value in given.items():
        default = op.args[key].default
        value = float(value) if isinstance(default, float) and isinstance(value, int) else value
        if isinstance(default, tuple) and isinstance(value, (tuple, list)):
            value = tuple(float(v) for v in value if isinstance(v, (int, float)))
        good_type = (type(value) is type(default) and (
            not isinstance(default, tuple) or len(value) == len(default)))
        args[key] = value
        if not good_type or not op.args[key].ok(value, args):
            raise ConfigError(f"data.augment: {name}'s {key} must be {op.args[key].allowed}"
                              f", got {given[key]!r}")
    return tuple(args.items())


def format_chain(chain: Chain) -> str:
    """The canonical ``data.augment`` string of ``chain`` (every argument written)."""
    return " ".join(f"{name}({','.join(f'{k}={v!r}' for k, v in args)})" for name, args in chain)


def chain(data: Any) -> Chain:
    """The ops of config section ``data``: the shorthand fields' (crop, flip, mixup, cutmix),
    then ``data.augment``'s; an op given both ways is a ``ConfigError``."""
    short = []
    if data["crop_padding"]:
        short.append(("crop", (("padding", data["crop_padding"]),)))
    if data["flip"]:
        short.append(("flip", (("p", 0.5),)))
    for name in ("mixup", "cutmix"):
        if data[f"{name}_alpha"]:
            short.append((name, (("alpha", float(data[f"{name}_alpha"])),)))
    listed = parse(data.get("augment", ""))
    for name, _ in short:
        if name in dict(listed):
            field = {"crop": "crop_padding", "flip": "flip"}.get(name, f"{name}_alpha")
            raise ConfigError(f"{name} is given twice, by data.{field} and by data.augment; "
                              f"keep one (data.augment is preferred)")
    return tuple(short) + listed


def without(chain: Chain, name: str) -> Chain:
    """``chain`` less op ``name`` (a loader that did it on the host)."""
    return tuple(op for op in chain if op[0] != name)


def augment(images: jax.Array, key: jax.Array, global_index: jax.Array,
            spec: str | Chain = "") -> jax.Array:
    """The image ops of ``spec`` (a ``data.augment`` string or a parsed ``Chain``), in order.

    Args:
      images: ``[b, h, w, c]`` uint8; the output has the same shape and dtype.
      key: the step's key.
      global_index: ``[b] int32``, each example's position in the global batch.
    """
    ops = [(OPS[name].fn, dict(args)) for name, args in
           (parse(spec) if isinstance(spec, str) else spec) if not OPS[name].batch]
    if not ops:
        return images

    def one(image, k):
        # At least two keys, so that a crop (and a crop then a flip) draws as it always has.
        keys = jax.random.split(k, max(len(ops), 2))
        for (fn, args), op_key in zip(ops, keys, strict=False):
            image = fn(image, op_key, **args)
        return image

    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, global_index)
    return jax.vmap(one)(images, keys)


def mix_alphas(spec: str | Chain) -> dict[str, float]:
    """``mix``'s keyword arguments (``mixup_alpha``, ``cutmix_alpha``) from ``spec``."""
    ops = dict(parse(spec) if isinstance(spec, str) else spec)
    return {f"{name}_alpha": dict(ops[name])["alpha"] if name in ops else 0.0
            for name in ("mixup", "cutmix")}


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
