"""A trained run as ``cnnjax.load`` returns it: an ``evaluate.Run`` (``model``, ``variables``,
``config``, ``predict``, ``evaluate``) that also explains its predictions and exports itself.
Above ``evaluate``, ``explain`` and ``export``, which take the plain ``evaluate.Run``."""

from __future__ import annotations

import dataclasses
from typing import Any

from cnnjax import evaluate, explain, export


@dataclasses.dataclass
class Run(evaluate.Run):
    """``evaluate.Run`` with ``explain(images)`` and ``export(format)``."""

    @classmethod
    def of(cls, run: evaluate.Run) -> Run:
        return cls(**{f.name: getattr(run, f.name) for f in dataclasses.fields(run)})

    def explain(self, images: Any = None, *, write: bool = True):
        """Grad-CAM and input-gradient saliency of the predicted class for ``images`` (as for
        ``predict``; default: the first 8 test images), drawn as PNGs into ``W/plots`` unless
        ``write=False``: a ``cnnjax.explain.Explanation``."""
        return explain.explain(self, images, write=write)

    def export(self, format: str = "stablehlo", *, tolerance: float | None = None):
        """Writes the model as ``W/export/step<N>[_ema].<format>`` (``stablehlo`` or ``onnx``)
        after checking its logits against this model's on test images: a
        ``cnnjax.export.Exported`` (path, measured difference, tolerance)."""
        return export.export(self, format,
                             tolerance=export.TOLERANCE if tolerance is None else tolerance)
