"""Small configs and checks shared by the tests."""

import hashlib
import os
from typing import NamedTuple

from cnnjax.config import defaults, model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir: str, **train):
    """A few-second digits run: a tiny CNN with BatchNorm, crop augmentation and SGD."""
    c = defaults()
    c.model = model_config("cnn", features=(8, 16), dense=(32,), batch_norm=True)
    c.data.data_dir = data_dir
    c.data.batch_size = 32
    c.data.eval_batch_size = 64
    c.data.crop_padding = 1
    c.optimizer.learning_rate = 0.05
    c.optimizer.weight_decay = 1e-4
    c.train.num_steps = 20
    c.train.log_every_steps = 5
    c.train.eval_every_steps = 10
    c.train.checkpoint_every_steps = 10
    for k, v in train.items():
        setattr(c.train, k, v)
    return c


def snapshot(directory):
    """Every file under ``directory`` with its content hash and modification time."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, directory)] = (
                    hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return found


class Command(NamedTuple):
    """What a finished command left, as ``subprocess.run`` reports it."""

    returncode: int
    stdout: str
    stderr: str


_CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                  "jax_persistent_cache_min_entry_size_bytes")


def command(capsys, *args, env=None, cwd=ROOT):
    """The command line (``cnnjax.cli``: parse the flags, then ``main``) run in this process,
    in ``cwd``: its exit status and what it printed. Where a bad input is found before any
    work, a process of its own adds nothing; what the process adds (signals, the import
    order, the exit status as the shell sees it) is tested through ``launch.py`` itself.
    Whatever the command sets for the rest of its process (flags, the log level, environment
    variables, the compilation cache, the working directory) is put back afterwards."""
    import jax
    from absl import flags, logging
    from jax.experimental.compilation_cache import compilation_cache

    from cnnjax import cli

    cache = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
    verbosity, environ, here = logging.get_verbosity(), dict(os.environ), os.getcwd()
    os.environ.update(env or {})
    os.chdir(cwd)
    capsys.readouterr()  # what the test printed before
    try:
        status = cli.main(cli._parse_flags(["cnnjax", *args]))
    except SystemExit as e:
        status = 0 if e.code is None else e.code
    finally:
        flags.FLAGS.unparse_flags()
        logging.set_verbosity(verbosity)
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(here)
        for name, value in cache.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()
    out, err = capsys.readouterr()
    return Command(status, out, err)


def assert_refused(capsys, workdir, args, message, **fill):
    """``args`` (``{run}`` is ``workdir``; other ``{names}`` from ``fill``) fail before any
    work: exit 2, one ``error:`` line holding ``message``, ``workdir`` unchanged."""
    before = snapshot(workdir)
    result = command(capsys, *(a.format(run=workdir, **fill) for a in args))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert message in result.stderr, result.stderr
    assert snapshot(workdir) == before
