"""Your own data (npz files, image folders) and the loaders' multi-process and worker behaviour."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from cnnjax import config as config_lib
from cnnjax import data
from cnnjax.config import ConfigError, defaults
from cnnjax.data import local


def data_config(name, loader="memory", **overrides):
    c = defaults().data
    c.name, c.loader, c.workers = name, loader, 0
    c.batch_size, c.eval_batch_size = 8, 16
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


def _images(n, h=6, w=5, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _eval_set(d):
    batches = list(d.eval_batches(16))
    mask = np.concatenate([b["mask"] for b in batches]) > 0
    images = np.concatenate([b["images"] for b in batches])[mask]
    labels = np.concatenate([b["labels"] for b in batches])[mask]
    return images, labels


def _pairs(images, labels):
    pairs = zip(images, labels, strict=True)
    return sorted(image.tobytes() + int(label).to_bytes(2, "little") for image, label in pairs)


def test_npz_round_trip_with_and_without_test_arrays(tmp_path):
    images, labels = _images(30), np.arange(30) % 3
    test_images, test_labels = _images(7, seed=1), np.arange(7) % 3
    path = str(tmp_path / "with_test.npz")
    np.savez(path, images=images, labels=labels, test_images=test_images, test_labels=test_labels)
    d = data.build(data_config(f"npz:{path}"), seed=0)
    assert d.info.image_shape == (6, 5, 3) and d.info.num_classes == 3
    assert (d.num_train, d.num_eval) == (30, 7)
    assert _pairs(*_eval_set(d)) == _pairs(test_images, test_labels)
    seen = np.concatenate([d.train.batch(s)["images"] for s in range(3)])
    assert {i.tobytes() for i in seen} <= {i.tobytes() for i in images}

    # greyscale [n, h, w] without a test split: the fixed, stratified 20% hold-out
    grey, grey_labels = _images(50, c=1, seed=2)[..., 0], np.arange(50) % 5
    path = str(tmp_path / "grey.npz")
    np.savez(path, images=grey, labels=grey_labels)
    d = data.build(data_config(f"npz:{path}"), seed=0)
    assert d.info.image_shape == (6, 5, 1) and (d.num_train, d.num_eval) == (40, 10)
    assert data.describe(data_config(f"npz:{path}")) == d.info  # measured the same way
    test_images, test_labels = _eval_set(d)
    assert np.bincount(test_labels).tolist() == [2] * 5  # 20% of each class
    train_idx, test_idx = local.holdout(grey_labels)
    assert _pairs(test_images, test_labels) == _pairs(grey[test_idx][..., None],
                                                      grey_labels[test_idx])
    assert not set(train_idx) & set(test_idx)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.zeros((4, 2, 2), np.float32), "labels": np.zeros(4, int)}, "uint8"),
        ({"pixels": np.zeros((4, 2, 2), np.uint8)}, "no array 'images'"),
        ({"images": np.zeros((4, 2, 2), np.uint8), "labels": np.zeros(3, int)}, r"\[4\] integers"),
    ],
)
def test_bad_npz_is_one_line(tmp_path, arrays, message):
    path = str(tmp_path / "bad.npz")
    np.savez(path, **arrays)
    with pytest.raises(ConfigError, match=message):
        data.build(data_config(f"npz:{path}"), seed=0)


def _write_folder(root, split_dirs=True, n=6, size=(7, 9)):
    """PNG files (lossless) of 3 classes; returns {(class index, bytes)} per split."""
    classes = ["cat", "ant", "bee"]  # sorted: ant=0, bee=1, cat=2
    written = {"train": [], "test": []}
    rng = np.random.default_rng(0)
    for split in ("train", "test") if split_dirs else ("train",):
        for cls in classes:
            folder = os.path.join(root, split, cls) if split_dirs else os.path.join(root, cls)
            os.makedirs(folder, exist_ok=True)
            for i in range(n if split == "train" else 2):
                image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(image).save(os.path.join(folder, f"{i}.png"))
                written[split].append((sorted(classes).index(cls), image))
    return written


@pytest.mark.parametrize("loader", ["memory", "streaming"])
def test_folder_round_trip(tmp_path, loader):
    root = str(tmp_path / "pets")
    written = _write_folder(root)
    d = data.build(data_config(f"folder:{root}", loader), seed=0)
    assert d.info.num_classes == 3 and d.info.image_shape == (7, 9, 3)
    assert data.describe(data_config(f"folder:{root}", loader)) == d.info
    assert (d.num_train, d.num_eval) == (18, 6)
    expected = [(label, image) for label, image in written["test"]]
    assert _pairs(*_eval_set(d)) == _pairs(np.stack([i for _, i in expected]),
                                           [label for label, _ in expected])


def test_single_level_folder_uses_the_fixed_holdout_and_image_size(tmp_path):
    root = str(tmp_path / "flat")
    _write_folder(root, split_dirs=False, n=10)
    d = data.build(data_config(f"folder:{root}", image_size=4), seed=0)
    assert (d.num_train, d.num_eval) == (24, 6) and d.info.image_shape == (4, 4, 3)
    assert np.bincount(_eval_set(d)[1]).tolist() == [2, 2, 2]


def test_corrupt_image_is_one_line_with_its_path_or_skipped(tmp_path, capsys):
    root = str(tmp_path / "broken")
    _write_folder(root)
    bad = os.path.join(root, "train", "bee", "9.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG not really")
    with pytest.raises(data.CorruptImageError) as e:
        data.build(data_config(f"folder:{root}"), seed=0)
    assert bad in str(e.value) and "skip_corrupt=True" in str(e.value)
    assert "\n" not in str(e.value) and isinstance(e.value, ConfigError)
    d = data.build(data_config(f"folder:{root}", skip_corrupt=True), seed=0)
    assert d.num_train == 18
    (line,) = capsys.readouterr().err.splitlines()  # one warning line, nothing else
    assert line.startswith(f"warning: skipping corrupt image {bad}: ")


def test_mixed_sizes_need_an_image_size(tmp_path):
    root = str(tmp_path / "mixed")
    _write_folder(root)
    Image.new("RGB", (20, 10)).save(os.path.join(root, "train", "ant", "big.png"))
    with pytest.raises(ConfigError, match="--config.data.image_size"):
        data.build(data_config(f"folder:{root}"), seed=0)


@pytest.fixture
def unique_npz(tmp_path):
    """64 examples whose label is their index: a batch's labels name its examples."""
    path = str(tmp_path / "unique.npz")
    np.savez(path, images=_images(64, 2, 2, 1), labels=np.arange(64),
             test_images=_images(21, 2, 2, 1, seed=1), test_labels=np.arange(21))
    return f"npz:{path}"


