"""Compiled programs stored across launches (cnnjax.aot): loaded without tracing, identical."""

import importlib
import os
import sys

import jax
import numpy as np
import pytest

from cnnjax import aot, checkpoint, parallel, steps, train
from tests.helpers import tiny_config


def _program(traces):
    def f(x, y):
        traces.append(x.shape)  # runs only while tracing
        return x * 2.0 + y.sum(), (x * y).mean()

    return jax.jit(f, donate_argnums=0)


def _args(mesh, n=16):
    x = jax.device_put(np.arange(n, dtype=np.float32), parallel.sharded(mesh))
    y = jax.device_put(np.linspace(0, 1, n, dtype=np.float32), parallel.sharded(mesh))
    return x, y


def test_a_stored_program_is_loaded_untraced_and_runs_identically(persistent_cache):
    mesh = parallel.make_mesh()  # 8 CPU devices
    traces = []
    first = aot.Persistent(_program(traces), {"run": 1}, mesh.devices.flat)
    out1 = first(*_args(mesh))
    assert first.record["how"] == "compiled" and len(traces) == 1
    assert os.listdir(persistent_cache / aot.SUBDIR) == [os.path.basename(first.record["path"])]

    # A relaunch: a new jit object, the same description -> loaded, not traced.
    again = aot.Persistent(_program(traces), {"run": 1}, mesh.devices.flat)
    x, y = _args(mesh)
    out2 = again(x, y)
    assert again.record["how"] == "loaded" and len(traces) == 1
    assert x.is_deleted()  # the donation is part of the stored program
    for a, b in zip(jax.tree.leaves(out1), jax.tree.leaves(out2), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding == b.sharding
    # Other arguments (shapes) are another program: compiled, stored apart.
    out3 = again(*_args(mesh, 32))
    assert again.record["how"] == "compiled" and traces[-1] == (32,) and len(out3[0]) == 32
    # Another description is another program.
    other = aot.Persistent(_program(traces), {"run": 2}, mesh.devices.flat)
    other(*_args(mesh))
    assert other.record["how"] == "compiled" and len(traces) == 3
    assert len(os.listdir(persistent_cache / aot.SUBDIR)) == 3


def test_the_key_follows_devices_options_environment_and_argument_layout(persistent_cache,
                                                                         monkeypatch):
    mesh8, mesh1 = parallel.make_mesh(), parallel.make_mesh(jax.devices()[:1])
    p = aot.Persistent(_program([]), {"run": 1}, mesh8.devices.flat)
    x, y = _args(mesh8)
    keys = {p.key((x, y))}
    keys.add(p.key(_args(mesh1)))  # same shapes, other sharding
    keys.add(p.key((x, y.astype(np.float16))))
    keys.add(aot.Persistent(_program([]), {"run": 1}, mesh1.devices.flat).key((x, y)))
    keys.add(aot.Persistent(_program([]), {"run": 1}, mesh8.devices.flat,
                            compiler_options={"xla_cpu_enable_fast_math": True}).key((x, y)))
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_cpu_ftz=true")
    keys.add(aot.Persistent(_program([]), {"run": 1}, mesh8.devices.flat).key((x, y)))
    assert len(keys) == 6
    assert aot.Persistent(_program([]), {"run": 1}, mesh8.devices.flat).key((x, y)) in keys


def test_the_source_of_cnnjax_and_of_modules_outside_the_installation_is_in_the_key(tmp_path,
                                                                                     monkeypatch):
    assert os.path.realpath(aot.__file__) in aot.source_files()
    assert os.path.realpath(steps.__file__) in aot.source_files()
    assert os.path.realpath(np.__file__) not in aot.source_files()  # installed: its version
    module = tmp_path / "my_model_for_aot.py"
    module.write_text("WIDTH = 8\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("my_model_for_aot")
    try:
        assert str(module.resolve()) in aot.source_files()
        before = aot.source_fingerprint()
        module.write_text("WIDTH = 16\n")
        # This process still runs the code it imported: its programs keep their key ...
        assert aot.source_fingerprint() == before
        # ... and a new process, which imports the edited file, has another.
        aot._file_digest.cache_clear()
        assert aot.source_fingerprint() != before
    finally:
        sys.modules.pop("my_model_for_aot", None)


def test_an_unreadable_entry_is_compiled_again_and_replaced(persistent_cache):
    mesh = parallel.make_mesh()
    first = aot.Persistent(_program([]), {"run": 1}, mesh.devices.flat)
    expected = first(*_args(mesh))
    path = first.record["path"]
    with open(path, "wb") as f:
        f.write(b"not a program")
    traces = []
    again = aot.Persistent(_program(traces), {"run": 1}, mesh.devices.flat)
    with pytest.warns(UserWarning, match="could not load the compiled program .* compiling it"):
        out = again(*_args(mesh))
    assert again.record["how"] == "compiled" and len(traces) == 1
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(expected[0]))
    third = aot.Persistent(_program(traces), {"run": 1}, mesh.devices.flat)
    third(*_args(mesh))
    assert third.record["how"] == "loaded" and len(traces) == 1


def test_without_the_compilation_cache_it_is_plain_jit(tmp_path):
    assert jax.config.jax_compilation_cache_dir in (None, "")
    assert aot.directory() is None
    mesh = parallel.make_mesh()
    traces = []
    jitted = _program(traces)
    p = aot.Persistent(jitted, {"run": 1}, mesh.devices.flat)
    p(*_args(mesh))
    p(*_args(mesh))
    assert p.record == {} and len(traces) == 1 and jitted._cache_size() == 1


def _final_params(workdir):
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=3)
    state, _ = ckpt.read(ckpt.latest_step())
    ckpt.close()
    return jax.tree.map(np.asarray, state)


