"""Where a step's device time goes: a ``jax.profiler`` trace, summarised without TensorBoard.

    summary = profiling.trace_steps(run_steps, 3, "/tmp/prof")   # run_steps(n) runs n steps
    print(profiling.table(summary))

The trace is written as usual (open it in Perfetto or TensorBoard's profile plugin) and also
read back here from its ``perfetto_trace.json.gz``: the device's kernel events are grouped by
name and by kind (convolutions, matrix products, reductions, element-wise fusions, copies and
transposes, collectives), and their sum is set against the traced wall time, which tells a
device-bound step (busy near 100%) from one that waits on the host.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
from collections import defaultdict
from typing import Any

# (kind, pattern over the lower-cased kernel or op name); the first match wins.
KINDS = (
    ("collective", r"nccl|all-reduce|all_reduce|allreduce|all-gather|reduce-scatter|collective"),
    ("convolution", r"conv|xmma|implicit_gemm|fprop|dgrad|wgrad|cudnn|winograd|fft"),
    ("matmul", r"gemm|cublas|nvjet|dot|matmul|triton_gemm"),
    ("copy/transpose", r"copy|memcpy|memset|transpose|bitcast"),
    ("reduction", r"reduce|reduction"),
    ("select-and-scatter", r"select.and.scatter|scatter"),
    ("element-wise fusion", r"fusion|loop|elementwise|kernel"),
)


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, lowered):
            return kind
    return "other"


def _processes(events: list[dict[str, Any]]) -> tuple[dict[int, str], dict[tuple, str]]:
    procs, threads = {}, {}
    for e in events:
        if e.get("ph") != "M":
            continue
        if e.get("name") == "process_name":
            procs[e["pid"]] = e.get("args", {}).get("name", "")
        elif e.get("name") == "thread_name":
            threads[(e["pid"], e.get("tid"))] = e.get("args", {}).get("name", "")
    return procs, threads


def _busy(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def summarize(log_dir: str, steps: int, top: int = 15) -> dict[str, Any]:
    """Summary of the newest Perfetto trace under ``log_dir`` (written by ``jax.profiler``).

    Device events are those of processes named ``/device:...``; on GPU only the CUDA stream
    threads are counted (the "XLA Ops"/"XLA Modules" lines repeat the same time), so a kernel
    is counted once. Returns ``{"trace", "device", "steps", "wall_ms", "busy_ms",
    "busy_fraction", "per_step_ms", "kinds": {kind: ms per step}, "top": [(name, ms per step,
    calls per step)]}``, or ``{"trace", "error"}`` when no device events were found (XLA:CPU
    records none).
    """
    paths = sorted(glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"),
                             recursive=True), key=os.path.getmtime)
    if not paths:
        return {"trace": None, "error": f"no perfetto_trace.json.gz under {log_dir}"}
    with gzip.open(paths[-1], "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    procs, threads = _processes(events)
    device_pids = {pid for pid, name in procs.items() if name.startswith("/device:")}
    kernels = [e for e in events if e.get("ph") == "X" and e.get("pid") in device_pids]
    streams = [e for e in kernels if "stream" in threads.get((e["pid"], e.get("tid")), "").lower()]
    kernels = streams or [e for e in kernels if not re.search(
        r"xla (ops|modules)|steps|framework|source", threads.get((e["pid"], e.get("tid")), ""),
        re.IGNORECASE)]
    if not kernels:
        return {"trace": paths[-1], "error": "the trace holds no device kernel events"}
    host = [e for e in events if e.get("ph") == "X" and e.get("pid") not in device_pids]
    start = min(e["ts"] for e in kernels + host)
    end = max(e["ts"] + e.get("dur", 0) for e in kernels + host)
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    by_kind: dict[str, float] = defaultdict(float)
    for e in kernels:
        dur = e.get("dur", 0) / 1e3
        by_name[e["name"]][0] += dur
        by_name[e["name"]][1] += 1
        by_kind[kind_of(e["name"])] += dur
    busy = _busy([(e["ts"], e["ts"] + e.get("dur", 0)) for e in kernels]) / 1e3
    wall = (end - start) / 1e3
    per = max(steps, 1)
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "trace": paths[-1],
        "device": sorted(procs[p] for p in device_pids),
        "steps": steps,
        "wall_ms": wall,
        "busy_ms": busy,
        "busy_fraction": busy / wall if wall else None,
        "per_step_ms": busy / per,
        "kernels_per_step": len(kernels) / per,
        "kinds": {k: v / per for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top": [(name, ms / per, calls / per) for name, (ms, calls) in ranked],
    }


def trace_steps(run_steps, steps: int, log_dir: str, top: int = 15) -> dict[str, Any]:
    """Runs ``run_steps(steps)`` under ``jax.profiler.trace`` and summarises the trace."""
    import jax

    os.makedirs(log_dir, exist_ok=True)
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        run_steps(steps)
    return summarize(log_dir, steps, top)


def table(summary: dict[str, Any]) -> str:
    """A readable summary: busy time, time by kind, the costliest kernels."""
    if "error" in summary:
        return f"profile: {summary['error']} ({summary['trace']})"
    lines = [f"profile: {summary['steps']} steps on {', '.join(summary['device'])}: device busy "
             f"{summary['busy_ms']:.1f} of {summary['wall_ms']:.1f} ms traced "
             f"({summary['busy_fraction']:.0%}); {summary['per_step_ms']:.2f} ms of kernels "
             f"per step in {summary['kernels_per_step']:.0f} kernels",
             "  by kind (ms per step):"]
    total = sum(summary["kinds"].values()) or 1.0
    for kind, ms in summary["kinds"].items():
        lines.append(f"    {kind:<22}{ms:9.2f}  {ms / total:6.1%}")
    lines.append("  costliest kernels (ms per step, calls per step):")
    for name, ms, calls in summary["top"]:
        lines.append(f"    {ms:8.2f} {calls:5.0f}  {name[:100]}")
    lines.append(f"  trace: {summary['trace']}")
    return "\n".join(lines)
