"""Search over ranges (cnnjax/search.py, Optuna): the space's parsing and its bad inputs, the
samplers' seeding, the pruner's stop, several workers on one study, a killed worker's trial."""

import csv
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import optuna
import pytest

from cnnjax import search, sweep, training
from cnnjax.config import ConfigError
from tests.helpers import ROOT, command, snapshot, tiny_config

SPACE = ("optimizer.learning_rate=loguniform(1e-3,0.5) optimizer.weight_decay=uniform(0,1e-3) "
         "train.log_every_steps=int(1,4) data.batch_size=intlog(8,64) "
         "optimizer.name=sgd,adamw model.features=(8,16),(16,32)")


def _plan(config, spec, workdir, **flags):
    return search.plan(config, sweep.parse_spec(spec), str(workdir), device_count=1,
                       **{"trials": 2, **flags})


def test_each_distribution_is_parsed_against_its_field(data_dir):
    config = tiny_config(data_dir)
    axes = sweep.parse_spec(SPACE)
    assert axes["optimizer.learning_rate"] == ["loguniform(1e-3,0.5)"]
    assert search.ranged(config, axes) and not search.ranged(config, sweep.parse_spec("seed=0,1"))
    parsed = {a.key: a for a in search.parse_axes(config, axes)}
    assert parsed["optimizer.learning_rate"] == search.Axis(
        "optimizer.learning_rate", "loguniform", 1e-3, 0.5)
    assert parsed["optimizer.weight_decay"] == search.Axis(
        "optimizer.weight_decay", "uniform", 0.0, 1e-3)
    assert parsed["train.log_every_steps"] == search.Axis("train.log_every_steps", "int", 1, 4)
    assert parsed["data.batch_size"] == search.Axis("data.batch_size", "intlog", 8, 64)
    assert parsed["optimizer.name"].choices == ("sgd", "adamw")
    assert parsed["model.features"].choices == ((8, 16), (16, 32))
    # get_sweep()'s dict: a string is a range, a list the choices; a text field's value that
    # looks like a call is a value.
    from_file = search.parse_axes(config, {"optimizer.learning_rate": "uniform(0.01, 0.1)",
                                           "seed": [0, 1], "optimizer.head": "head(1)"})
    assert [a.kind for a in from_file] == ["uniform", "choice", "choice"]
    assert not search.ranged(config, {"optimizer.head": "head(1)"})


def _sample(spec_axes, method, seed, n, data_dir, tmp_path):
    config = tiny_config(data_dir)
    config.seed = seed
    plan = search.plan(config, spec_axes, str(tmp_path / "unused"), trials=n, method=method,
                       device_count=1)
    study = optuna.create_study(direction="maximize")
    drawn = []
    for _ in range(n):
        trial = study.ask()
        study.sampler = search._sampler(optuna, plan, trial.number)
        params = search._suggest(trial, plan.axes)
        study.tell(trial, -abs(math.log(params["optimizer.learning_rate"] / 0.03)))
        drawn.append(params)
    return drawn


@pytest.mark.parametrize("method", ["random", "quasirandom", "tpe"])
def test_samplers_are_seeded_from_the_config_and_stay_in_range(method, data_dir, tmp_path):
    axes = sweep.parse_spec("optimizer.learning_rate=loguniform(1e-4,1) "
                            "train.log_every_steps=intlog(1,100) optimizer.name=sgd,adamw")
    first = _sample(axes, method, 0, 12, data_dir, tmp_path)
    assert first == _sample(axes, method, 0, 12, data_dir, tmp_path)  # reproducible
    assert first != _sample(axes, method, 1, 12, data_dir, tmp_path)
    rates = [p["optimizer.learning_rate"] for p in first]
    assert all(1e-4 <= r <= 1 for r in rates) and len(set(rates)) == 12  # no repeated draw
    assert all(1 <= p["train.log_every_steps"] <= 100 for p in first)
    assert {p["optimizer.name"] for p in first} <= {"sgd", "adamw"}
    if method == "quasirandom":  # a Sobol sequence in log space fills the decades evenly
        decades = sorted(math.floor(math.log10(r)) for r in rates[1:9])
        assert decades == [-4, -4, -3, -3, -2, -2, -1, -1]


