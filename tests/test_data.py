import numpy as np
import pytest

from cnnjax import data
from cnnjax.data.builders import digits
from cnnjax.errors import ConfigError


def test_digits_split_is_fixed_stratified_and_disjoint(data_dir):
    train = data.load("digits", "train", data_dir)
    test = data.load("digits", "test", data_dir)
    assert (len(train), len(test)) == (1347, 450)
    assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8
    # every class is split 75/25 (within rounding)
    for c in range(10):
        n_train, n_test = (train.labels == c).sum(), (test.labels == c).sum()
        assert abs(n_test / (n_train + n_test) - 0.25) < 0.01
    # the data source holds exactly the documented split (as sets of image bytes)
    ref_images, _ = digits.load_split("test")
    assert sorted(i.tobytes() for i in ref_images) == sorted(i.tobytes() for i in test.images)
    train_set = {i.tobytes() + bytes([c]) for i, c in zip(train.images, train.labels, strict=True)}
    test_set = {i.tobytes() + bytes([c]) for i, c in zip(test.images, test.labels, strict=True)}
    assert not train_set & test_set


def test_batches_are_a_pure_function_of_seed_and_step():
    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1)
    labels = np.arange(100, dtype=np.int32)
    a = data.InMemoryLoader(images, labels, 16, seed=3)
    b = data.InMemoryLoader(images, labels, 16, seed=3)
    assert a.steps_per_epoch == 6
    # an epoch visits distinct examples; the next epoch reorders them
    epoch0 = np.concatenate([a.batch(s)["labels"] for s in range(6)])
    epoch1 = np.concatenate([a.batch(s)["labels"] for s in range(6, 12)])
    assert len(set(epoch0)) == 96 and not np.array_equal(epoch0, epoch1)
    # a fresh loader asked for step 9 (mid-epoch 1) gives the identical batch
    np.testing.assert_array_equal(b.batch(9)["labels"], a.batch(9)["labels"])
    c = data.InMemoryLoader(images, labels, 16, seed=4)
    assert not np.array_equal(c.batch(0)["labels"], a.batch(0)["labels"])


def test_processes_read_disjoint_slices_that_form_the_global_batch():
    images = np.zeros((64, 1, 1, 1), np.uint8)
    labels = np.arange(64, dtype=np.int32)
    whole = data.InMemoryLoader(images, labels, 16, seed=0).batch(5)["labels"]
    parts = [data.InMemoryLoader(images, labels, 16, 0, p, 4).batch(5)["labels"] for p in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_eval_batches_pad_and_mask_the_last_batch():
    labels = np.arange(10, dtype=np.int32)
    images = labels.astype(np.uint8).reshape(10, 1, 1, 1)
    batches = list(data.eval_batches(images, labels, 4))
    assert [b["mask"].tolist() for b in batches] == [[1] * 4, [1] * 4, [1, 1, 0, 0]]
    seen = np.concatenate([b["labels"][b["mask"] > 0] for b in batches])
    np.testing.assert_array_equal(seen, labels)


def test_batch_larger_than_the_dataset_is_a_clear_error():
    with pytest.raises(ConfigError,
                       match="data.batch_size=32 is larger than the 10 training examples"):
        data.InMemoryLoader(np.zeros((10, 1, 1, 1), np.uint8), np.zeros(10, np.int32), 32, 0)
