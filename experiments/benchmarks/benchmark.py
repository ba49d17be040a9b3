"""Training-step throughput of any registered model on synthetic data, with a PyTorch reference.

    python -m experiments.benchmarks.benchmark --model=cifar_resnet20 --batch_size=128 \\
        --image_size=32 --channels=3 --num_classes=10 --dtype=float32 --steps=20 --torch \\
        --json=out.json
    # the default experiment's digits CNN (features (32, 64), BatchNorm, dense 128, 8x8x1):
    python -m experiments.benchmarks.benchmark --model=cnn --model_kwargs='{"batch_norm": true}' \\
        --image_size=8 --channels=1 --batch_size=32 --torch --torch_threads=2,1 --rounds=3
    # GPU (dtype auto = bfloat16; MFU against the device's dense bf16 peak, e.g. H100 989):
    python -m experiments.benchmarks.benchmark --model=resnet50 --image_size=224 \\
        --num_classes=1000 --batch_size=256 --torch --rounds=3 --json=h100_resnet50.json

Timed is the real training step: ``steps.make_train_step`` (per-device step under
``jax.shard_map`` in ``jax.jit``, state donated, ``parallel.compiler_options``) with SGD +
momentum 0.9 + weight decay 5e-4 from ``optim``, over every local device, on a fixed synthetic
uint8 batch. Lowering and compilation are timed apart; step times are individually synchronised
steps after ``warmup``, reported as median and best. With ``--torch`` the PyTorch twin
(:mod:`experiments.benchmarks.benchmark_torch`) runs in the same process, eager and
``torch.compile``d;
``--rounds`` alternates the frameworks so that a shared machine's changing load falls on all.
FLOPs come from XLA's ``cost_analysis()`` of the lowered step (the program as written, per
device, times the device count; the compiled GPU program's own analysis leaves out the cuDNN
convolutions). Peak memory is ``device.memory_stats()["peak_bytes_in_use"]`` where the backend
has it (GPU/TPU), else the process's peak resident set (VmHWM) during the phase. The in-memory
loader (``InMemoryLoader.batch`` + ``parallel.global_batch``) is timed at the same batch and
image size.

``--compilation_cache_dir`` times a cached relaunch: run the command twice and read
"first step ... after the process started" (imports, initialisation, tracing, loading the
compiled step from JAX's cache, and one step). ``--profile_dir`` traces a few steps
with ``jax.profiler`` and prints where the device time goes
(:mod:`experiments.benchmarks.profiling`); the trace opens in Perfetto or TensorBoard.

``--dtype=auto`` computes in bfloat16 on GPU/TPU (parameters stay float32) and in float32 on
CPU; torch then uses bf16 autocast and channels_last on GPU. ``--xla_flags`` appends to
``XLA_FLAGS`` before JAX starts; ``--ab_xla_cpu_defaults`` also times the step compiled with
XLA:CPU's own defaults instead of ``parallel.CPU_COMPILER_OPTIONS``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from experiments.benchmarks.measure import (  # noqa: F401 -- also used as benchmark.X
    LEARNING_RATE,
    MOMENTUM,
    WEIGHT_DECAY,
    peak_rss_bytes,
    reset_peak_rss,
    seconds_since_process_start,
    timing,
)

# Dense peak TFLOP/s per device by (device-kind substring, dtype); the first match wins.
# "float32" on these GPUs means TF32 tensor cores, which XLA uses for f32 dots by default.
PEAK_TFLOPS = (
    ("H100 PCIe", {"bfloat16": 756.0, "float16": 756.0, "float32": 378.0}),
    ("H100", {"bfloat16": 989.0, "float16": 989.0, "float32": 494.5}),
    ("H200", {"bfloat16": 989.0, "float16": 989.0, "float32": 494.5}),
    ("A100", {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0}),
    ("TPU v4", {"bfloat16": 275.0, "float32": 275.0}),
    ("TPU v5 lite", {"bfloat16": 197.0, "float32": 197.0}),
    ("TPU v5", {"bfloat16": 459.0, "float32": 459.0}),
)
# XLA:CPU's own defaults, which cnnjax's `parallel.CPU_COMPILER_OPTIONS` replace (for A/B runs).
XLA_CPU_DEFAULTS = {"xla_cpu_experimental_ynn_fusion_type": ",".join(
    f"LIBRARY_FUSION_TYPE_{t}" for t in ("INDIVIDUAL_DOT", "INDIVIDUAL_CONVOLUTION", "REDUCE"))}


def default_peak_tflops(device_kind: str, dtype: str) -> float | None:
    """The dense peak of one device for ``dtype``, or None when unknown (CPUs)."""
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


def _device_peak(device) -> tuple[int, str]:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device.memory_stats peak_bytes_in_use"
    return peak_rss_bytes(), "process peak RSS (VmHWM)"


@contextlib.contextmanager
def _counting(event: str) -> Iterator[list[str]]:
    """Collects JAX monitoring events named ``event`` recorded inside the block."""
    import jax  # not at the top: --xla_flags must reach XLA_FLAGS before JAX starts

    seen: list[str] = []

    def listener(name: str, **_: Any) -> None:
        if name == event:
            seen.append(name)

    jax.monitoring.register_event_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_listener(listener)


def resolve_dtype(dtype: str, platform_name: str) -> str:
    if dtype == "auto":
        return "float32" if platform_name == "cpu" else "bfloat16"
    return dtype


def synthetic_batch(batch_size: int, image_shape: tuple[int, ...], num_classes: int, seed=0):
    """``{"images": [b, h, w, c] uint8, "labels": [b] int32}`` of random values."""
    rng = np.random.default_rng(seed)
    return {
        "images": rng.integers(0, 256, (batch_size, *image_shape), dtype=np.uint8),
        "labels": rng.integers(0, num_classes, (batch_size,), dtype=np.int32),
    }


def _flops(stage) -> float | None:
    """XLA's FLOP count of a lowered or compiled program (per device), or None."""
    try:
        cost = stage.cost_analysis()
    except Exception:  # noqa: BLE001 -- not every backend/stage offers an analysis
        return None
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and cost.get("flops", 0) > 0 else None


