"""Hyperparameter search over ranges, with Optuna as the engine (``pip install cnnjax[search]``).

    python launch.py --workdir=W --sweep_trials=16 --sweep_method=tpe --sweep_pruner=median \\
        --sweep='optimizer.learning_rate=loguniform(1e-3,0.5) data.mixup_alpha=uniform(0,0.4)
                 model.kernel_size=int(2,5) optimizer.name=sgd,adamw'

An axis of ``--sweep`` (or a value of ``get_sweep()``'s dict) is a range when it is one of
``uniform(a,b)``, ``loguniform(a,b)`` (float fields), ``int(a,b)``, ``intlog(a,b)`` (integer
fields, both ends included); comma lists stay categorical choices. Any range makes the sweep a
search of ``--sweep_trials`` trials sampled by ``--sweep_method`` (random, quasirandom: scrambled
Sobol, tpe), seeded from the config's ``seed``; trial ``k``'s sampler is seeded with
``(seed, k)``, so workers sharing a study never draw the same point twice and a study is
reproducible.

The study lives in ``W/study.journal`` (Optuna's ``JournalFileBackend``: an append-only log,
each record one ``write`` followed by ``fsync``, under ``flock`` on ``W/study.journal.flock``,
which the kernel releases when a writer is killed), or in ``--sweep_storage=URL``. Trial ``k``
trains in ``W/trial_000k`` like a grid point, so it checkpoints and resumes exactly. While a
worker trains a trial it holds ``flock`` on ``W/claims/trial_000k``: the kernel drops it the
moment that worker dies, however it dies, so a RUNNING trial whose claim is free is stale and
the next launch resumes it from its checkpoint instead of sampling a new one (Optuna's
heartbeats would need a grace period, and misjudge a trial whose worker is merely slow). Each
evaluation of the loop is reported to ``--sweep_pruner``; a pruned trial stops there, its
checkpoint committed, and is marked pruned. ``W/results.md``/``results.csv`` list the trials
sorted by the objective, with the best trial's command line, and ``W/plots/*.png`` are Optuna's
matplotlib plots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
import re
import shlex
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections

from cnnjax import config as config_lib
from cnnjax import files, training
from cnnjax import overrides as overrides_lib
from cnnjax.errors import ConfigError, first_line
from cnnjax.workdir import read_summary

INSTALL = "hyperparameter search needs Optuna: pip install cnnjax[search]"
METHODS = ("grid", "random", "quasirandom", "tpe")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
DIRECTIONS = ("maximize", "minimize")
OBJECTIVES = tuple(m for m in config_lib.BEST_METRICS if m)
KINDS = {"uniform": float, "loguniform": float, "int": int, "intlog": int}
STUDY = "cnnjax"
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
          "WAITING": "waiting"}
_RANGE = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)
_TABLE_METRICS = ("eval_accuracy", "eval_loss", "step", "wall_time_s")


@dataclasses.dataclass(frozen=True)
class Axis:
    """One searched field: a range (``kind`` in ``KINDS``) or ``choices`` (categorical)."""

    key: str
    kind: str  # "uniform", "loguniform", "int", "intlog" or "choice"
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()

    def text(self) -> str:
        if self.kind == "choice":
            return f"{self.key}={','.join(map(str, self.choices))}"
        return f"{self.key}={self.kind}({self.low:g},{self.high:g})"


def _is_range(value: Any) -> bool:
    return isinstance(value, str) and bool(_RANGE.match(value))


def _field(config: ml_collections.ConfigDict, key: str) -> Any:
    """The current value of ``key`` (a ``ConfigError`` naming the closest key if unknown)."""
    node = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            overrides_lib.apply(config, {key: "0"}, where="sweep")  # raises the usual message
        node = node[part]
    return node


def ranged(config: ml_collections.ConfigDict, axes: Any) -> bool:
    """Whether a sweep (``parse_spec``'s axes, or what ``get_sweep()`` returned) has a range
    on a field that is not text (a text field's value may look like a call)."""
    if not isinstance(axes, dict):
        return False
    for key, values in axes.items():
        value = values if isinstance(values, str) else (
            values[0] if isinstance(values, (list, tuple)) and len(values) == 1 else None)
        if _is_range(value):
            with contextlib.suppress(ConfigError, KeyError, TypeError):
                if isinstance(_field(config, key), str) and key != "model.name":
                    continue
            return True
    return False


def parse_axes(config: ml_collections.ConfigDict, axes: dict[str, Any]) -> list[Axis]:
    """``{key: "loguniform(1e-4,1)" | [choices]}`` -> axes, each checked against its field."""
    result = []
    for key, values in axes.items():
        value = values if isinstance(values, str) else (
            values[0] if isinstance(values, (list, tuple)) and len(values) == 1 else None)
        current = _field(config, key)
        if not _is_range(value) or (isinstance(current, str) and key != "model.name"):
            choices = [values] if isinstance(values, str) else list(values)
            typed = [overrides_lib.apply(config, {key: c}, where="sweep")[1][key]
                     for c in choices]
            result.append(Axis(key, "choice", choices=tuple(typed)))
            continue
        name, args = _RANGE.match(value).groups()
        if name not in KINDS:
            raise ConfigError(f"unknown distribution {name!r} in sweep axis {key}={value}; use "
                              "uniform(a,b), loguniform(a,b), int(a,b), intlog(a,b) or a comma "
                              "list of choices")
        parts = [p.strip() for p in args.split(",")]
        try:
            if len(parts) != 2:
                raise ValueError
            low, high = (KINDS[name](float(p)) if KINDS[name] is float else int(p)
                         for p in parts)
        except ValueError:
            kind = "integers" if KINDS[name] is int else "numbers"
            raise ConfigError(f"sweep axis {key}={value}: {name}(low,high) takes two {kind}, "
                              f"e.g. {name}(1,10)") from None
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            raise ConfigError(f"sweep axis {key}={value}: {key} is not a number; list its "
                              "choices instead, e.g. a,b")
        if isinstance(current, float) and KINDS[name] is int:
            raise ConfigError(f"sweep axis {key}={value}: {key} is a float field; use "
                              f"uniform({parts[0]},{parts[1]}) or loguniform(...)")
        if isinstance(current, int) and KINDS[name] is float:
            raise ConfigError(f"sweep axis {key}={value}: {key} is an integer field; use "
                              f"int({parts[0]},{parts[1]}) or intlog(...)")
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ConfigError(f"sweep axis {key}={value}: low must be below high")
        if name in ("loguniform", "intlog") and low <= 0:
            raise ConfigError(f"sweep axis {key}={value}: a log range must be above 0; "
                              f"start it at a small positive value, e.g. {name}(1e-6,{high})")
        result.append(Axis(key, name, low, high))
    return result


def _corners(axes: list[Axis]) -> Iterator[dict[str, Any]]:
    """Overrides at each range's low and high end, and each choice once: what validates."""
    base = {a.key: (a.choices[0] if a.kind == "choice" else a.low) for a in axes}
    yield base
    yield {**base, **{a.key: a.high for a in axes if a.kind != "choice"}}
    for a in axes:
        for c in a.choices[1:]:
            yield {**base, a.key: c}


@dataclasses.dataclass
class Search:
    """A planned search: what ``run`` needs, all checked before any training."""

    config: ml_collections.ConfigDict
    axes: list[Axis]
    trials: int
    method: str
    objective: str
    direction: str
    pruner: str
    storage: Any  # an Optuna storage, opened
    storage_name: str
    workdir: str
    command: list[str]  # the launch command less --sweep*, --workdir (for the best trial's)

    def signature(self) -> dict[str, Any]:
        """What a relaunch must repeat to join this study."""
        return {"axes": [a.text() for a in self.axes], "method": self.method,
                "objective": self.objective, "direction": self.direction, "seed": self.seed}

    @property
    def seed(self) -> int:
        return int(self.config.seed)


def optuna_module():
    """Optuna, or the one-line ``ConfigError`` that says how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(INSTALL) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def plan(config: ml_collections.ConfigDict, axes: dict[str, Any] | None, workdir: str, *,
         trials: int | None = None, method: str | None = None,
         objective: str = "eval_accuracy", direction: str | None = None,
         pruner: str | None = None, storage: str | None = None,
         command: list[str] | None = None, device_count: int | None = None) -> Search:
    """Checks a search request (every bad input a ``ConfigError`` before anything is created)
    and opens its storage."""
    if not axes or not isinstance(axes, dict):
        raise ConfigError("the --sweep_* flags need a search space: --sweep='key=loguniform"
                          "(a,b) ...' or get_sweep() returning {key: 'uniform(a,b)' | [values]}")
    parsed = parse_axes(config, axes)
    method = method or "quasirandom"
    if method not in METHODS:
        raise ConfigError(f"unknown --sweep_method={method}; choose one of {', '.join(METHODS)}")
    if pruner is not None and pruner not in PRUNERS:
        raise ConfigError(f"unknown --sweep_pruner={pruner}; choose one of {', '.join(PRUNERS)}")
    if not any(a.kind != "choice" for a in parsed):
        raise ConfigError("--sweep_trials, --sweep_method and the other --sweep_* flags are for "
                          "a search over ranges; give one axis as e.g. key=uniform(a,b) or "
                          "loguniform(a,b), or drop them to train the grid")
    if method == "grid":
        raise ConfigError("--sweep_method=grid takes comma lists only; sample ranges with "
                          "--sweep_method=random, quasirandom or tpe")
    if trials is None or trials < 1:
        raise ConfigError("a search over ranges needs --sweep_trials=N, N >= 1 (how many "
                          "trials to sample)")
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown --sweep_objective={objective}; choose one of "
                          f"{', '.join(OBJECTIVES)}")
    if direction is not None and direction not in DIRECTIONS:
        raise ConfigError(f"unknown --sweep_direction={direction}; choose maximize or minimize")
    direction = direction or ("minimize" if objective.endswith("_loss") else "maximize")
    for corner in _corners(parsed):
        point, typed = overrides_lib.apply(config, corner, where="sweep")
        try:
            config_lib.validate(point, device_count)
        except ConfigError as e:
            raise ConfigError(f"sweep search at {_name(typed)}: {e}") from None
    if jax.process_count() > 1:
        raise ConfigError("a search trains each trial on one host's devices; launch one worker "
                          "per host (the same command, without --num_processes)")
    optuna = optuna_module()
    workdir = os.path.abspath(workdir)
    if storage:
        try:
            opened = optuna.storages.get_storage(storage)
        except Exception as e:  # noqa: BLE001 -- any driver's failure, said in one line
            reason = first_line(e) if str(e).strip() else ""
            raise ConfigError(f"--sweep_storage={storage} cannot be opened "
                              f"({type(e).__name__}: {reason}); pass a URL Optuna can open, "
                              "e.g. sqlite:///W/study.db or postgresql://...") from None
        name = storage
    else:
        opened, name = None, os.path.join(workdir, "study.journal")
    return Search(config, parsed, trials, method, objective, direction, pruner or "none",
                  opened, name, workdir, command or ["python", "launch.py"])


def _name(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items())


# ------------------------------------------------------------------------------ Optuna


def _sampler(optuna, search: Search, number: int):
    """Trial ``number``'s sampler, seeded from ``(seed, number)``: reproducible, and distinct
    for every trial whichever worker draws it. The quasi-random sequence's scrambling keeps the
    study's seed (one Sobol sequence for every worker)."""
    seed = (search.seed * 1_000_003 + number) % 2**32
    if search.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.method == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    with warnings.catch_warnings():  # marked experimental in Optuna
        warnings.simplefilter("ignore")
        return optuna.samplers.QMCSampler(
            qmc_type="sobol", scramble=True, seed=search.seed % 2**32,
            independent_sampler=optuna.samplers.RandomSampler(seed=seed),
            warn_independent_sampling=False)


def _pruner(optuna, name: str):
    return {"none": optuna.pruners.NopPruner,
            "median": optuna.pruners.MedianPruner,
            "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
            "hyperband": optuna.pruners.HyperbandPruner}[name]()


def _stored(a: Axis) -> list[Any]:
    """A categorical axis as Optuna stores it: the values, or their indices for values Optuna
    cannot store (tuples)."""
    if all(isinstance(c, (str, int, float, bool)) for c in a.choices):
        return list(a.choices)
    return list(range(len(a.choices)))


def _param(a: Axis, stored: Any) -> Any:
    """The config value of a stored parameter of axis ``a``."""
    if a.kind == "choice" and not isinstance(a.choices[0], (str, int, float, bool)):
        return a.choices[stored]
    return stored


def _suggest(trial, axes: list[Axis]) -> dict[str, Any]:
    """Samples every axis (a trial that already has a value keeps it)."""
    params = {}
    for a in axes:
        if a.kind == "choice":
            params[a.key] = _param(a, trial.suggest_categorical(a.key, _stored(a)))
        elif a.kind in ("uniform", "loguniform"):
            params[a.key] = trial.suggest_float(a.key, a.low, a.high, log=a.kind == "loguniform")
        else:
            params[a.key] = trial.suggest_int(a.key, int(a.low), int(a.high),
                                              log=a.kind == "intlog")
    return params


class JournalLock:
    """The journal's writer lock: ``flock``, which the kernel drops when its holder dies, so a
    worker killed while appending stalls no other (Optuna's own symlink lock makes them wait
    30 s for a dead holder, then breaks it by age, which could also break a slow live one)."""

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.fd = fd
        return True

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def open_study(search: Search):
    """The study, created on the first launch; a relaunch must repeat its search."""
    optuna = optuna_module()
    if search.storage is None:
        os.makedirs(search.workdir, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        search.storage = optuna.storages.JournalStorage(JournalFileBackend(
            search.storage_name, lock_obj=JournalLock(search.storage_name + ".flock")))
    name = STUDY if search.storage_name.endswith("study.journal") else search.workdir
    pruner = _pruner(optuna, search.pruner)
    try:  # loading first: creating an existing study would append to its log
        study = optuna.load_study(study_name=name, storage=search.storage, pruner=pruner)
    except KeyError:
        try:
            study = optuna.create_study(study_name=name, storage=search.storage, pruner=pruner,
                                        direction=search.direction)
            study.set_user_attr("search", search.signature())
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it first
            study = optuna.load_study(study_name=name, storage=search.storage, pruner=pruner)
    recorded = study.user_attrs.get("search")
    if recorded is not None and recorded != search.signature():
        diff = ", ".join(f"{k}: {recorded.get(k)} -> {v}"
                         for k, v in search.signature().items() if recorded.get(k) != v)
        raise ConfigError(f"{search.storage_name} holds a study of another search ({diff}); "
                          "pass another --workdir (or --sweep_storage) to start a new one")
    return study


# ------------------------------------------------------------------------------ workers


def trial_name(number: int) -> str:
    return f"trial_{number:04d}"


class Claim:
    """``flock`` on ``W/claims/trial_000k`` while a worker trains trial ``k``."""

    def __init__(self, workdir: str, number: int):
        self.path = os.path.join(workdir, "claims", trial_name(number))
        self.fd: int | None = None

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def take(self) -> bool:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


@contextlib.contextmanager
def _serialised(workdir: str) -> Iterator[None]:
    """One worker at a time picks (and claims) its next trial: ``flock`` on ``W/search.lock``."""
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(os.path.join(workdir, "search.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _next_trial(optuna, study, search: Search):
    """A stale RUNNING trial to resume, else a new one while the study has room, else None;
    claimed and sampled (under the search's lock: the quasi-random sequence's counter is read
    and advanced by one worker at a time). Returns ``(trial, claim, resumed, params)``."""
    RUNNING = optuna.trial.TrialState.RUNNING
    with _serialised(search.workdir):
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            if t.state != RUNNING:
                continue
            claim = Claim(search.workdir, t.number)
            # No claim file: its worker died between asking and claiming, unless the study is
            # in a shared database whose other hosts' claims are not on this filesystem.
            if (claim.exists() or search.storage_name.endswith("study.journal")) and claim.take():
                study.sampler = _sampler(optuna, search, t.number)
                trial = optuna.trial.Trial(study, t._trial_id)
                return trial, claim, True, _suggest(trial, search.axes)
        if len(trials) >= search.trials:
            return None, None, False, {}
        trial = study.ask()
        claim = Claim(search.workdir, trial.number)
        claim.take()
        study.sampler = _sampler(optuna, search, trial.number)
        return trial, claim, False, _suggest(trial, search.axes)


def run(search: Search, *, train_fn: Callable[..., dict] | None = None,
        **train_kwargs: Any) -> dict[str, float]:
    """Trains trials until the study has ``search.trials``; writes the results. Returns the
    search's own time per trial (seconds outside training: sampling, storage, pruning checks)."""
    optuna = optuna_module()
    train_fn = train_fn or training.run
    log = print if jax.process_index() == 0 else (lambda *a: None)
    study = open_study(search)
    TrialState = optuna.trial.TrialState
    trained, overhead, hooks = 0, 0.0, [0.0]
    while True:
        start = time.perf_counter()
        trial, claim, resumed, params = _next_trial(optuna, study, search)
        if trial is None:
            break
        config, typed = overrides_lib.apply(search.config, params, where="sweep")
        workdir = os.path.join(search.workdir, trial_name(trial.number))
        log(f"search trial {trial.number} of {search.trials}"
            f"{' (resumed)' if resumed else ''}: {_name(typed)}")

        def on_eval(step: int, metrics: dict[str, float], trial=trial) -> bool:
            t0 = time.perf_counter()
            value = metrics.get(search.objective)
            stop = False
            if value is not None and math.isfinite(value):
                trial.report(float(value), step)
                stop = trial.should_prune()
            hooks[0] += time.perf_counter() - t0
            return stop

        overhead += time.perf_counter() - start
        try:
            try:
                summary = train_fn(config, workdir, on_eval=on_eval, **train_kwargs)
            except training.Stopped as e:
                start = time.perf_counter()
                study.tell(trial, state=TrialState.PRUNED)
                log(f"search trial {trial.number} pruned at step {e.step}")
            except training.NonFiniteError as e:  # a diverging point of the space: failed
                start = time.perf_counter()
                study.tell(trial, state=TrialState.FAIL)
                log(f"search trial {trial.number} failed: {e}")
            else:
                start = time.perf_counter()
                value = summary.get(search.objective)
                if value is None or not math.isfinite(value):
                    study.tell(trial, state=TrialState.FAIL)
                else:
                    study.tell(trial, float(value))
        finally:  # also on a preemption: the trial stays RUNNING, its claim free to resume
            claim.release()
        trained += 1
        if jax.process_index() == 0:
            write_results(study, search)
        overhead += time.perf_counter() - start
    if jax.process_index() == 0:
        if trained or not os.path.exists(os.path.join(search.workdir, "results.md")):
            write_results(study, search)
            write_plots(study, search)
        with open(os.path.join(search.workdir, "results.md")) as f:
            log(f.read().rstrip())
    if trained:
        log(f"search overhead: {(overhead + hooks[0]) / trained:.3f} s per trial over {trained} "
            f"trials (sampling, storage, tables: {overhead / trained:.3f} s; pruning checks: "
            f"{hooks[0] / trained:.3f} s)")
    return {"trials": trained, "overhead_s": overhead, "pruning_checks_s": hooks[0]}


# ------------------------------------------------------------------------------ results


def _value_of(t) -> float | None:
    if t.value is not None:
        return float(t.value)
    if t.intermediate_values:
        return float(t.intermediate_values[max(t.intermediate_values)])
    return None


def rows(study, search: Search) -> list[dict[str, Any]]:
    """Every trial, sorted by the objective (best first; trials without a value last)."""
    result = []
    for t in study.get_trials(deepcopy=False):
        workdir = os.path.join(search.workdir, trial_name(t.number))
        summary = read_summary(workdir) or {}
        params = {a.key: _param(a, t.params[a.key]) for a in search.axes if a.key in t.params}
        value = _value_of(t)
        steps = max(t.intermediate_values) if t.intermediate_values else ""
        row = {"trial": t.number, "state": STATES.get(t.state.name, t.state.name.lower()),
               **{k: _format(v) for k, v in params.items()},
               search.objective: "" if value is None else value,
               "step": summary.get("step", steps)}
        for key in _TABLE_METRICS:
            row.setdefault(key, summary.get(key, ""))
        result.append(row)
    sign = -1.0 if search.direction == "maximize" else 1.0
    return sorted(result, key=lambda r: (r[search.objective] == "",
                                         0.0 if r[search.objective] == ""
                                         else sign * r[search.objective], r["trial"]))


def _format(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(map(str, value)) + ")"
    return value


def best_command(study, search: Search) -> str | None:
    """The command that trains the best complete trial again, in a workdir of its own."""
    try:
        best = study.best_trial
    except ValueError:  # no complete trial yet
        return None
    params = {a.key: _param(a, best.params[a.key]) for a in search.axes}
    words = [*search.command, *(f"--config.{k}={_format(v)}" for k, v in params.items()),
             f"--workdir={os.path.join(search.workdir, 'best')}"]
    return " ".join(shlex.quote(w) for w in words)


def write_results(study, search: Search) -> list[str]:
    """Rewrites ``W/results.csv`` and ``W/results.md``."""
    table = rows(study, search)
    paths = [os.path.join(search.workdir, "results.csv"),
             os.path.join(search.workdir, "results.md")]
    if table:
        files.write_csv(paths[0], table, "trial")
    counts = {s: sum(r["state"] == s for r in table)
              for s in ("complete", "pruned", "failed", "running")}
    columns = ["trial", "state", *(a.key for a in search.axes), search.objective,
               *(m for m in _TABLE_METRICS if m != search.objective)]
    md = [f"# Search results: {search.workdir}", "",
          f"{len(table)} of {search.trials} trials ({search.method}, pruner {search.pruner}, "
          f"{search.direction} {search.objective}): "
          + ", ".join(f"{n} {s}" for s, n in counts.items()), ""]
    if command := best_command(study, search):
        md += ["Best trial, trained again:", "", "```bash", command, "```", ""]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in table]
    files.write_atomic(paths[1], "\n".join(md + lines) + "\n")
    return paths


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_plots(study, search: Search) -> list[str]:
    """Optuna's matplotlib plots in ``W/plots``: optimisation history, parameter importances
    (fANOVA, scikit-learn's forests) and parallel coordinates; each needs two complete trials."""
    complete = [t for t in study.get_trials(deepcopy=False)
                if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    out = os.path.join(search.workdir, "plots")
    os.makedirs(out, exist_ok=True)
    written = []
    for name, draw in (("optimization_history", vis.plot_optimization_history),
                       ("param_importances", vis.plot_param_importances),
                       ("parallel_coordinate", vis.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():  # the plots are marked experimental in Optuna
                warnings.simplefilter("ignore")
                ax = draw(study)
        except (ValueError, RuntimeError) as e:  # e.g. importances of a constant objective
            print(f"search: no {name} plot ({e})")
            continue
        figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        path = os.path.join(out, f"{name}.png")
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written
