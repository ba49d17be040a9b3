"""Compiled programs that persist across launches, so that a relaunch skips tracing as well.

JAX's compilation cache (:func:`cnnjax.parallel.enable_compilation_cache`) saves compiling, but
every launch still traces and lowers a program to find its entry: 1.4 s of tracing for
ResNet-50's train step on a CPU. :class:`Persistent` stores the compiled executable itself,
under a key made of everything that decides the program, none of which needs a trace:

* the caller's description of it (the run's config, the dataset's shapes and statistics);
* the source of cnnjax and of every module loaded from outside the Python installation (an
  experiment file, a model of your own), each file as this process first read it;
* the versions of Python, jax, jaxlib, flax, optax and numpy, JAX's options, ``XLA_*`` and
  ``JAX_*`` environment variables;
* the devices and their software, the arguments' shapes, dtypes and shardings, and the
  compiler options.

A launch whose key matches an entry loads it: no tracing, no compiling. Any other key compiles
as usual (through JAX's own cache) and stores its entry. An entry that cannot be loaded is
compiled again and replaced, with a warning. Entries live in ``<compilation cache
dir>/cnnjax_executables``, only while that cache is enabled, and only for single-process runs
(multi-process runs keep to JAX's own cache). Loading an entry unpickles it: keep the cache
directory your own, as with any cache; delete it to start afresh.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import pickle
import re
import sys
import sysconfig
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.experimental import serialize_executable

SUBDIR = "cnnjax_executables"
FORMAT = 1
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "numpy")
# JAX options that do not change a compiled program (where the caches live, logging, ...).
_IRRELEVANT_OPTIONS = re.compile(r"cache|log|explain|pprint|traceback|debug_log|profil")


def directory() -> str | None:
    """Where entries are stored: None (persistence off) without JAX's compilation cache."""
    base = jax.config.jax_compilation_cache_dir
    if not base or jax.process_count() > 1:
        return None
    return os.path.join(os.path.expanduser(base), SUBDIR)


def _installation_dirs() -> tuple[str, ...]:
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        paths.add(sysconfig.get_paths().get(name, ""))
    return tuple(os.path.realpath(p) + os.sep for p in paths if p)


def source_files() -> list[str]:
    """cnnjax's own source files, and those of modules loaded from outside the installation."""
    package = os.path.dirname(os.path.realpath(__file__))
    files = set()
    for root, _, names in os.walk(package):
        files.update(os.path.join(root, n) for n in names if n.endswith(".py"))
    installed = _installation_dirs()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path.endswith(".py"):
            path = os.path.realpath(path)
            if not path.startswith(installed) and os.path.isfile(path):
                files.add(path)
    return sorted(files)