def _train_step(model_name: str, model_kwargs: dict[str, Any], batch_size: int,
                image_shape: tuple[int, int, int], num_classes: int, dtype: str, mesh):
    """cnnjax's jitted train step, its initial state and a synthetic global batch."""
    from cnnjax import config, models, optim, parallel, steps

    if batch_size % mesh.size:
        raise ValueError(f"batch_size {batch_size} is not divisible by {mesh.size} devices")
    model = models.get_model(model_name, num_classes=num_classes, dtype=dtype,
                             axis_name=parallel.AXIS, **model_kwargs)
    opt = config.defaults().optimizer
    opt.update(name="sgd", learning_rate=LEARNING_RATE, momentum=MOMENTUM,
               weight_decay=WEIGHT_DECAY, schedule="constant")
    schedule = optim.make_schedule(opt, 1, 1)
    tx = optim.make_optimizer(opt, schedule)
    state = steps.init_state(model, tx, 0, image_shape, mesh)
    train_step = steps.make_train_step(
        mesh, model=model, tx=tx, schedule=schedule,
        mean=(127.5,) * image_shape[-1], std=(64.0,) * image_shape[-1],
    )
    batch = parallel.global_batch(synthetic_batch(batch_size, image_shape, num_classes), mesh)
    return train_step, state, batch


