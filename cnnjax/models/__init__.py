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


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds the module registered as ``name`` with the given fields."""
    ctor = get_constructor(name)
    check_kwargs(name, {k: v for k, v in kwargs.items() if k != "axis_name"})
    if isinstance(kwargs.get("dtype"), str):  # configs name dtypes: "float32", "bfloat16"
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    return ctor(**kwargs)


def _import_zoo() -> None:
    # Importing a model file registers its models; done lazily so that `cnnjax.models`
    # stays importable without pulling in every architecture.
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
