"""Every experiment file loads and validates (a typo in one fails here, not on a cluster)."""

import glob
import importlib.util
import os

import pytest

from cnnjax.config import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(
    f for f in glob.glob(os.path.join(ROOT, "experiments", "*.py"))
    if not os.path.basename(f).startswith("_") and "def get_config" in open(f).read()
)

def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(f) for f in FILES])
def test_experiment_config_validates(path):
    module = load(path)
    validate(module.get_config(), device_count=8)
    assert module.__doc__ and "python" in module.__doc__, "document the command to run it"
