"""Devices and processes: the mesh, shardings, and host <-> global arrays.

The training step is written per device, in the pmap style: it sees its shard of the batch
and averages with explicit collectives over the mesh axis ``AXIS``. ``per_device`` runs such
a function through ``jax.shard_map`` over a 1-D mesh of every device of every process.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "batch"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``AXIS`` over ``devices`` (default: all devices of all processes)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the devices."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def pace(tree: Any, mesh: Mesh) -> Any:
    """``tree`` once computed, where ``mesh`` is several CPU devices of this process; else
    ``tree`` at once (asynchronous dispatch).

    XLA:CPU (jaxlib 0.10.2) deadlocks when more than 32 multi-device programs are in flight
    on a machine with few cores (it launches them on max(cores, devices) threads): the
    launch of program k+33 waits on one of those threads for the slot program k+1 frees, and
    program k+1's all-reduce waits for that thread; a minute later XLA aborts the process
    (docs/reliability.md, "A native abort in a collective"). Waiting for each step keeps a
    few programs in flight; on CPU the host and the devices share the same cores, so little
    overlap is lost.
    """
    devices = mesh.devices.flat
    if len(mesh.devices.flat) > 1 and devices[0].platform == "cpu":
        jax.block_until_ready(tree)
    return tree


def per_device(fn: Callable, mesh: Mesh, in_specs: Any, out_specs: Any) -> Callable:
    """Runs ``fn`` once per device: ``PartitionSpec(AXIS)`` arguments arrive as local shards."""
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


# XLA:CPU (jaxlib 0.10) hands convolutions, dots and reductions to YNNPACK by default. On x86
# its convolutions, weight gradients above all, ran slower than XLA's own (Eigen) ones, while
# its dots and reductions (BatchNorm statistics) are faster than XLA's: keep those two
# (`python -m experiments.benchmarks.benchmark --ab_xla_cpu_defaults`; figures in
# docs/performance.md#cpu-the-digits-cnn-and-cifar-resnet-20).
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}


def compiler_options(mesh: Mesh) -> dict[str, Any] | None:
    """XLA options for the steps jitted over ``mesh``; None keeps XLA's defaults.

    ``CPU_COMPILER_OPTIONS`` on CPU, unless ``XLA_FLAGS`` sets one of them (the user's choice
    wins) or this jaxlib does not know them.
    """
    device = mesh.devices.flat[0]
    if device.platform != "cpu":
        return None
    flags = os.environ.get("XLA_FLAGS", "")
    if any(key in flags for key in CPU_COMPILER_OPTIONS) or not _compiles_with(
        device, tuple(CPU_COMPILER_OPTIONS.items())
    ):
        return None
    return dict(CPU_COMPILER_OPTIONS)


@functools.cache
def _compiles_with(device: jax.Device, options: tuple[tuple[str, Any], ...]) -> bool:
    try:
        x = jax.device_put(np.float32(0), device)
        jax.jit(lambda v: v + 1).lower(x).compile(compiler_options=dict(options))
        return True
    except Exception:  # noqa: BLE001 -- an experimental option this jaxlib has dropped
        return False


def enable_compilation_cache(directory: str) -> None:
    """Stores compiled programs in ``directory`` and loads them instead of compiling again."""
    if not directory:
        return
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    # JAX caches only programs that took over a second to compile by default; the training
    # steps of small models compile faster than that on CPU, and loading beats compiling.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def host_cpu() -> jax.Device | None:
    """This process's first CPU device, or None where JAX runs without its CPU backend."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:  # e.g. JAX_PLATFORMS=cuda
        return None


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's slice of a batch into global arrays sharded over ``AXIS``."""
    sharding = sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def to_host(tree: Any) -> Any:
    """Replicated global arrays -> numpy on this host."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Starts JAX's multi-process runtime when the run spans several processes.

    Explicit arguments win; otherwise SLURM (more than one task) and Cloud TPU pods are
    detected by ``jax.distributed.initialize()`` itself. On CPU, collectives go over gloo.
    Returns whether the distributed runtime was started.
    """
    explicit = coordinator_address is not None
    given = [x is not None for x in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError(
            "multi-host runs need all of --coordinator_address, --num_processes and "
            "--process_id (or none, to auto-detect SLURM / Cloud TPU)"
        )
    if explicit and not re.fullmatch(r"\[?[^\s\[\]]+\]?:\d{1,5}", coordinator_address):
        raise ValueError(
            f"--coordinator_address={coordinator_address!r} must be host:port of process 0, "
            "e.g. localhost:12355")
    if explicit and num_processes < 1:
        raise ValueError(f"--num_processes={num_processes} must be >= 1")
    if explicit and not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process_id={process_id} is out of range for --num_processes={num_processes}; "
            f"use 0..{num_processes - 1}"
        )
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
    tpu = "TPU_WORKER_HOSTNAMES" in os.environ or "CLOUD_TPU_TASK_ID" in os.environ
    if not (explicit or slurm or tpu):
        return False
    # Only the CPU client uses this setting: CPU collectives across processes go over gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    else:
        jax.distributed.initialize()
    return True