@pytest.mark.parametrize("spec, flags, message", [
    ("optimizer.learning_rate=gauss(0,1)", {}, "unknown distribution 'gauss' in sweep axis "
     "optimizer.learning_rate=gauss(0,1); use uniform(a,b), loguniform(a,b)"),
    ("optimizer.learning_rate=uniform(0.5,0.1)", {},
     "sweep axis optimizer.learning_rate=uniform(0.5,0.1): low must be below high"),
    ("optimizer.learning_rate=uniform(0.1,0.1)", {}, "low must be below high"),
    ("optimizer.weight_decay=loguniform(0,1e-3)", {}, "sweep axis optimizer.weight_decay="
     "loguniform(0,1e-3): a log range must be above 0"),
    ("data.batch_size=intlog(0,64)", {}, "a log range must be above 0"),
    ("optimizer.learning_rate=int(1,5)", {}, "sweep axis optimizer.learning_rate=int(1,5): "
     "optimizer.learning_rate is a float field; use uniform(1,5) or loguniform(...)"),
    ("data.batch_size=uniform(8,64)", {}, "data.batch_size is an integer field; use int(8,64)"),
    ("data.batch_size=int(8.5,64)", {}, "int(low,high) takes two integers"),
    ("optimizer.learning_rate=uniform(0.1)", {}, "uniform(low,high) takes two numbers"),
    ("data.flip=uniform(0,1)", {}, "data.flip is not a number"),
    ("optimizer.learnin_rate=uniform(0,1)", {}, "unknown config key 'optimizer.learnin_rate' "
     "in sweep; did you mean 'optimizer.learning_rate'?"),
    ("optimizer.learning_rate=uniform(0.01,0.1)", {"method": "bayes"},
     "unknown --sweep_method=bayes; choose one of grid, random, quasirandom, tpe"),
    ("optimizer.learning_rate=uniform(0.01,0.1)", {"method": "grid"},
     "--sweep_method=grid takes comma lists only"),
    ("optimizer.learning_rate=uniform(0.01,0.1)", {"pruner": "asha"},
     "unknown --sweep_pruner=asha; choose one of none, median, successive_halving, hyperband"),
    ("optimizer.learning_rate=uniform(0.01,0.1)", {"trials": None},
     "a search over ranges needs --sweep_trials=N"),
    ("optimizer.learning_rate=uniform(0.01,0.1)", {"objective": "accuracy"},
     "unknown --sweep_objective=accuracy; choose one of eval_accuracy"),
    ("optimizer.learning_rate=uniform(0.01,0.1)", {"direction": "up"},
     "unknown --sweep_direction=up"),
    ("seed=0,1", {}, "--sweep_trials, --sweep_method and the other --sweep_* flags are for a "
     "search over ranges"),
    ("data.batch_size=int(30,40)", {}, "sweep search at data.batch_size=30: data.batch_size=30 "
     "is not divisible"),
    ("optimizer.learning_rate=uniform(0.01,0.1)", {"storage": "sqlite:///{tmp}/nope/s.db"},
     "--sweep_storage=sqlite:///{tmp}/nope/s.db cannot be opened (OperationalError"),
])
def test_bad_search_inputs_are_one_line_before_any_work(data_dir, tmp_path, spec, flags,
                                                        message):
    flags = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in flags.items()}
    config = tiny_config(data_dir)
    with pytest.raises(ConfigError) as error:
        search.plan(config, sweep.parse_spec(spec), str(tmp_path / "w"),
                    device_count=8, **{"trials": 2, **flags})
    assert message.format(tmp=tmp_path) in str(error.value), str(error.value)
    assert "\n" not in str(error.value) and os.listdir(tmp_path) == []


