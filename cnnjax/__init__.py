"""cnnjax: convolutional networks in JAX/Flax.

``cnnjax.get_config(name, **fields)``, ``cnnjax.train(config, workdir)`` and
``cnnjax.load(workdir, checkpoint="best")`` (with ``.predict(images)``, ``.evaluate()``,
``.model``, ``.variables``): see ``cnnjax.api``, whose examples run as tests. Importing
``cnnjax`` alone imports none of JAX (the three are resolved when first used), so that the
command line routes signals before anything slow.
"""

import os as _os

__all__ = ["get_config", "load", "train"]

# XLA:CPU runs a collective (the steps' pmean and psum) as a rendezvous of one thread per
# device, and aborts the whole process, with no Python exception, when a device's thread
# arrives more than its "terminate timeout" after the others. With several CPU devices on an
# overloaded machine that is a slow thread, not a deadlock (docs/reliability.md, "A native
# abort in a collective"): wait as long as a step may take. Set here, before JAX creates its
# CPU client, and only where XLA_FLAGS does not say otherwise; a jaxlib that does not know
# the flag would refuse to start, hence the version.
CPU_COLLECTIVE_TIMEOUT_S = 3600
_FLAG = "xla_cpu_collective_call_terminate_timeout_seconds"


def _patient_cpu_collectives() -> None:
    flags = _os.environ.get("XLA_FLAGS", "")
    if _FLAG in flags:
        return
    try:
        from jaxlib.version import __version__  # 3 ms; jaxlib itself starts nothing
        major, minor = (int(p) for p in __version__.split(".")[:2])
    except (ImportError, ValueError):
        return
    if (major, minor) >= (0, 10):
        _os.environ["XLA_FLAGS"] = f"{flags} --{_FLAG}={CPU_COLLECTIVE_TIMEOUT_S}".strip()


_patient_cpu_collectives()


def __getattr__(name: str):
    if name in __all__:
        from cnnjax import api

        return getattr(api, name)
    raise AttributeError(f"module 'cnnjax' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