def prepare_jax(model_name: str, model_kwargs: dict[str, Any], batch_size: int,
                image_shape: tuple[int, int, int], num_classes: int, dtype: str, warmup: int,
                compiler_options: dict[str, Any] | None = None):
    """Builds, compiles and warms up cnnjax's train step.

    Returns ``(info, step)``: ``info`` holds the parameter count, lower/compile seconds, FLOPs
    and memory; ``step(n)`` runs ``n`` steps and returns the per-step seconds, synchronising
    after every step (``sync=True``) or once at the end (``sync=False``: back-to-back dispatch,
    as the training loop runs; one mean value is returned).
    """
    import jax

    from cnnjax import config, parallel
    from cnnjax.models import layers

    mesh = parallel.make_mesh(jax.local_devices())
    # The speed switches (space_to_depth_stem, conv_impl, ...) are no model fields: a run's
    # performance section, in force while the step is traced.
    switches = {k: v for k, v in model_kwargs.items() if k in config.PERFORMANCE_FIELDS}
    model_kwargs = {k: v for k, v in model_kwargs.items() if k not in switches}
    rss_reset = reset_peak_rss()
    before_init = seconds_since_process_start()
    t_init = time.perf_counter()
    with layers.performing(switches):
        train_step, state, batch = _train_step(
            model_name, model_kwargs, batch_size, image_shape, num_classes, dtype, mesh)
        jax.block_until_ready((state, batch))
        t0 = time.perf_counter()
        # The program as written: the compiled GPU program's analysis misses the convolutions
        # and matrix products handed to cuDNN/cuBLAS (custom calls), nearly all its FLOPs.
        lowered = train_step.lower(state, batch)
    t1 = time.perf_counter()
    with _counting("/jax/compilation_cache/cache_hits") as hits:
        compiled = lowered.compile(compiler_options=compiler_options or None)
    t2 = time.perf_counter()
    flops_per_device = _flops(lowered) or _flops(compiled)
    memory = compiled.memory_analysis()
    live = {"state": state, "metrics": None}

    def step(n: int, sync: bool = True) -> list[float]:
        times, start = [], time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            live["state"], live["metrics"] = compiled(live["state"], batch)
            if sync:
                jax.block_until_ready(live)
                times.append(time.perf_counter() - t)
        jax.block_until_ready(live)
        return times if sync else [(time.perf_counter() - start) / max(n, 1)]

    first_step_s = step(1)[0]
    since_start = seconds_since_process_start()
    step(max(warmup - 1, 0))
    peak, source = _device_peak(jax.local_devices()[0])
    if not rss_reset and "device" not in source:
        source = "process peak RSS since start (could not reset)"
    info = {
        "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "devices": mesh.size,
        "compiler_options": {**(parallel.compiler_options(mesh) or {}), **(compiler_options or {})},
        "process_start_to_init_s": before_init,
        "init_s": t0 - t_init,
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,  # with a cache hit: the time to load the stored program
        "executable": "loaded from the compilation cache" if hits else "compiled",
        "first_step_s": first_step_s,
        "process_start_to_first_step_s": since_start,
        "flops_per_step": None if flops_per_device is None else flops_per_device * mesh.size,
        "compiled_temp_bytes": getattr(memory, "temp_size_in_bytes", None),
        "compiled_argument_bytes": getattr(memory, "argument_size_in_bytes", None),
        "peak_memory_bytes": peak,
        "peak_memory_source": source,
        "loss_after_warmup": float(live["metrics"]["loss"]),
    }
    return info, step


def interleave(runners: dict[str, Any], steps: int, rounds: int) -> dict[str, list[float]]:
    """Per-step seconds of each runner, timed in ``rounds`` alternating rounds of ``steps``.

    Alternating spreads a shared machine's changing load evenly over the frameworks compared.
    """
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            times[name] += run(steps)
    return times


