"""How the suite's native abort surfaces: XLA:CPU aborts a process (SIGABRT, no Python
exception) when one device's thread never reaches a collective that the others wait in
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
