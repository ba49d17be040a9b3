"""Test set-up: 8 virtual CPU devices, so every test can exercise the data-parallel path.

XLA reads the flag once, when JAX is first imported, which is why it is set here.
"""

import os
import shutil
import tempfile
import traceback

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The suite owns its state: HOME and every cache and data directory that a library or
# launch.py would find through it (JAX's compilation cache in ~/.cache/cnnjax, TFDS's
# ~/tensorflow_datasets, matplotlib's and torch's caches) point into one temporary folder,
# removed when the session ends; subprocesses inherit it. Nothing outside it is read or written.
USER_HOME = os.path.expanduser("~")
SUITE_HOME = tempfile.mkdtemp(prefix="cnnjax-tests-home-")
os.environ["HOME"] = SUITE_HOME
for name, sub in (("XDG_CACHE_HOME", ".cache"), ("XDG_CONFIG_HOME", ".config"),
                  ("TFDS_DATA_DIR", "tensorflow_datasets"), ("MPLCONFIGDIR", ".matplotlib"),
                  ("TORCH_HOME", ".cache/torch")):
    os.environ[name] = os.path.join(SUITE_HOME, sub)
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
# Except pip's download cache (tests/test_install.py installs the wheel into a fresh
# virtualenv): the user's, so that packages already downloaded are not downloaded again.
os.environ.setdefault("PIP_CACHE_DIR", os.path.join(USER_HOME, ".cache", "pip"))

import jax  # noqa: E402
import pytest  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402

# A fork of this process after JAX has started copies XLA's thread pools half-way through
# whatever they were doing; the child (and, through shared locks, the parent) can abort with no
# message. The project starts its workers with "spawn" (Grain does) and its subprocesses with
# exec; a test during which anything calls os.fork fails, naming who did.
_FORKS: list[str] = []
os.register_at_fork(before=lambda: _FORKS.append("".join(traceback.format_stack(limit=8))))


@pytest.fixture(autouse=True)
def no_fork():
    yield
    forks, _FORKS[:] = list(_FORKS), []
    assert not forks, f"the process forked after JAX started, from:\n{forks[0]}"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS data_dir shared by the session (digits is prepared into it once)."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


@pytest.fixture
def persistent_cache(tmp_path):
    """JAX's compilation cache, as launch.py enables it, in a fresh directory."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    before = {name: getattr(jax.config, name) for name in names}
    for name, value in zip(names, (str(tmp_path / "jax_cache"), 0.0, -1), strict=True):
        jax.config.update(name, value)
    compilation_cache.reset_cache()
    yield tmp_path / "jax_cache"
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


def pytest_unconfigure(config):
    shutil.rmtree(SUITE_HOME, ignore_errors=True)