def bench_loader(batch_size: int, image_shape: tuple[int, int, int], num_classes: int,
                 steps: int) -> dict[str, Any]:
    """Times ``InMemoryLoader.batch(step)`` + ``parallel.global_batch`` (device-ready)."""
    import jax

    from cnnjax import data, parallel

    mesh = parallel.make_mesh(jax.local_devices())
    arrays = synthetic_batch(max(4 * batch_size, 1024), image_shape, num_classes, seed=1)
    loader = data.InMemoryLoader(arrays["images"], arrays["labels"], batch_size, seed=0)
    jax.block_until_ready(parallel.global_batch(loader.batch(0), mesh))
    times = []
    for step in range(1, max(steps, 20) + 1):  # crosses epochs: includes the reshuffles
        t = time.perf_counter()
        jax.block_until_ready(parallel.global_batch(loader.batch(step), mesh))
        times.append(time.perf_counter() - t)
    result = timing(times)
    result["images_per_s"] = batch_size / result["median_s"]
    return result


def benchmark(model: str = "cnn", *, batch_size: int = 128, image_size: int = 32,
              channels: int = 3, num_classes: int = 10, dtype: str = "auto", steps: int = 20,
              warmup: int = 3, rounds: int = 1, model_kwargs: dict[str, Any] | None = None,
              compiler_options: dict[str, Any] | None = None,
              baseline_options: dict[str, Any] | None = None,
              peak_tflops: float | None = None, torch: bool = False,
              torch_compile: bool = True, torch_threads: tuple[int, ...] = (),
              loader: bool = True, profile_dir: str | None = None, profile_steps: int = 3,
              json_path: str | None = None) -> dict[str, Any]:
    """Measures one model's training step; returns (and optionally writes) a JSON-able dict.

    Every runner is compiled and warmed up first; then ``rounds`` rounds of ``steps`` timed
    steps alternate between them. Keys: ``config``, ``environment``, ``jax`` (seconds,
    ``images_per_s``, ``flops_per_step``, ``achieved_tflops``, ``mfu`` when a peak is known),
    ``loader``; with ``baseline_options``, ``jax_baseline`` (the same step compiled with those
    XLA options instead, and ``speedup`` = its step time over cnnjax's); with ``torch``,
    ``torch`` (one entry per mode, a result or ``"n/a (reason)"``) and ``ratios`` (cnnjax
    images/s over torch's, from median and from best step times); with ``profile_dir``,
    ``profile`` (``profiling.summarize`` of ``profile_steps`` traced steps).
    """
    import jax

    model_kwargs = dict(model_kwargs or {})
    device = jax.local_devices()[0]
    dtype = resolve_dtype(dtype, device.platform)
    image_shape = (image_size, image_size, channels)
    result: dict[str, Any] = {
        "config": {"model": model, "model_kwargs": model_kwargs, "batch_size": batch_size,
                   "image_shape": list(image_shape), "num_classes": num_classes,
                   "dtype": dtype, "steps": steps, "warmup": warmup, "rounds": rounds},
        "environment": {
            "platform": device.platform, "device_kind": device.device_kind,
            "local_devices": jax.local_device_count(), "jax": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpu_count": os.cpu_count(),
            "load_average": _load(), "machine": platform.processor() or platform.machine(),
        },
    }
    args = (model, model_kwargs, batch_size, image_shape, num_classes, dtype, warmup)
    j, jax_step = prepare_jax(*args, compiler_options)
    runners, tinfo = {"jax": jax_step}, {}
    if baseline_options is not None:
        base, runners["jax_baseline"] = prepare_jax(*args, baseline_options)
    if torch:
        from experiments.benchmarks import benchmark_torch

        tinfo, torch_runners = benchmark_torch.prepare(
            *args, expected_params=j["num_params"], compile=torch_compile, threads=torch_threads)
        runners.update(torch_runners)
    times = interleave(runners, steps, rounds)
    j["step"] = timing(times.pop("jax"))
    j["images_per_s"] = batch_size / j["step"]["median_s"]
    j["pipelined_images_per_s"] = batch_size / jax_step(steps, sync=False)[0]
    if peak_tflops is None:
        per_device = default_peak_tflops(device.device_kind, dtype)
        peak_tflops = None if per_device is None else per_device * j["devices"]
    j["peak_tflops"] = peak_tflops
    if j["flops_per_step"]:
        j["achieved_tflops"] = j["flops_per_step"] / j["step"]["median_s"] / 1e12
        j["mfu"] = j["achieved_tflops"] / peak_tflops if peak_tflops else None
    result["jax"] = j
    if profile_dir:
        from experiments.benchmarks import profiling

        result["profile"] = profiling.trace_steps(
            lambda n: jax_step(n, sync=False), profile_steps, profile_dir)
    if baseline_options is not None:
        base["step"] = timing(times.pop("jax_baseline"))
        base["images_per_s"] = batch_size / base["step"]["median_s"]
        base["speedup"] = base["step"]["median_s"] / j["step"]["median_s"]
        result["jax_baseline"] = base
    if loader:
        result["loader"] = bench_loader(batch_size, image_shape, num_classes, steps)
    if torch:
        result["torch"] = tinfo
        result["ratios"] = benchmark_torch.ratios(tinfo, times, j["step"], batch_size)
    result["environment"]["load_average_after"] = _load()
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return result


