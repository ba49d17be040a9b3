"""--mode=eval and --mode=predict, and the best checkpoint."""

import csv
import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

from cnnjax import checkpoint, evaluate, training
from cnnjax import data as data_lib
from cnnjax import run as run_lib
from cnnjax.config import ConfigError
from cnnjax.data.builders.digits import load_split
from cnnjax.metrics import read_jsonl
from tests.helpers import tiny_config
from tests.runs import tiny_run  # noqa: F401 (a fixture)
from tests.test_launch import launch

EVAL_KEYS = ("eval_loss", "eval_accuracy", "eval_top5_accuracy")


def _evals(workdir):
    return {r["step"]: r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
            if "eval_loss" in r}


def test_eval_equals_the_training_loops_last_eval(tiny_run):  # noqa: F811
    workdir, summary, _ = tiny_run
    result = run_lib.run_eval(workdir)
    last = _evals(workdir)[20]
    assert result["step"] == 20
    for key in EVAL_KEYS:
        assert result[key] == last[key], key  # exactly: the same eval_step on the same batches
    assert result["eval_accuracy"] == summary["eval_accuracy"]
    cm = np.asarray(result["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == result["num_examples"] == 450
    assert np.trace(cm) == round(result["eval_accuracy"] * 450)
    np.testing.assert_allclose(result["per_class_accuracy"], np.diag(cm) / cm.sum(1))
    with open(os.path.join(workdir, "eval.json")) as f:
        assert json.load(f)["eval_accuracy"] == last["eval_accuracy"]


def test_a_run_passes_once_over_the_test_split_per_evaluation_and_eval_mode_repeats_the_last(
        data_dir, tmp_path, monkeypatch):
    passes, evaluations = [], []
    build, build_eval, evaluation = data_lib.build, data_lib.build_eval, evaluate.evaluation

    def counting(data):  # a pass counts when the test split has been read to its end
        def eval_batches(size):
            yield from data.eval_batches(size)
            passes.append(size)

        return dataclasses.replace(data, eval_batches=eval_batches)

    def recorded(*args, **kwargs):
        evaluations.append(evaluation(*args, **kwargs))
        return evaluations[-1]

    builds = []  # the training split is read only by data.build
    monkeypatch.setattr(data_lib, "build",
                        lambda *a, **k: builds.append(1) or counting(build(*a, **k)))
    monkeypatch.setattr(data_lib, "build_eval", lambda *a, **k: counting(build_eval(*a, **k)))
    monkeypatch.setattr(evaluate, "evaluation", recorded)
    workdir = str(tmp_path / "run")
    training.run(tiny_config(data_dir), workdir)  # evaluates at steps 10 and 20, plots on
    assert len(passes) == len(evaluations) == 2  # the plots' confusion is step 20's
    assert os.path.isfile(os.path.join(workdir, "plots", "confusion_matrix.png"))
    del builds[:]
    result = run_lib.run_eval(workdir)
    assert len(passes) == 3 and not builds  # the test split alone
    last = evaluations[1]
    assert result["confusion_matrix"] == last.confusion.tolist()
    for key in EVAL_KEYS:
        assert result[key] == last.metrics[key] == _evals(workdir)[20][key], key


def test_best_checkpoint_is_the_best_eval_and_launch_evaluates_it(tiny_run, data_dir):  # noqa: F811
    workdir, summary, _ = tiny_run
    evals = _evals(workdir)
    best_step = max(evals, key=lambda s: (evals[s]["eval_accuracy"], -s))  # first of ties
    with open(os.path.join(workdir, "best.json")) as f:
        assert json.load(f) == {"metric": "eval_accuracy", "mode": "max", "step": best_step,
                                "value": evals[best_step]["eval_accuracy"]}
    assert summary["best_step"] == best_step
    assert os.listdir(os.path.join(workdir, checkpoint.BEST_DIR)) == [str(best_step)]

    result = launch("--mode=eval", f"--workdir={workdir}", "--checkpoint=best",
                    data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "top-1 accuracy" in result.stdout and "confusion matrix" in result.stdout
    with open(os.path.join(workdir, "eval.json")) as f:
        written = json.load(f)
    assert written["checkpoint"] == "best" and written["step"] == best_step
    for key in EVAL_KEYS:
        assert written[key] == evals[best_step][key]


def test_predict_writes_classes_and_probabilities(tiny_run, data_dir, tmp_path):  # noqa: F811
    workdir, _, _ = tiny_run
    images, labels = load_split("test")
    paths = []
    for i in range(3):
        path = str(tmp_path / f"digit{i}.png")
        Image.fromarray(images[i, :, :, 0]).resize((32, 32)).save(path)  # resized back to 8x8
        paths.append(path)
    result = launch("--mode=predict", f"--workdir={workdir}", f"--inputs={','.join(paths)}",
                    data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(workdir, "predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["input"] for r in rows] == paths
    assert list(rows[0]) == ["input", "predicted", "probability", *[f"p_{k}" for k in range(10)]]
    for r in rows:
        probs = np.array([float(r[f"p_{k}"]) for k in range(10)])
        assert abs(probs.sum() - 1) < 1e-5 and int(r["predicted"]) == probs.argmax()
        assert float(r["probability"]) == pytest.approx(probs.max())


def test_predict_from_npz_agrees_with_the_training_eval(tiny_run, tmp_path):  # noqa: F811
    workdir, summary, _ = tiny_run
    images, labels = load_split("test")
    np.savez(tmp_path / "x.npz", images=images[:, :, :, 0])  # [n, h, w]: channel added
    rows = run_lib.run_predict(workdir, str(tmp_path / "x.npz"))
    predicted = np.array([r["predicted"] for r in rows])
    assert np.mean(predicted == labels) == summary["eval_accuracy"]
    assert rows[5]["input"].endswith("x.npz[5]")


def test_bad_checkpoint_and_inputs_are_one_line_errors(tiny_run, tmp_path):  # noqa: F811
    workdir, _, _ = tiny_run
    with pytest.raises(ConfigError, match="no checkpoint at step 7 in .*there are: \\[10, 20\\]"):
        run_lib.resolve_checkpoint(workdir, "7")
    with pytest.raises(ConfigError, match="'latest', 'best' or a step number, got 'newest'"):
        run_lib.resolve_checkpoint(workdir, "newest")
    with pytest.raises(ConfigError, match="no checkpoint in"):
        run_lib.resolve_checkpoint(str(tmp_path), "latest")
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 5, 5), np.uint8))
    with pytest.raises(ConfigError, match=r"shape \(5, 5, 1\); the model takes \(8, 8, 1\)"):
        run_lib.run_predict(workdir, str(tmp_path / "bad.npz"))


def test_best_tracking_compares_by_mode(tmp_path):
    best = checkpoint.BestCheckpoint(str(tmp_path), "eval_loss", "min")
    assert best.improves({"eval_loss": 2.0}) and not best.improves({"eval_accuracy": 1.0})
    best.update(10, {"eval_loss": 2.0})
    assert best.improves({"eval_loss": 1.5}) and not best.improves({"eval_loss": 2.0})
    assert not best.improves({"eval_loss": float("nan")})
    resumed = checkpoint.BestCheckpoint(str(tmp_path), "eval_accuracy", "max",
                                      {"metric": "eval_accuracy", "step": 3, "value": 0.5})
    assert not resumed.improves({"eval_accuracy": 0.5}) and resumed.improves(
        {"eval_accuracy": 0.6})
    best.close()
    resumed.close()


def test_an_interrupted_run_keeps_the_same_best_and_every_checkpoint(tiny_run, data_dir,  # noqa: F811
                                                                    tmp_path):
    straight, _, _ = tiny_run
    resumed = str(tmp_path / "resumed")
    config = tiny_config(data_dir)
    training.run(config, resumed, stop_at_step=15)  # after the eval of step 10
    training.run(config, resumed)
    for name in ("best.json", "summary.json"):
        with open(os.path.join(straight, name)) as f, open(os.path.join(resumed, name)) as g:
            a, b = json.load(f), json.load(g)
        for key in ("workdir", "wall_time_s", "train_time_s"):
            a.pop(key, None), b.pop(key, None)
        assert a == b, name
    assert os.listdir(os.path.join(resumed, checkpoint.BEST_DIR)) == os.listdir(
        os.path.join(straight, checkpoint.BEST_DIR))
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["10", "15", "20"]
