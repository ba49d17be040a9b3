"""Trained runs shared by the tests of evaluation, pictures and logging (trained once).

Import a fixture into a test module to use it: ``from tests.runs import tiny_run``. Each
importing module gets its own fixture object, so the runs are memoised here, once per session.
"""

import contextlib
import io
import os

import pytest

from cnnjax import training
from tests.helpers import tiny_config

_RUNS: dict[str, tuple[str, dict, str]] = {}


@pytest.fixture(scope="session")
def tiny_run(data_dir, tmp_path_factory):
    """A 20-step tiny CNN run (plots and best checkpoint on): (workdir, summary, stdout).

    stdout is captured into a StringIO, which is not a terminal, as in a batch job.
    """
    if "cnn" not in _RUNS:
        _RUNS["cnn"] = _train(data_dir, tmp_path_factory)
    return _RUNS["cnn"]


def _train(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("runs") / "cnn")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        summary = training.run(tiny_config(data_dir), workdir)
    assert os.path.isfile(os.path.join(workdir, "summary.json"))
    return workdir, summary, out.getvalue()