def _load() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _since_start(j: dict[str, Any]) -> str:
    if j["process_start_to_first_step_s"] is None:
        return "process start unknown"
    return (f"{j['process_start_to_first_step_s']:.1f} s after the process started "
            f"({j['process_start_to_init_s']:.1f} s before init)")


def _step_ready(j: dict[str, Any]) -> str:
    ready = f"{j['lower_s']:.2f} s / {j['compile_s']:.2f} s"
    return ready + (" (from the compilation cache)" if j["executable"] != "compiled" else "")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def table(result: dict[str, Any]) -> str:
    """A readable summary of :func:`benchmark`'s result."""
    c, e, j = result["config"], result["environment"], result["jax"]
    rows = [
        ("model", f"{c['model']} {c['model_kwargs'] or ''} ({j['num_params']:,} params)"),
        ("input", f"batch {c['batch_size']} x {tuple(c['image_shape'])}, {c['dtype']}"),
        ("device", f"{e['local_devices']} x {e['device_kind']} ({e['platform']}, "
                   f"{e['cpu_count']} CPUs), load {e['load_average']} -> "
                   f"{e['load_average_after']}"),
        ("XLA_FLAGS", e["xla_flags"] or "(none)"),
        ("compiler options", json.dumps(j["compiler_options"]) if j["compiler_options"]
         else "(none)"),
        ("timing", f"{c['rounds']} round(s) x {c['steps']} steps after {c['warmup']} warm-up, "
                   "frameworks alternating"),
        ("init / lower / compile", f"{j['init_s']:.2f} s / {_step_ready(j)}; first step "
                                   f"{j['first_step_s']:.2f} s, {_since_start(j)}"),
        ("cnnjax images/s", f"{j['images_per_s']:,.0f} (step {_ms(j['step']['median_s'])} "
                            f"median, {_ms(j['step']['best_s'])} best); "
                            f"{j['pipelined_images_per_s']:,.0f} pipelined"),
    ]
    if "jax_baseline" in result:
        b = result["jax_baseline"]
        rows.append(("baseline images/s", f"{b['images_per_s']:,.0f} with "
                                          f"{json.dumps(b['compiler_options'])}: cnnjax's "
                                          f"options are {b['speedup']:.2f}x faster"))
    if j.get("flops_per_step"):
        mfu = (f", MFU {j['mfu']:.1%} of {j['peak_tflops']:g} TFLOP/s" if j.get("mfu")
               else " (MFU: pass --peak_tflops)")
        rows.append(("FLOPs/step", f"{j['flops_per_step'] / 1e9:.3f} GFLOP, achieved "
                                   f"{j['achieved_tflops'] * 1e3:.1f} GFLOP/s{mfu}"))
    rows.append(("peak memory", f"{j['peak_memory_bytes'] / 2**20:,.0f} MiB "
                                f"({j['peak_memory_source']}); XLA temp "
                                f"{(j['compiled_temp_bytes'] or 0) / 2**20:,.1f} MiB"))
    if "loader" in result:
        ld = result["loader"]
        rows.append(("loader images/s", f"{ld['images_per_s']:,.0f} "
                                        f"({_ms(ld['median_s'])} per batch) vs model "
                                        f"{j['images_per_s']:,.0f}"))
    for mode, r in result.get("torch", {}).items():
        if mode == "info":
            rows.append(("torch", r))
            continue
        text = r if isinstance(r, str) else (
            f"{r['images_per_s']:,.0f} (step {_ms(r['step']['median_s'])} median, "
            f"{_ms(r['step']['best_s'])} best; first step {r['first_step_s']:.1f} s; "
            f"peak {r['peak_memory_bytes'] / 2**20:,.0f} MiB)")
        rows.append((f"torch {mode} images/s", text))
    for name, ratio in result.get("ratios", {}).items():
        rows.append((name, "n/a" if ratio is None else
                     f"{ratio['median']:.2f}x (median steps), {ratio['best']:.2f}x (best)"))
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    if "profile" in result:
        from experiments.benchmarks import profiling

        text += "\n" + profiling.table(result["profile"])
    return text


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model and input flags of the benchmark commands (this one and ``conv_paths``)."""
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--model_kwargs", default="{}", help="JSON object of model fields")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--num_classes", type=int, default=10)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(p)
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--steps", type=int, default=20, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds per framework")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="peak of all local devices together; default: per-device table")
    p.add_argument("--torch", action="store_true", help="also time the PyTorch reference")
    p.add_argument("--no_torch_compile", action="store_true")
    p.add_argument("--torch_threads", default="", help="e.g. 1,2: time torch at each count")
    p.add_argument("--no_loader", action="store_true")
    p.add_argument("--compiler_options", default="{}", help="JSON: XLA options for the step")
    p.add_argument("--ab_xla_cpu_defaults", action="store_true",
                   help="also time the step compiled with XLA:CPU's defaults, interleaved")
    p.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS before JAX starts")
    p.add_argument("--compilation_cache_dir", default="",
                   help="persistent compilation cache (a second run loads the step from it)")
    p.add_argument("--profile_dir", default="",
                   help="trace --profile_steps steps with jax.profiler here and summarise")
    p.add_argument("--profile_steps", type=int, default=3)
    p.add_argument("--json", default=None, help="write the result here")
    a = p.parse_args(argv)
    if a.xla_flags:  # XLA parses the variable once, when the backend starts
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {a.xla_flags}".strip()
    if a.torch and not {"XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE",
                        "XLA_PYTHON_CLIENT_ALLOCATOR"} & set(os.environ):
        # JAX takes 75% of a GPU's memory up front; the PyTorch twin runs in this process too.
        os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = "0.45"
    if a.compilation_cache_dir:
        from cnnjax import parallel

        parallel.enable_compilation_cache(a.compilation_cache_dir)
    result = benchmark(
        a.model, batch_size=a.batch_size, image_size=a.image_size, channels=a.channels,
        num_classes=a.num_classes, dtype=a.dtype, steps=a.steps, warmup=a.warmup,
        rounds=a.rounds, model_kwargs=json.loads(a.model_kwargs),
        compiler_options=json.loads(a.compiler_options),
        baseline_options=XLA_CPU_DEFAULTS if a.ab_xla_cpu_defaults else None,
        peak_tflops=a.peak_tflops,
        torch=a.torch, torch_compile=not a.no_torch_compile,
        torch_threads=tuple(int(t) for t in a.torch_threads.split(",") if t),
        loader=not a.no_loader, profile_dir=a.profile_dir or None,
        profile_steps=a.profile_steps, json_path=a.json,
    )
    print(table(result))
    return result


if __name__ == "__main__":
    main()
