"""experiments.benchmarks.profiling.summarize on a hand-made trace in jax.profiler's Perfetto
format."""

from __future__ import annotations

import gzip
import json

import pytest

from experiments.benchmarks import profiling


def _write(tmp_path, events):
    run = tmp_path / "plugins" / "profile" / "run1"
    run.mkdir(parents=True)
    with gzip.open(run / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"displayTimeUnit": "ns", "traceEvents": events}, f)


def _meta(pid, name, tid=None, thread=None):
    if thread is None:
        return {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}
    return {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": thread}}


def _x(pid, tid, name, ts, dur):
    return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur}


def test_counts_each_kernel_once_and_sorts_by_kind(tmp_path):
    events = [
        _meta(1, "/device:GPU:0"), _meta(1, None, 7, "Stream #7(Compute)"),
        _meta(1, None, 9, "XLA Ops"), _meta(2, "/host:CPU"),
        _x(2, 1, "PjitFunction(step)", 0, 1000),  # host: sets the traced wall time
        # two steps, each: a convolution (300 us), a reduction (200), a fusion (100)
        *[e for s in (0, 500) for e in (
            _x(1, 7, "sm90_xmma_fprop_implicit_gemm_bf16", s, 300),
            _x(1, 7, "input_reduce_fusion_3", s + 300, 100),
            _x(1, 7, "input_reduce_fusion_3", s + 400, 100),
            _x(1, 7, "loop_add_fusion", s + 350, 100),  # overlaps: busy counts it once
            _x(1, 9, "%fusion.1 = ...", s, 500),  # the op line repeats the time: ignored
        )],
    ]
    _write(tmp_path, events)
    summary = profiling.summarize(str(tmp_path), steps=2)
    assert summary["kinds"] == pytest.approx(
        {"convolution": 0.3, "reduction": 0.2, "element-wise fusion": 0.1})
    assert list(summary["kinds"]) == ["convolution", "reduction", "element-wise fusion"]
    assert summary["busy_ms"] == pytest.approx(1.0)
    assert summary["wall_ms"] == pytest.approx(1.0)
    assert summary["per_step_ms"] == pytest.approx(0.5)
    assert summary["kernels_per_step"] == 4
    assert summary["top"][0] == ("sm90_xmma_fprop_implicit_gemm_bf16", pytest.approx(0.3), 1)
    assert "convolution" in profiling.table(summary)


def test_no_device_events_is_reported_not_raised(tmp_path):
    _write(tmp_path, [_meta(2, "/host:CPU"), _x(2, 1, "PjitFunction(step)", 0, 10)])
    summary = profiling.summarize(str(tmp_path), steps=1)
    assert "no device kernel events" in summary["error"]
    assert profiling.table(summary).startswith("profile: the trace holds no device kernel")
    assert "no perfetto_trace" in profiling.summarize(str(tmp_path / "empty"), 1)["error"]


@pytest.mark.parametrize("name, kind", [
    ("nvjet_sm90_tst_128x128_64x6_1x2_h_bz_splitK_NTT", "matmul"),
    ("void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816fprop", "convolution"),
    ("input_scatter_fusion", "select-and-scatter"),
    ("ncclDevKernel_AllReduce_Sum_f32", "collective"),
    ("input_transpose_fusion_38", "copy/transpose"),
])
def test_kernel_kinds(name, kind):
    assert profiling.kind_of(name) == kind
