"""Test set-up: 8 virtual CPU devices, so every test can exercise the data-parallel path.

XLA reads the flag once, when JAX is first imported, which is why it is set here.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS data_dir shared by the session (digits is prepared into it once)."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))
