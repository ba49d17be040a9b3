"""Model registry: every network is a Flax linen module chosen by name.

Contract for every registered module (so the training loop can treat them alike):

* fields ``num_classes: int``, ``dtype`` (computation dtype; params stay float32) and
  ``axis_name: str | None`` (the device axis BatchNorm averages its statistics over, set by
  the training loop when it runs the per-device step; ``None`` elsewhere);
* ``__call__(self, x, train: bool = False)`` with ``x: [batch, height, width, channels]``
  float, returning logits ``[batch, num_classes]``.

Usage::

    model = cnnjax.models.get_model("cnn", num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    logits = model.apply(variables, images)
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

# Fields the training loop sets itself; a config may not set them.
_LOOP_FIELDS = ("axis_name", "parent", "name")


def register(name: str, constructor: Callable[..., nn.Module] | None = None):
    """Registers ``constructor`` (a module class or a ``functools.partial`` preset) as ``name``.

    Usable as a decorator (``@register("mlp")``) or a call (``register("resnet18", partial(...))``).
    """

    def add(ctor):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ctor
        return ctor

    return add(constructor) if constructor is not None else add


def names() -> list[str]:
    """The registered model names, sorted."""
    _import_zoo()
    return sorted(_REGISTRY)


def _module_class(ctor) -> type[nn.Module]:
    while hasattr(ctor, "func"):  # functools.partial presets
        ctor = ctor.func
    return ctor


def model_fields(name: str) -> dict[str, Any]:
    """The configurable fields of model ``name`` and their defaults (preset values included)."""
    ctor = get_constructor(name)
    cls = _module_class(ctor)
    fields = {
        f.name: f.default
        for f in dataclasses.fields(cls)
        if f.name not in _LOOP_FIELDS and f.init
    }
    preset = getattr(ctor, "keywords", None) or {}
    fields.update(preset)
    return fields


def get_constructor(name: str) -> Callable[..., nn.Module]:
    _import_zoo()
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown model {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def check_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Raises a one-line ValueError for a field that model ``name`` does not have."""
    valid = model_fields(name)
    for key in kwargs:
        if key not in valid:
            raise ValueError(
                f"model {name!r} has no field {key!r}; its fields are: {', '.join(sorted(valid))}"
            )


DTYPES = ("float32", "bfloat16", "float16")
ACTIVATIONS = ("relu", "gelu", "silu", "swish", "tanh", "sigmoid", "elu", "selu", "celu",
               "leaky_relu", "softplus", "hard_swish", "hard_tanh", "relu6")


def _positive_ints(v: Any, empty: bool = False) -> bool:
    return (isinstance(v, (tuple, list)) and (empty or len(v) > 0)
            and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v))


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _padding(v: Any) -> bool:
    if isinstance(v, str):
        return v.upper() in ("SAME", "VALID")
    if isinstance(v, int) and not isinstance(v, bool):
        return v >= 0
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(
        _padding(p) and not isinstance(p, str) for p in v)


# The range of a model field, by name, whichever model has it: (test, what it must be).
FIELD_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "features": (_positive_ints, "a non-empty tuple of positive widths, e.g. (32,64)"),
    "stage_sizes": (_positive_ints, "a non-empty tuple of positive block counts, e.g. (2,2,2,2)"),
    "hidden": (lambda v: _positive_ints(v, empty=True), "a tuple of positive widths"),
    "dense": (lambda v: _positive_ints(v, empty=True), "a tuple of positive widths"),
    "kernel_size": (_positive_int, "a positive integer"),
    "strides": (_positive_int, "a positive integer"),
    "pool_window": (_positive_int, "a positive integer"),
    "pool_every": (_positive_int, "a positive integer"),
    "depth": (_positive_int, "a positive integer"),
    "widen_factor": (_positive_int, "a positive integer"),
    "groups": (_positive_int, "a positive integer"),
    "width_per_group": (_positive_int, "a positive integer"),
    "dropout": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "in [0, 1)"),
    "drop_path_rate": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "in [0, 1)"),
    "dtype": (lambda v: str(v) in DTYPES or getattr(v, "__name__", None) in DTYPES,
              f"one of {', '.join(DTYPES)}"),
    "activation": (lambda v: v in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}"),
    "pool": (lambda v: v in ("max", "avg", "none"), "'max', 'avg' or 'none'"),
    "padding": (_padding, "'SAME', 'VALID', pixels per side, or ((top,bottom),(left,right))"),
    "ops": (lambda v: v in ("lax", "scratch"), "'lax' or 'scratch'"),
    "block": (lambda v: v in ("basic", "bottleneck"), "'basic' or 'bottleneck'"),
    "shortcut": (lambda v: v in ("A", "B"), "'A' or 'B'"),
}


def check_fields(name: str, fields: dict[str, Any]) -> None:
    """Raises a one-line ValueError for a field of model ``name`` out of its range.

    Every field is checked by ``FIELD_RULES``; a module class may add its own rules (the
    depths a CIFAR ResNet can have, say) as a classmethod ``check_fields(fields)`` that gets
    every field, defaults filled in.
    """
    for key, value in fields.items():
        if key in FIELD_RULES and not FIELD_RULES[key][0](value):
            raise ValueError(f"model.{key} of {name!r} must be {FIELD_RULES[key][1]}, "
                             f"got {value!r}")
    _check_model_rules(name, fields)


def _check_model_rules(name: str, fields: dict[str, Any]) -> None:
    # A module's own rules (a ResNet's depth), run by validation and by every model build,
    # so the module itself need not repeat them in __call__.
    cls = _module_class(get_constructor(name))
    if hasattr(cls, "check_fields"):
        cls.check_fields({**model_fields(name), **fields})


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds the module registered as ``name`` with the given fields."""
    ctor = get_constructor(name)
    fields = {k: v for k, v in kwargs.items() if k != "axis_name"}
    check_kwargs(name, fields)
    _check_model_rules(name, fields)
    if isinstance(kwargs.get("dtype"), str):  # configs name dtypes: "float32", "bfloat16"
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    return ctor(**kwargs)


def from_config(section: Any, num_classes: int, axis_name: str | None = None) -> nn.Module:
    """The module a config's ``model`` section describes (``name`` and that model's fields);
    the one way a run, an evaluation and the plots build their model."""
    fields = {k: v for k, v in section.items() if k != "name"}
    return get_model(section["name"], num_classes=num_classes, axis_name=axis_name, **fields)


def _import_zoo() -> None:
    # Importing a model file registers its models; done lazily so that `cnnjax.models`
    # stays importable without pulling in every architecture.
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def field_help(name: str) -> dict[str, str]:
    """What each configurable field of model ``name`` means: the ``Attributes:`` section of
    its module's docstring (a module class's fields may be documented by a base class)."""
    found: dict[str, str] = {}
    for cls in reversed(_module_class(get_constructor(name)).__mro__):
        found.update(_attributes(inspect.getdoc(cls) or ""))
    return {k: found.get(k, "") for k in model_fields(name)}


def _attributes(doc: str) -> dict[str, str]:
    """``{field: text}`` from a Google-style ``Attributes:`` section (continuations joined)."""
    out, key, indent = {}, None, None
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Attributes:"), None)
    if start is None:
        return out
    for line in lines[start + 1:]:
        if not line.strip():
            if key is not None:
                continue
            break
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent:
            break
        m = re.match(r"\s*(\w+(?:, \w+)*): (.*)", line)
        if depth == indent and m:
            key = m.group(1).split(", ")
            out.update(dict.fromkeys(key, m.group(2).strip()))
        elif key is not None:
            for k in key:
                out[k] += " " + line.strip()
    return out