def test_a_relaunched_run_loads_its_programs_untraced_and_trains_bit_identically(
        tmp_path, data_dir, persistent_cache, monkeypatch):
    traced = []
    for name in ("train_step_per_device", "eval_step_per_device"):
        original = getattr(steps, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            traced.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(steps, name, counting)
    config = tiny_config(data_dir, num_steps=10, plots=False)
    train.run(config, str(tmp_path / "first"))
    assert sorted(set(traced)) == ["eval_step_per_device", "train_step_per_device"]
    stored = sorted(os.listdir(persistent_cache / aot.SUBDIR))
    assert len(stored) == 3  # init, train step, eval step
    traced.clear()
    train.run(config, str(tmp_path / "second"))  # a fresh run with the same config
    assert traced == []
    assert sorted(os.listdir(persistent_cache / aot.SUBDIR)) == stored
    first, second = _final_params(tmp_path / "first"), _final_params(tmp_path / "second")
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(a, b)
    # Another seed is the same programs (the seed is an argument) and another run.
    config.seed = 1
    train.run(config, str(tmp_path / "seed1"))
    assert traced == [] and len(os.listdir(persistent_cache / aot.SUBDIR)) == 3
    other_seed = _final_params(tmp_path / "seed1")
    assert not all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(first["params"]), jax.tree.leaves(other_seed["params"]), strict=True))
    # A changed field is another program.
    config.optimizer.learning_rate = 0.02
    train.run(config, str(tmp_path / "third"))
    assert "train_step_per_device" in traced
    assert len(os.listdir(persistent_cache / aot.SUBDIR)) == 6


def test_the_initialisation_is_stored_for_the_host_and_the_device_paths(persistent_cache,
                                                                        monkeypatch):
    import optax

    from cnnjax import models

    how = []
    prepare = aot.Persistent.prepare

    def spy(self, *args):
        compiled = prepare(self, *args)
        how.append(self.record["how"])
        return compiled

    monkeypatch.setattr(aot.Persistent, "prepare", spy)
    mesh = parallel.make_mesh()
    model = models.get_model("cnn", num_classes=10, features=(4,), dense=(8,), batch_norm=True,
                             axis_name=parallel.AXIS)
    tx = optax.sgd(0.1, momentum=0.9)
    states = [steps.init_state(model, tx, 3, (8, 8, 1), mesh, on_host=on_host,
                               description={"test": 1})
              for on_host in (True, True, False, False)]
    assert how == ["compiled", "loaded", "compiled", "loaded"]
    for state in states[1:]:
        for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(state), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            assert b.sharding.is_fully_replicated and len(b.sharding.device_set) == 8