@pytest.mark.parametrize("loader", ["memory", "streaming"])
def test_two_processes_see_disjoint_examples_that_cover_the_split(unique_npz, loader):
    config = data_config(unique_npz, loader, batch_size=16)
    seen, evaluated = [], []
    for process in (0, 1):
        d = data.build(config, seed=5, process_index=process, process_count=2)
        spe = d.train.steps_per_epoch
        seen.append(np.concatenate([d.train.batch(s)["labels"] for s in range(spe)]))
        assert all(len(b["labels"]) == 8 for b in [d.train.batch(spe)])
        evaluated.append(_eval_set(d)[1])
    assert spe == 4
    assert not set(seen[0]) & set(seen[1])
    assert sorted(np.concatenate(seen)) == list(range(64))
    assert sorted(np.concatenate(evaluated)) == list(range(21))  # each exactly once


def test_streaming_evaluation_in_a_worker_process(unique_npz):
    from cnnjax.data import streaming

    source = data.open_source(data_config(unique_npz))
    framing = data.framing_for(source, data_config(unique_npz))
    batches = list(streaming.eval_batches(source.eval, framing, 16, workers=1))
    assert [b["mask"].sum() for b in batches] == [16, 5]
    labels = np.concatenate([b["labels"][b["mask"] > 0] for b in batches])
    np.testing.assert_array_equal(labels, np.arange(21))


