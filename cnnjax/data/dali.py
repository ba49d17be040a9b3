"""The DALI loader (``data.loader=dali``): NVIDIA DALI decodes and crops the training JPEGs,
on the GPU (nvJPEG, ``device="mixed"``) where there is one, on the CPU otherwise.

An optional extra: ``pip install 'cnnjax[dali]'`` (``nvidia-dali-cuda120``). Which examples a
batch holds, and each one's crop and flip, are the streaming loader's: epoch ``e`` visits the
examples in ``epoch_permutation(seed, e)``, example ``i`` draws from ``default_rng([seed, e,
i])``. A DALI ``external_source`` feeds the pipeline those files and crop windows, and DALI
decodes only the window (``decoders.image_slice``), resizes it (antialiased, linear) and
flips it. So the data position is the step, as for the other loaders: a resumed run rebuilds
the pipeline at the step it resumes from and reads the identical next batch, on every
process, each of which reads its own slice of every global batch.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from cnnjax.data.loader import StepPosition, check_batch_size
from cnnjax.data.streaming import _TrainBatches
from cnnjax.data.transforms import Framing, central_crop_box, random_resized_crop_box
from cnnjax.errors import ConfigError

EXTRA = "pip install 'cnnjax[dali]'"


def available() -> bool:
    return importlib.util.find_spec("nvidia") is not None and \
        importlib.util.find_spec("nvidia.dali") is not None


def local_gpu() -> int | None:
    """The CUDA ordinal DALI decodes on: this process's first GPU (None: no GPU)."""
    import jax

    gpus = [d for d in jax.local_devices() if d.platform == "gpu"]
    return getattr(gpus[0], "local_hardware_id", 0) if gpus else None


def check(records: Any) -> None:
    """A one-line ``ConfigError`` unless DALI is installed and ``records`` are files it can
    decode (an image folder, or a TFDS dataset of encoded images)."""
    if not available():
        raise ConfigError(f"data.loader=dali needs NVIDIA DALI, which is not installed; "
                          f"{EXTRA}, or use --config.data.loader=streaming")
    if getattr(records, "encoded", None) is None:
        raise ConfigError(
            f"data.loader=dali decodes image files, and {records!r} holds decoded arrays; "
            "use it with folder:DIR or a TFDS dataset of images, or "
            "--config.data.loader=streaming")


class _Samples:
    """DALI's per-sample callback: the file, label, crop window and flip of sample
    ``idx_in_batch`` of batch ``iteration`` (counted from ``first_step``), in the streaming
    loader's order."""

    def __init__(self, order: _TrainBatches, first_step: int):
        self.order, self.first_step = order, first_step
        self.records, self.framing, self.seed = order.records, order.framing, order.seed

    def __call__(self, info) -> tuple[np.ndarray, ...]:
        import simplejpeg

        epoch, index = self.order.indices(self.first_step + info.iteration)
        i = int(index[info.idx_in_batch])
        record = self.records.encoded(i)
        data = record["encoded"]
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        rng = np.random.default_rng([self.seed, epoch, i])
        f = self.framing
        top, left, h, w = (random_resized_crop_box(height, width, rng)
                           if f.random_resized_crop else
                           central_crop_box(height, width, f.crop_fraction))
        flip = bool(f.flip and rng.random() < 0.5)
        return (np.frombuffer(data, np.uint8), np.asarray(record["label"], np.int32),
                np.asarray([left, top], np.float32), np.asarray([w, h], np.float32),
                np.asarray(flip, np.int32))


class DaliLoader(StepPosition):
    """Training batches decoded by DALI (see the module docstring); a ``TrainLoader``.

    ``device_id``: the GPU to decode on (None: the CPU, with ``threads`` threads).
    """

    name = "dali"

    def __init__(self, records, framing: Framing, global_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, threads: int = 2,
                 device_id: int | None = None):
        check(records)
        check_batch_size(global_batch_size, len(records))
        self.records, self.framing = records, framing
        self.global_batch_size, self.seed = global_batch_size, seed % 2**32
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = global_batch_size // process_count
        self.steps_per_epoch = len(records) // global_batch_size
        self.threads, self.device_id = threads, device_id
        self._order = _TrainBatches(records, framing, global_batch_size, self.seed,
                                    process_index, process_count, 0)
        self._pipe = None
        self._step = 0

    def _pipeline(self):
        from nvidia.dali import fn, pipeline_def, types

        samples = _Samples(self._order, self._step)
        gpu = self.device_id is not None
        f = self.framing

        @pipeline_def(batch_size=self.local_batch_size, num_threads=self.threads,
                      device_id=self.device_id, seed=self.seed, prefetch_queue_depth=2)
        def pipe():
            jpegs, labels, anchor, shape, flip = fn.external_source(
                source=samples, num_outputs=5, batch=False,
                dtype=[types.UINT8, types.INT32, types.FLOAT, types.FLOAT, types.INT32])
            images = fn.decoders.image_slice(
                jpegs, anchor, shape, axis_names="WH", normalized_anchor=False,
                normalized_shape=False, device="mixed" if gpu else "cpu",
                output_type=types.GRAY if f.channels == 1 else types.RGB)
            images = fn.resize(images, resize_x=f.width, resize_y=f.height, antialias=True,
                               interp_type=types.INTERP_LINEAR)
            images = fn.flip(images, horizontal=flip)
            return images, labels

        built = pipe()
        built.build()
        return built

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """``{"images": [b, h, w, c] uint8, "labels": [b] int32}``: this process's batch."""
        self._check_next(step)
        if self._pipe is None:
            self._pipe = self._pipeline()
        images, labels = self._pipe.run()
        if self.device_id is not None:
            images = images.as_cpu()
        self._step += 1
        return {"images": np.asarray(images.as_array(), np.uint8).reshape(
                    self.local_batch_size, *self.framing.shape),
                "labels": np.asarray(labels.as_array(), np.int32).reshape(-1)}

    def indices(self, step: int) -> np.ndarray:
        return self._order.indices(step)[1]

    def _reset(self) -> None:
        self._pipe = None
