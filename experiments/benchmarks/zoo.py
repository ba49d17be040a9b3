"""Every torchvision family's smallest member, cnnjax against torchvision, in one process:

    python -m experiments.benchmarks.zoo [--batch_size=32 --image_size=64 --steps=5]

For each model, the training step (uint8 -> normalise -> forward -> cross-entropy -> backward ->
SGD with momentum) of cnnjax, torchvision eager and ``torch.compile`` is compiled and warmed
up, then timed in alternating rounds (``benchmark.benchmark`` with ``torch=True``). Prints one
line per model: cnnjax's images/s and its speed over each of torchvision's (median step
times; above 1 is faster). torch's ``"n/a (...)"`` says why a mode could not run.
"""

from __future__ import annotations

import argparse

from experiments.benchmarks.benchmark import benchmark

SMALLEST = ("resnet18", "resnext50_32x4d", "wide_resnet50_2", "vgg11", "vgg11_bn",
            "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "efficientnet_v2_s",
            "convnext_tiny", "regnet_x_400mf", "regnet_y_400mf", "densenet121")


def _ratio(result, mode: str) -> str:
    r = (result.get("ratios") or {}).get(f"cnnjax / torch {mode}")
    if r is None:
        info = result.get("torch", {}).get(mode)
        return info if isinstance(info, str) else "n/a"
    return f"{r['median']:.2f}x"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(SMALLEST))
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no_torch_compile", action="store_true")
    args = p.parse_args(argv)
    print(f"batch {args.batch_size}, {args.image_size}x{args.image_size}x3, 1000 classes, "
          f"{args.rounds} rounds of {args.steps} steps; cnnjax / torch: median step times")
    print(f"{'model':<20} {'cnnjax img/s':>12} {'torch eager img/s':>18} "
          f"{'/ eager':>8} {'/ compile':>10}")
    for name in args.models.split(","):
        result = benchmark(name, batch_size=args.batch_size, image_size=args.image_size,
                           num_classes=1000, steps=args.steps, rounds=args.rounds,
                           warmup=2, torch=True, torch_compile=not args.no_torch_compile,
                           loader=False)
        eager = result.get("torch", {}).get("eager")
        eager_rate = f"{eager['images_per_s']:.1f}" if isinstance(eager, dict) else "n/a"
        print(f"{name:<20} {result['jax']['images_per_s']:>12.1f} {eager_rate:>18} "
              f"{_ratio(result, 'eager'):>8} {_ratio(result, 'compile'):>10}", flush=True)


if __name__ == "__main__":
    main()
