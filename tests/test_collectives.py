"""The suite's native abort: XLA:CPU aborts a process (SIGABRT, no Python exception) when one
device's thread never reaches a collective that the others wait in, and it deadlocks that way
when more than 32 multi-device programs are in flight; `parallel.pace` keeps one in flight
(docs/reliability.md, "A native abort in a collective")."""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.e2e

# Device 0 of two reaches the all-reduce DELAY seconds after device 1, as a thread starved
# on an overloaded machine does.
LATE_DEVICE = textwrap.dedent("""
    import os, sys, time
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P

    def late(i):
        if int(i) == 0:
            time.sleep(float(sys.argv[1]))
        return np.float32(0)

    def step(x):
        i = jax.lax.axis_index("batch")
        x = x + jax.pure_callback(late, jax.ShapeDtypeStruct((), jnp.float32), i)
        return jax.lax.psum(x, "batch")

    mesh = Mesh(np.array(jax.devices()), ("batch",))
    fn = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=P("batch"), out_specs=P()))
    print("sum", float(fn(jnp.arange(2.0))[0]), flush=True)
""")


def _run(flags: str, delay: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {flags}",
           "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-c", LATE_DEVICE, str(delay)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_late_device_past_xla_s_timeout_aborts_the_process():
    # The fault itself: no exception, SIGABRT; Python prints "Fatal Python error: Aborted"
    # only where faulthandler is on (pytest turns it on), and XLA's own line goes to stderr.
    done = _run("--xla_cpu_collective_call_warn_stuck_timeout_seconds=1 "
                "--xla_cpu_collective_call_terminate_timeout_seconds=2", 5)
    assert done.returncode == -6, done.stderr[-2000:]
    assert "Termination timeout" in done.stderr
    assert "sum" not in done.stdout


# A step with an all-reduce over 8 CPU devices, dispatched as far ahead of the devices as a
# window allows: argv[1] steps in flight before the host waits for the oldest, "pace" for
# cnnjax's fence (parallel.pace after each step, as the training loop and the evaluation do),
# "never" for no wait at all. XLA:CPU launches programs on max(cores, devices) threads;
# PJRT_NPROC sets its count of cores, 2 as on the machines the suite runs on: 8 threads.
AHEAD = textwrap.dedent("""
    import collections, os, sys
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from cnnjax import parallel

    mesh = Mesh(np.array(jax.devices()), ("batch",))

    def body(x, w):
        return x + jax.lax.pmean(jnp.tanh(x @ w), "batch") * 1e-3

    step = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("batch"), P()),
                                 out_specs=P("batch")))
    x = jax.device_put(jnp.ones((8 * 64, 64)), NamedSharding(mesh, P("batch")))
    w = jax.device_put(jnp.eye(64) / 2, NamedSharding(mesh, P()))
    how, in_flight = sys.argv[1], collections.deque()
    for _ in range(int(sys.argv[2])):
        x = step(x, w)
        if how == "pace":
            parallel.pace(x, mesh)
        elif how != "never":
            in_flight.append(x)
            if len(in_flight) >= int(how):
                jax.block_until_ready(in_flight.popleft())
    print("steps done", float(x[0, 0]), flush=True)
""")


def _ahead(how: str, cores: int = 2, steps: int = 5000) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PJRT_NPROC": str(cores),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8 "
                        "--xla_cpu_collective_call_warn_stuck_timeout_seconds=2 "
                        "--xla_cpu_collective_call_terminate_timeout_seconds=4"}
    return subprocess.run([sys.executable, "-c", AHEAD, how, str(steps)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("how", ["never", "33"])
def test_more_than_32_programs_in_flight_deadlock_xla_cpu(how):
    # The cause: past XLA:CPU's limit of 32 computations in flight per device, a launch waits
    # for a slot on one of the 8 launch threads, and the all-reduce waits for that thread.
    # Should this fail, the jaxlib in use no longer deadlocks, and parallel.pace may go.
    done = _ahead(how)
    assert done.returncode == -6, (done.returncode, done.stdout, done.stderr[-2000:])
    assert "Termination timeout" in done.stderr
    assert "steps done" not in done.stdout


@pytest.mark.parametrize("how, cores", [("pace", 2), ("32", 2), ("never", 16)])
def test_the_fence_keeps_the_same_loop_clean(how, cores):
    # cnnjax's fence (one step in flight); the limit itself (32 in flight); and the cause shown
    # the other way: 16 launch threads leave the all-reduce 8 beside a blocked launch per device.
    done = _ahead(how, cores)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "steps done" in done.stdout and "Termination" not in done.stderr
