"""ImageNet-shaped JPEGs, without a download, through every loader: images/s per host core,
scaling with the worker count, and against the model's own images/s on this machine.

    python -m experiments.benchmarks.loaders                         # 2048 JPEGs in a temp dir
    python -m experiments.benchmarks.loaders --dir=/data/jpegs --images=20000 --workers=0,4,8,16
    python -m experiments.benchmarks.loaders --model=resnet50 --json=loaders.json

The images follow ImageNet's shape: sides drawn around 400x350 (long side log-normal about
450 pixels, ImageNet's aspect ratios), photo-like content (smooth colour fields, edges and
noise) saved by PIL at quality 90, about 110 KB each. They are written once as an image
folder (``DIR/folder/{train,test}/<class>/*.jpg``) and as a TFDS dataset prepared as
ArrayRecord (``DIR/tfds``, JPEG bytes in an ``Image`` feature), without TensorFlow.

Each loader frames 224x224 training batches with random-resized crops and flips, as for
ImageNet: ``before`` is the previous streaming path (Grain over decoded records, one element
per example, ``Framing.train``); ``streaming`` is cnnjax's (one element per batch, decoded at
reduced DCT scale where the crop allows); ``dali`` is ``cnnjax.data.dali`` where NVIDIA DALI
is installed. The first row of each loader runs with the whole process pinned to one core;
the others may use every core, and "per core" divides by their number.
With ``--model``, the model's training step is timed on a synthetic batch and then fed by
the streaming loader, so the end-to-end figure stands beside the one it should reach.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
import time
from typing import Any

from absl import app, flags, logging

from experiments.benchmarks.jpeg_dataset import CLASSES, write_folder, write_tfds

_DIR = flags.DEFINE_string("dir", "", "Where the JPEGs are (written once); '' = a temp dir.")
_IMAGES = flags.DEFINE_integer("images", 2048, "Training JPEGs (plus 10% for a test split).")
_SIZE = flags.DEFINE_integer("size", 224, "Training image size (square).")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker counts to measure.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Global batch size.")
_BATCHES = flags.DEFINE_integer("batches", 10, "Batches timed per measurement.")
_MODEL = flags.DEFINE_string("model", "", "A model to time fed by the loader ('' = none).")
_STEPS = flags.DEFINE_integer("steps", 5, "--model: steps timed per feed.")
_DTYPE = flags.DEFINE_string("dtype", "auto", "--model: computation dtype (auto: bfloat16 on "
                             "GPU/TPU, float32 on CPU).")
_JSON = flags.DEFINE_string("json", "", "Write the results here as JSON.")

def before_loader(records, framing, batch_size: int, seed: int, workers: int):
    """The previous streaming path, kept here as the baseline: Grain over decoded records
    (decoding in its read threads), ``Framing.train`` per example, then ``grain.Batch``."""
    import grain.python as grain

    class TrainMap(grain.RandomMapTransform):
        def random_map(self, element, rng):
            return {"image": framing.train(element["image"], rng), "label": element["label"]}

    loader = grain.DataLoader(
        data_source=records,
        sampler=grain.IndexSampler(len(records), shard_options=grain.NoSharding(),
                                   shuffle=True, num_epochs=None, seed=seed),
        operations=[TrainMap(), grain.Batch(batch_size, drop_remainder=True)],
        worker_count=workers, worker_buffer_size=2, shard_options=grain.NoSharding(),
        read_options=grain.ReadOptions(num_threads=4, prefetch_buffer_size=2 * batch_size))
    iterator = iter(loader)

    class Loader:
        def batch(self, step):
            b = next(iterator)
            return {"images": b["image"], "labels": b["label"]}

    return Loader()


def rate(loader, batches: int) -> float:
    """Images per second over ``batches`` batches, after a first one (start-up excluded).
    The loader is dropped afterwards, its worker processes stopped, before the next runs."""
    n = len(loader.batch(0)["images"])
    start = time.perf_counter()
    for step in range(1, batches + 1):
        loader.batch(step)
    elapsed = time.perf_counter() - start
    del loader
    gc.collect()  # Grain's iterators stop their workers when collected
    time.sleep(1.0)
    return batches * n / elapsed


def _loaders(folder: str, data_dir: str, tfds_name: str, size: int, batch_size: int):
    """``{name: make(workers)}`` for every loader."""
    from cnnjax.data import local, sources, streaming
    from cnnjax.data.transforms import Framing

    framing = Framing(size, size, 3, crop_fraction=0.875, random_resized_crop=True, flip=True)
    from_folder = local.open_folder(folder).train
    from_tfds = sources.open_tfds(tfds_name, data_dir).train
    makers = {
        "before (folder)": lambda w: before_loader(from_folder, framing, batch_size, 0, w),
        "streaming (folder)": lambda w: streaming.StreamingLoader(
            from_folder, framing, batch_size, 0, workers=w),
        "streaming (tfds)": lambda w: streaming.StreamingLoader(
            from_tfds, framing, batch_size, 0, workers=w),
    }
    from cnnjax.data import dali

    if dali.available():
        makers["dali (folder)"] = lambda w: dali.DaliLoader(
            from_folder, framing, batch_size, 0, threads=max(w, 1), device_id=dali.local_gpu())
    return makers


def measure(folder: str, data_dir: str, tfds_name: str, *, size: int, batch_size: int,
            batches: int, workers: list[int]) -> list[dict[str, Any]]:
    """One row per (loader, worker count), and per loader a row pinned to one core."""
    rows = []
    all_cores = os.sched_getaffinity(0)
    for name, make in _loaders(folder, data_dir, tfds_name, size, batch_size).items():
        os.sched_setaffinity(0, {min(all_cores)})  # workers inherit it: one core in all
        try:
            one = rate(make(0), batches)
        finally:
            os.sched_setaffinity(0, all_cores)
        rows.append({"loader": name, "workers": 0, "cores": 1, "images_per_s": one})
        for w in workers:  # threads and workers may use every core
            rows.append({"loader": name, "workers": w, "cores": len(all_cores),
                         "images_per_s": rate(make(w), batches)})
    return rows


def end_to_end(model: str, folder: str, size: int, batch_size: int, workers: int,
               steps: int, dtype: str = "auto") -> dict[str, Any]:
    """The model's training step on one synthetic batch, then fed by the streaming loader
    (and by DALI where it is installed), the batch put on the devices as training does."""
    import jax

    from cnnjax import parallel
    from cnnjax.data import local, streaming
    from cnnjax.data.transforms import Framing
    from experiments.benchmarks.benchmark import _train_step, resolve_dtype

    mesh = parallel.make_mesh(jax.local_devices())
    dtype = resolve_dtype(dtype, jax.local_devices()[0].platform)
    step, state, batch = _train_step(model, {}, batch_size, (size, size, 3), CLASSES, dtype,
                                     mesh)

    def timed(next_batch) -> float:
        nonlocal state
        state, _ = step(state, next_batch(0))  # compiled, loader started
        jax.block_until_ready(state)
        start = time.perf_counter()
        for i in range(1, steps + 1):
            state, _ = step(state, next_batch(i))
        jax.block_until_ready(state)
        return steps * batch_size / (time.perf_counter() - start)

    result: dict[str, Any] = {"model": model, "dtype": dtype, "workers": workers,
                              "synthetic_images_per_s": timed(lambda i: batch)}
    framing = Framing(size, size, 3, crop_fraction=0.875, random_resized_crop=True, flip=True)
    records = local.open_folder(folder).train
    feeds = {"streaming": lambda: streaming.StreamingLoader(records, framing, batch_size, 0,
                                                            workers=workers)}
    from cnnjax.data import dali

    if dali.available():
        feeds["dali"] = lambda: dali.DaliLoader(records, framing, batch_size, 0,
                                                threads=max(workers, 1),
                                                device_id=dali.local_gpu())
    for name, make in feeds.items():
        loader = make()
        fed = timed(lambda i, loader=loader: parallel.global_batch(loader.batch(i), mesh))
        result[f"{name}_images_per_s"] = fed
        result[f"{name}_vs_synthetic"] = fed / result["synthetic_images_per_s"]
    return result


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.ERROR)  # TFDS and Grain log at INFO
    root = _DIR.value or tempfile.mkdtemp(prefix="cnnjax-jpegs-")
    folder, data_dir = os.path.join(root, "folder"), os.path.join(root, "tfds")
    t = time.perf_counter()
    stats = write_folder(folder, _IMAGES.value)
    tfds_name = write_tfds(folder, data_dir)
    cores = len(os.sched_getaffinity(0))
    print(f"host: {cores} cores; {stats['images']} training JPEGs, mean "
          f"{stats['mean_width']:.0f}x{stats['mean_height']:.0f} px, {stats['mean_kb']:.0f} KB "
          f"(in {root}, ready in {time.perf_counter() - t:.0f} s); {_SIZE.value}x{_SIZE.value} "
          f"random-resized crops and flips, batch {_BATCH.value}", flush=True)
    rows = measure(folder, data_dir, tfds_name, size=_SIZE.value, batch_size=_BATCH.value,
                   batches=_BATCHES.value, workers=[int(w) for w in _WORKERS.value])
    base = next(r["images_per_s"] for r in rows if r["loader"].startswith("before")
                and r["cores"] == 1)
    print(f"{'loader':<22} {'workers':>7} {'cores':>5} {'images/s':>10} {'per core':>9} "
          f"{'per core vs before':>19}")
    for r in rows:
        per_core = r["images_per_s"] / r["cores"]
        r["per_core"] = per_core
        print(f"{r['loader']:<22} {r['workers']:>7} {r['cores']:>5} {r['images_per_s']:>10,.0f} "
              f"{per_core:>9,.0f} {per_core / base:>18.2f}x", flush=True)
    result: dict[str, Any] = {"data": stats, "rows": rows}
    if _MODEL.value:
        workers = max(int(w) for w in _WORKERS.value)
        e2e = end_to_end(_MODEL.value, folder, _SIZE.value, _BATCH.value, workers,
                         _STEPS.value, _DTYPE.value)
        result["end_to_end"] = e2e
        fed = ", ".join(f"{e2e[f'{n}_images_per_s']:,.1f} fed by {n} "
                        f"({e2e[f'{n}_vs_synthetic']:.2f}x)" for n in ("streaming", "dali")
                        if f"{n}_images_per_s" in e2e)
        print(f"{_MODEL.value} ({e2e['dtype']}, {workers} workers): "
              f"{e2e['synthetic_images_per_s']:,.1f} images/s on a synthetic batch; {fed}",
              flush=True)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    app.run(main)
