"""The package's shape: imports point one way (no cycles, none from cnnjax/ into experiments/),
and the extension points are tables."""

import ast
import os

import pytest

from cnnjax import config as config_lib
from cnnjax import data, metrics, models, optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules() -> dict[str, str]:
    found = {}
    for folder, _, names in os.walk(os.path.join(ROOT, "cnnjax")):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """Every module imported anywhere in the file (also inside functions); ``from pkg import
    sub`` depends on ``pkg.sub`` itself."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                names.add(sub if sub in modules else node.module)
    return names


def test_imports_point_one_way():
    modules = _modules()
    imports = {m: _imports(p, modules) for m, p in modules.items()}
    graph = {m: {d for d in imports[m] if d in modules and d != m} for m in modules}
    for module in modules:
        assert not any(d.startswith("experiments") for d in imports[module]), module

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return trail + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
        return None

    cycles = [c for m in graph if (c := cycle_from(m))]
    assert not cycles, " -> ".join(cycles[0])


def test_the_extension_points_are_tables():
    # What the config accepts is what the tables hold: a new entry is the only change needed.
    assert config_lib.OPTIMIZERS == tuple(optim.OPTIMIZERS)
    assert config_lib.SCHEDULES == tuple(optim.SCHEDULES)
    assert set(data.SOURCES) == {"npz", "folder"}
    assert "resnet50" in models.names() and "cnn" in models.names()


def test_an_entry_added_to_a_table_at_run_time_is_a_valid_choice(monkeypatch):
    """What a config file does to plug in its own optimizer, schedule or writer."""
    config = config_lib.defaults()
    config.optimizer.name, config.optimizer.schedule = "mine", "mine"
    config.train.writers = "jsonl,mine"
    for key in ("optimizer", "schedule", "writer"):
        with pytest.raises(config_lib.ConfigError, match=f"unknown {key}|metric {key}"):
            config_lib.validate(config)
        table = {"optimizer": optim.OPTIMIZERS, "schedule": optim.SCHEDULES,
                 "writer": metrics.WRITERS}[key]
        monkeypatch.setitem(table, "mine", next(iter(table.values())))
    config_lib.validate(config)