def test_without_optuna_the_search_flags_say_how_to_install_it(
        tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # any `import optuna` now fails
    result = command(capsys, "--sweep=optimizer.learning_rate=loguniform(1e-3,1)",
                     "--sweep_trials=2", f"--workdir={tmp_path / 's'}",
                     env={"TFDS_DATA_DIR": data_dir})
    assert (result.returncode, result.stderr) == (
        2, "error: hyperparameter search needs Optuna: pip install cnnjax[search]\n")
    assert not (tmp_path / "s").exists()


@pytest.mark.e2e  # trains (a few seconds, most of it compiling)
def test_grids_train_without_optuna(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    result = command(capsys, "--config.train.num_steps=2", "--config.train.plots=False",
                     "--config.model.features=(8,16)", "--config.model.dense=(32,)",
                     "--sweep=seed=0", f"--workdir={tmp_path / 'g'}",
                     env={"TFDS_DATA_DIR": data_dir})
    assert result.returncode == 0, result.stderr
    assert sweep.is_finished(str(tmp_path / "g" / "seed=0"))


def _rows(workdir):
    with open(os.path.join(workdir, "results.csv")) as f:
        return list(csv.DictReader(f))


@pytest.mark.e2e  # trains (20 s on 2 cores, most of it compiling for 8 devices)
def test_a_pruned_trial_stops_with_its_checkpoint_and_is_never_resumed(
        data_dir, tmp_path, capsys, monkeypatch):
    config = tiny_config(data_dir, num_steps=4, eval_every_steps=2, log_every_steps=2,
                         checkpoint_every_steps=4, plots=False)
    root = tmp_path / "study"
    plan = _plan(config, "optimizer.learning_rate=loguniform(1e-3,0.5)", root, trials=1,
                 pruner="median")
    # Optuna's threshold pruner stops any trial under 200% accuracy: at its first evaluation.
    monkeypatch.setattr(search, "_pruner",
                        lambda optuna, name: optuna.pruners.ThresholdPruner(lower=2.0))
    trained = []

    def spy(cfg, workdir, **kwargs):
        trained.append(os.path.basename(workdir))
        return training.run(cfg, workdir, **kwargs)

    search.run(plan, train_fn=spy)
    trial_dir = root / "trial_0000"
    (frozen,) = search.open_study(plan).get_trials()
    assert frozen.state == optuna.trial.TrialState.PRUNED
    assert sorted(frozen.intermediate_values) == [2]
    # Saved at the evaluation that pruned it (step 2), though checkpoints fall every 4 steps.
    assert os.listdir(trial_dir / "checkpoints") == ["2"]
    assert not (trial_dir / "summary.json").exists()
    (row,) = _rows(root)
    assert row["state"] == "pruned" and row["step"] == "2"
    assert float(row["eval_accuracy"]) == pytest.approx(frozen.intermediate_values[2])
    # A relaunch prints the table and changes nothing: the pruned trial is not resumed.
    before = snapshot(root)
    capsys.readouterr()
    search.run(_plan(config, "optimizer.learning_rate=loguniform(1e-3,0.5)", root, trials=1,
                     pruner="median"), train_fn=spy)
    assert trained == ["trial_0000"]
    assert snapshot(root) == before
    out = capsys.readouterr().out
    assert "1 of 1 trials" in out and "| 0 | pruned |" in out


def test_a_relaunch_with_another_space_is_refused(data_dir, tmp_path):
    config = tiny_config(data_dir)
    search.open_study(_plan(config, "optimizer.learning_rate=uniform(0.01,0.1)", tmp_path))
    with pytest.raises(ConfigError, match="holds a study of another search"):
        search.open_study(_plan(config, "optimizer.learning_rate=uniform(0.01,0.2)", tmp_path))


def test_a_study_in_a_storage_url_is_named_after_the_workdir(data_dir, tmp_path):
    url = f"sqlite:///{tmp_path}/studies.db"
    config = tiny_config(data_dir)
    for name in ("a", "b"):  # two searches in one database
        plan = _plan(config, "optimizer.learning_rate=uniform(0.01,0.1)", tmp_path / name,
                     storage=url)
        search.open_study(plan).enqueue_trial({"optimizer.learning_rate": 0.05})
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(url))
    assert names == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert not (tmp_path / "a").exists()  # the study is in the database, not the workdir


def test_results_are_sorted_by_the_objective_with_each_state(data_dir, tmp_path):
    config = tiny_config(data_dir)
    plan = _plan(config, "optimizer.learning_rate=uniform(0.01,0.1)", tmp_path,
                 objective="eval_loss")
    assert plan.direction == "minimize"
    study = search.open_study(plan)
    State = optuna.trial.TrialState
    for value, state in ((0.5, State.COMPLETE), (0.2, State.COMPLETE), (None, State.FAIL),
                         (0.9, State.PRUNED), (None, State.RUNNING)):
        trial = study.ask()
        search._suggest(trial, plan.axes)
        if state == State.PRUNED:
            trial.report(value, 3)
        if state != State.RUNNING:
            study.tell(trial, value if state == State.COMPLETE else None, state=state)
    search.write_results(study, plan)
    rows = _rows(tmp_path)
    assert [(r["trial"], r["state"]) for r in rows] == [
        ("1", "complete"), ("0", "complete"), ("3", "pruned"), ("2", "failed"),
        ("4", "running")]
    md = open(tmp_path / "results.md").read()
    best = study.trials[1].params["optimizer.learning_rate"]
    assert f"--config.optimizer.learning_rate={best!r}" in md
    assert "2 complete, 1 pruned, 1 failed, 1 running" in md


# ----------------------------------------------------------------- launches of their own

TINY = ["--config.train.num_steps=24", "--config.train.eval_every_steps=8",
        "--config.train.log_every_steps=8", "--config.train.checkpoint_every_steps=4",
        "--config.train.plots=False", "--config.model.features=(8,16)",
        "--config.model.dense=(32,)", "--sweep=optimizer.learning_rate=loguniform(1e-3,0.3) "
        "optimizer.weight_decay=loguniform(1e-6,1e-3)", "--sweep_method=quasirandom"]


def _launch(workdir, data_dir, trials):
    env = {**os.environ, "TFDS_DATA_DIR": data_dir,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.Popen(
        [sys.executable, "launch.py", *TINY, f"--sweep_trials={trials}", f"--workdir={workdir}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return out


def _table(workdir):
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in _rows(workdir)]


@pytest.mark.e2e
def test_two_workers_share_a_study_and_train_each_trial_once(tmp_path, data_dir):
    from cnnjax import data

    # Prepared first: two launches racing to prepare TFDS's digits is another matter.
    data.open_source(tiny_config(data_dir).data)
    root = tmp_path / "study"
    outs = [_finish(p) for p in [_launch(root, data_dir, 4), _launch(root, data_dir, 4)]]
    started = [line for out in outs for line in out.splitlines()
               if line.startswith("search trial ") and " of 4" in line]
    assert sorted(int(line.split()[2]) for line in started) == [0, 1, 2, 3], started
    assert all("search trial " in out for out in outs), "each worker trained a trial"
    rows = _rows(root)
    assert sorted(r["state"] for r in rows) == ["complete"] * 4
    for r in rows:  # one run per trial: every logged step once
        with open(root / f"trial_{int(r['trial']):04d}" / "metrics.jsonl") as f:
            steps = [line for line in f if '"eval_accuracy"' in line]
        assert len(steps) == 3


@pytest.mark.e2e
def test_a_killed_workers_trial_resumes_and_the_study_equals_an_uninterrupted_one(
        tmp_path, data_dir):
    whole = tmp_path / "whole"
    _finish(_launch(whole, data_dir, 3))
    root = tmp_path / "killed"
    worker = _launch(root, data_dir, 3)
    checkpoints = root / "trial_0001" / "checkpoints"
    deadline = time.time() + 300
    while not (checkpoints.exists() and any(n.isdigit() and int(n) >= 8
                                            for n in os.listdir(checkpoints))):
        assert time.time() < deadline and worker.poll() is None, "trial 1 never checkpointed"
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert not (root / "trial_0001" / "summary.json").exists()
    out = _finish(_launch(root, data_dir, 3))
    assert "search trial 1 of 3 (resumed)" in out
    assert f"resumed from {checkpoints}/" in out
    assert "search trial 0 " not in out  # finished before the kill: not trained again
    assert _table(root) == _table(whole)


def test_get_sweep_ranges_from_a_config_file(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(textwrap.dedent("""
        def get_sweep():
            return {"optimizer.learning_rate": "loguniform(1e-4, 1)", "seed": [0, 1]}
    """))
    assert sweep.from_config_file(str(path), raw=True) == {
        "optimizer.learning_rate": "loguniform(1e-4, 1)", "seed": [0, 1]}


def test_a_config_files_ranges_make_a_search_on_the_command_line(tmp_path, capsys):
    path = tmp_path / "exp.py"
    path.write_text(textwrap.dedent("""
        from experiments.default import get_config

        def get_sweep():
            return {"optimizer.learning_rate": "loguniform(0, 1)"}
    """))
    result = command(capsys, f"--config={path}", "--sweep_trials=2",
                     f"--workdir={tmp_path / 'w'}")
    assert (result.returncode, result.stderr) == (
        2, "error: sweep axis optimizer.learning_rate=loguniform(0, 1): a log range must be "
           "above 0; start it at a small positive value, e.g. loguniform(1e-6,1.0)\n")
    assert not (tmp_path / "w").exists()