@functools.cache
def _file_digest(path: str) -> bytes:
    """A file's digest as this process first read it: the code it runs was imported by then,
    and an edit made while it runs (a long sweep) must not relabel its programs."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).digest()


def source_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in source_files():
        digest.update(path.encode() + b"\0" + _file_digest(path))
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    found = {"python": sys.version}
    for name in _VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "-"
    return found


def environment() -> dict[str, Any]:
    """What, besides the code and the arguments, can change a compiled program."""
    return {
        "versions": _versions(),
        "jax_options": {k: repr(v) for k, v in sorted(jax.config.values.items())
                        if not _IRRELEVANT_OPTIONS.search(k)},
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith(("XLA_", "JAX_", "LIBTPU_")) and "CACHE" not in k},
    }


def _sharding(x: Any) -> str:
    sharding = getattr(x, "sharding", None)
    if sharding is None:
        return "-"
    mesh = getattr(sharding, "mesh", None)
    ids = ([d.id for d in mesh.devices.flat] if mesh is not None
           else sorted(d.id for d in sharding.device_set))
    return f"{sharding!r}@{ids}"


def signature(args: Sequence[Any]) -> list[str]:
    """The arguments as a program sees them: tree, shapes, dtypes, weak types, shardings."""
    leaves, treedef = jax.tree.flatten(args)
    return [str(treedef)] + [f"{jax.typeof(x)!r}|{_sharding(x)}" for x in leaves]


def _devices_info(devices: Sequence[jax.Device]) -> list[str]:
    return [f"{d.platform}:{d.id}:{d.device_kind}:{d.client.platform_version}" for d in devices]


class Persistent:
    """``jitted`` compiled once per distinct argument signature, stored, and loaded on relaunch.

    Args:
      jitted: a ``jax.jit``-wrapped function.
      description: JSON-able; with the source and environment read here, it must determine
        everything ``jitted`` closes over (for a training step: the config and the dataset).
      devices: the devices the program runs on (those of its mesh, or the host CPU).
      compiler_options: passed to ``Lowered.compile``.
      meta: ``meta(lowered, compiled) -> dict`` computed when compiling and stored with the
        entry (e.g. FLOPs from the lowered program); ``record["meta"]`` after the first call.
      persist: False, or no :func:`directory`, makes this plain ``jitted``.

    Calls run the compiled executable (with persistence off, ``jitted`` itself), which, unlike
    ``jitted``, does not move its arguments: pass them placed as it expects. ``record``
    tells how it was obtained ("loaded", "compiled" or "compiled, not stored") and how long
    each phase took.
    """

    def __init__(self, jitted: Callable, description: Any, devices: Sequence[jax.Device], *,
                 compiler_options: dict[str, Any] | None = None,
                 meta: Callable[[Any, Any], dict[str, Any]] | None = None,
                 persist: bool = True):
        self.jitted = jitted
        self.devices = list(devices)
        self.compiler_options = compiler_options
        self.meta = meta
        self.cache_dir = directory() if persist else None
        # Read now, before any tracing: a relaunch that loads must see the same modules.
        self._base = None
        if self.cache_dir:
            self._base = json.dumps({
                "format": FORMAT, "description": description, "source": source_fingerprint(),
                "environment": environment(), "devices": _devices_info(self.devices),
                "compiler_options": compiler_options,
            }, sort_keys=True, default=repr)
        self._compiled = None
        self.record: dict[str, Any] = {}

    def key(self, args: Sequence[Any]) -> str:
        text = json.dumps([self._base, signature(args)])
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    def __call__(self, *args):
        if not self.cache_dir:  # persistence off: plain jit
            return self.jitted(*args)
        if self._compiled is None:
            self._compiled = self.prepare(*args)
        try:
            return self._compiled(*args)
        except TypeError:  # other shapes or dtypes than the first call's: their own program
            self._compiled = self.prepare(*args)
            return self._compiled(*args)

    def prepare(self, *args):
        """The compiled program for ``args``: loaded when stored, else compiled (and stored)."""
        path = None
        if self.cache_dir:
            path = os.path.join(self.cache_dir, self.key(args) + ".pkl")
            if os.path.exists(path):
                t = time.perf_counter()
                try:
                    compiled, meta = self._load(path)
                except Exception as e:  # noqa: BLE001 -- any unreadable entry: compile anew
                    warnings.warn(f"could not load the compiled program {path} "
                                  f"({type(e).__name__}: {e}); compiling it again", stacklevel=3)
                else:
                    self.record = {"how": "loaded", "load_s": time.perf_counter() - t,
                                   "meta": meta, "path": path}
                    return compiled
        t0 = time.perf_counter()
        lowered = self.jitted.lower(*args)
        t1 = time.perf_counter()
        compiled = lowered.compile(compiler_options=self.compiler_options or None)
        t2 = time.perf_counter()
        meta = self.meta(lowered, compiled) if self.meta else {}
        how = "compiled"
        if path is not None and not self._store(path, compiled, meta):
            how = "compiled, not stored"
        self.record = {"how": how, "lower_s": t1 - t0, "compile_s": t2 - t1, "meta": meta,
                       "path": path}
        return compiled

    def _load(self, path: str):
        with open(path, "rb") as f:
            entry = pickle.load(f)
        if entry.get("format") != FORMAT:
            raise ValueError(f"format {entry.get('format')}, expected {FORMAT}")
        compiled = serialize_executable.deserialize_and_load(
            entry["payload"], entry["in_tree"], entry["out_tree"],
            backend=self.devices[0].client, execution_devices=self.devices)
        return compiled, entry["meta"]

    def _store(self, path: str, compiled, meta: dict[str, Any]) -> bool:
        try:
            payload, in_tree, out_tree = serialize_executable.serialize(compiled)
            blob = pickle.dumps({"format": FORMAT, "payload": payload, "in_tree": in_tree,
                                 "out_tree": out_tree, "meta": meta})
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)  # atomic: a reader sees the whole entry or none
            return True
        except Exception as e:  # noqa: BLE001 -- a program that cannot be stored still runs
            warnings.warn(f"could not store the compiled program in {path} "
                          f"({type(e).__name__}: {e}); relaunches will compile it",
                          stacklevel=3)
            return False