def test_images_the_model_cannot_take_stop_the_run_naming_shape_and_model(tmp_path):
    from cnnjax import training
    from tests.helpers import tiny_config

    path = str(tmp_path / "tiny.npz")
    np.savez(path, images=_images(40, 3, 3, 1), labels=np.arange(40) % 2)
    config = tiny_config(str(tmp_path))
    config.model = config_lib.model_config("lenet5")  # 5x5 VALID convolutions
    config.data.name = f"npz:{path}"
    with pytest.raises(ConfigError, match=r"model 'lenet5' cannot take the 3x3x1 images"):
        training.run(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_every_process_resumes_streaming_from_the_position_process_0_saved(unique_npz):
    """The checkpoint holds process 0's data position only; process 1 resumes from it."""
    for workers in (0, 2):
        config = data_config(unique_npz, "streaming", batch_size=16, workers=workers)
        loaders = [data.build(config, 1, process_index=p, process_count=2).train for p in (0, 1)]
        for step in range(5):  # past an epoch (4 steps)
            for loader in loaders:
                loader.batch(step)
        saved = json.loads(json.dumps(loaders[0].state(5)))  # as the checkpoint stores it
        for process, loader in enumerate(loaders):
            expected = loader.batch(5)["labels"]
            fresh = data.build(config, 1, process_index=process, process_count=2).train
            fresh.restore(5, saved)
            np.testing.assert_array_equal(fresh.batch(5)["labels"], expected)


def test_streaming_reads_the_in_memory_order_and_its_batches_do_not_depend_on_workers(
        unique_npz):
    memory = data.build(data_config(unique_npz, "memory"), seed=4).train
    loaders = [data.build(data_config(unique_npz, "streaming", workers=w), seed=4).train
               for w in (0, 2)]
    batches = [[loader.batch(step) for step in range(12)] for loader in loaders]  # 1.5 epochs
    for step in range(12):
        np.testing.assert_array_equal(loaders[0].indices(step), memory.indices(step))
        for key in ("images", "labels"):
            np.testing.assert_array_equal(batches[0][step][key], batches[1][step][key])


def _jpeg_folder(root, n=24):
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = (60 + 7 * (i % 5), 80 - 5 * (i % 4))  # mixed sizes: random-resized crops
        folder = root / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        smooth = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(
            (w, h), Image.BICUBIC)
        smooth.save(folder / f"{i}.jpg", quality=90)
    return str(root)


def test_jpeg_folders_stream_from_their_bytes_with_the_decoded_paths_crops(tmp_path):
    from cnnjax.data.transforms import train_encoded

    root = _jpeg_folder(tmp_path / "jpegs")
    config = data_config(f"folder:{root}", "streaming", image_size=32, flip=True)
    d = data.build(config, seed=3)
    records = local.open_folder(root).train
    assert records.encoded is not None
    batch = d.train.batch(0)
    assert batch["images"].shape == (8, 32, 32, 3)
    again = data.build(config, seed=3).train.batch(0)
    np.testing.assert_array_equal(batch["images"], again["images"])
    framing = data.framing_for(local.open_folder(root), config)
    assert framing.random_resized_crop and framing.shape == (32, 32, 3)
    for i in range(len(records)):  # the same random draws: the same crop and flip
        fast = train_encoded(framing, records.encoded(i)["encoded"],
                             np.random.default_rng([3, 0, i])).astype(float)
        slow = framing.train(records[i]["image"], np.random.default_rng([3, 0, i])).astype(float)
        assert np.abs(fast - slow).mean() < 6, i
        assert np.corrcoef(fast.ravel(), slow.ravel())[0, 1] > 0.97, i
