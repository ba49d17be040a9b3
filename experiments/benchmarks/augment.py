"""What the augmentation policies cost: images/s of the training step with and without
RandAugment, TrivialAugment and random erasing, in the same run.

    python -m experiments.benchmarks.augment                 # CIFAR ResNet-20 at 32x32 and
                                                             # ResNet-50 at 224x224, CPU
    python -m experiments.benchmarks.augment --quick         # fewer steps, for a smoke run

Timed is the real training step (``steps.make_train_step`` with ``augment=SPEC``, the state
donated) on a fixed synthetic uint8 batch, over every local device. Each spec's step is
compiled first (not timed); then the specs take turns, one step each per round, so that a
shared machine's changing load falls on all of them alike; each step is synchronised and the
median is reported. ``augment alone`` times the jitted augmentation of the same batch, without
the model. The policies choose an op per example with ``lax.switch``, which under ``vmap``
computes every branch for every image and keeps one: its cost is in these figures.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import config, models, optim, parallel, steps
from cnnjax.data import augment
from experiments.benchmarks.benchmark import synthetic_batch

SPECS = {
    "none": "",
    "randaugment": "randaugment(num_ops=2,magnitude=9)",
    "trivialaugment": "trivialaugment",
    "erasing": "erasing(p=0.25)",
}
CASES = {  # model, image size, batch, classes
    "cifar_resnet20": ("cifar_resnet20", 32, 64, 10),
    "resnet50": ("resnet50", 224, 8, 1000),
}


def _steps(model_name: str, size: int, batch_size: int, num_classes: int):
    mesh = parallel.make_mesh()
    model = models.get_model(model_name, num_classes=num_classes, axis_name=parallel.AXIS)
    opt = config.defaults().optimizer
    opt.update(schedule="constant")
    schedule = optim.make_schedule(opt, 1, 1)
    tx = optim.make_optimizer(opt, schedule)
    shape = (size, size, 3)
    batch = parallel.global_batch(synthetic_batch(batch_size, shape, num_classes), mesh)
    states, fns = {}, {}
    for name, spec in SPECS.items():
        states[name] = steps.init_state(model, tx, 0, shape, mesh)
        fns[name] = steps.make_train_step(mesh, model=model, tx=tx, schedule=schedule,
                                          mean=(127.5,) * 3, std=(64.0,) * 3, augment=spec)
    return batch, states, fns


def _augment_alone(spec: str, images: np.ndarray, repeats: int) -> float:
    fn = jax.jit(lambda x, k: augment.augment(x, k, jnp.arange(x.shape[0]), spec))
    x = jnp.asarray(images)
    fn(x, jax.random.key(0)).block_until_ready()
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(x, jax.random.key(i + 1)).block_until_ready()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run_case(name: str, rounds: int) -> None:
    model_name, size, batch_size, num_classes = CASES[name]
    batch, states, fns = _steps(model_name, size, batch_size, num_classes)
    for spec in SPECS:  # compile, and one step to warm up
        start = time.perf_counter()
        states[spec], m = fns[spec](states[spec], batch)
        jax.block_until_ready(m)
        print(f"  {name} {spec}: compiled and one step in {time.perf_counter() - start:.1f} s",
              flush=True)
    times = {spec: [] for spec in SPECS}
    for _ in range(rounds):
        for spec in SPECS:
            start = time.perf_counter()
            states[spec], m = fns[spec](states[spec], batch)
            jax.block_until_ready(m)
            times[spec].append(time.perf_counter() - start)
    images = np.asarray(synthetic_batch(batch_size, (size, size, 3), num_classes)["images"])
    base = float(np.median(times["none"]))
    print(f"\n{model_name} at {size}x{size}, batch {batch_size}, {rounds} timed steps each "
          f"(median)")
    print("| augmentation | step ms | images/s | step vs none | augment alone ms |")
    print("| --- | --- | --- | --- | --- |")
    for spec, value in SPECS.items():
        t = float(np.median(times[spec]))
        alone = _augment_alone(value, images, max(rounds, 3)) * 1e3 if value else 0.0
        print(f"| {value or 'none'} | {t * 1e3:.1f} | {batch_size / t:.1f} | "
              f"{(t / base - 1) * 100:+.1f}% | {alone:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cifar_resnet20,resnet50",
                        help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per spec")
    parser.add_argument("--quick", action="store_true", help="2 timed steps per spec")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.steps
    print(f"{jax.devices()[0].platform} x{jax.device_count()}, {platform.processor() or ''} "
          f"jax {jax.__version__}", flush=True)
    for name in args.models.split(","):
        run_case(name.strip(), rounds)


if __name__ == "__main__":
    main()
