"""The augmentation table against torchvision.transforms.v2 on real photographs, and its
determinism: 1 device or 8, and a run stopped and resumed.

The photographs are scikit-learn's two sample images (offline), downscaled to 64x48. Each
kernel's tolerance is stated beside it: ``(max |difference|, share of values that may
differ)``; docs/data.md has the same table.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as F
from jax.sharding import PartitionSpec
from PIL import Image
from sklearn.datasets import load_sample_images

from cnnjax import parallel, training
from cnnjax.data import augment, ops, policies
from tests.helpers import tiny_config
from tests.test_train import _final_state, _metrics

NEAREST = F.InterpolationMode.NEAREST


@pytest.fixture(scope="module")
def photos():
    return [np.asarray(Image.fromarray(im).resize((64, 48), Image.BILINEAR))
            for im in load_sample_images().images]


def _tv(fn, image, **kwargs):
    out = fn(torch.from_numpy(image.copy()).permute(2, 0, 1), **kwargs)
    return out.permute(1, 2, 0).numpy()


def _close(ours, theirs, tolerance, what=""):
    largest, share = tolerance
    diff = np.abs(np.asarray(ours).astype(int) - theirs.astype(int))
    assert diff.max() <= largest, (what, diff.max())
    assert np.mean(diff > 0) <= share, (what, np.mean(diff > 0))


EXACT = (0, 0.0)
# (name, our kernel, torchvision's, tolerance)
KERNELS = [
    ("brightness", lambda im: ops.brightness(im, 1.7),
     lambda im: _tv(F.adjust_brightness, im, brightness_factor=1.7), EXACT),
    ("saturation", lambda im: ops.saturation(im, 0.3),
     lambda im: _tv(F.adjust_saturation, im, saturation_factor=0.3), EXACT),
    ("contrast", lambda im: ops.contrast(im, 1.6),
     lambda im: _tv(F.adjust_contrast, im, contrast_factor=1.6), EXACT),
    # The 3x3 smoothing sums in another order than torch's convolution: +-1 on a few values.
    ("sharpness", lambda im: ops.sharpness(im, 1.7),
     lambda im: _tv(F.adjust_sharpness, im, sharpness_factor=1.7), (1, 0.002)),
    ("hue", lambda im: ops.hue(im, -0.3), lambda im: _tv(F.adjust_hue, im, hue_factor=-0.3),
     EXACT),
    ("posterize", lambda im: ops.posterize(im, 3), lambda im: _tv(F.posterize, im, bits=3),
     EXACT),
    ("solarize", lambda im: ops.solarize(im, 100.5),
     lambda im: _tv(F.solarize, im, threshold=100.5), EXACT),
    ("invert", ops.invert, lambda im: _tv(F.invert, im), EXACT),
    ("autocontrast", ops.autocontrast, lambda im: _tv(F.autocontrast, im), EXACT),
    ("equalize", ops.equalize, lambda im: _tv(F.equalize, im), EXACT),
    ("rotate", lambda im: ops.affine(im, ops.rotation(64, 48, 13.5)),
     lambda im: _tv(F.rotate, im, angle=13.5, interpolation=NEAREST), EXACT),
    ("rotate_quarter", lambda im: ops.affine(im, ops.rotation(64, 48, 180.0)),
     lambda im: _tv(F.rotate, im, angle=180.0, interpolation=NEAREST), EXACT),
    ("shear_x", lambda im: ops.affine(im, ops.inverse_affine(
        64, 48, shear=(math.degrees(math.atan(0.2)), 0.0), center=(0, 0)), fill=128),
     lambda im: _tv(F.affine, im, angle=0.0, translate=[0, 0], scale=1.0, center=[0, 0],
                    shear=[math.degrees(math.atan(0.2)), 0.0], interpolation=NEAREST, fill=128),
     EXACT),
    ("translate", lambda im: ops.affine(im, ops.inverse_affine(64, 48, translate=(-13, 5))),
     lambda im: _tv(F.affine, im, angle=0.0, translate=[-13, 5], scale=1.0, shear=[0.0, 0.0],
                    interpolation=NEAREST), EXACT),
    ("erase", lambda im: ops.erase(im, 3, 5, 10, 7, 9),
     lambda im: _tv(F.erase, im, i=3, j=5, h=10, w=7, v=torch.tensor(9, dtype=torch.uint8)),
     EXACT),
    ("pad_crop", lambda im: ops.pad_crop(im, 1, 7, 4),
     lambda im: _tv(lambda t: F.crop(F.pad(t, [4]), 1, 7, 48, 64), im), EXACT),
    # torch resizes uint8 in fixed point (PIL's scheme), ours in float32: +-1 on about a
    # quarter of the values (against torch's float32 path, exact).
    ("resized_crop_shrink", lambda im: ops.resized_crop(im, 3, 5, 40, 52, (32, 32)),
     lambda im: _tv(F.resized_crop, im, top=3, left=5, height=40, width=52, size=[32, 32],
                    antialias=True), (1, 0.3)),
    ("resized_crop_enlarge", lambda im: ops.resized_crop(im, 10, 2, 20, 30, (32, 32)),
     lambda im: _tv(F.resized_crop, im, top=10, left=2, height=20, width=30, size=[32, 32],
                    antialias=True), (1, 0.3)),
]


@pytest.mark.parametrize("name, ours, theirs, tolerance", KERNELS, ids=[k[0] for k in KERNELS])
def test_each_kernel_matches_torchvision_on_photographs(photos, name, ours, theirs, tolerance):
    ours = jax.jit(ours)  # compiled, as in the step (and faster than op by op)
    for image in photos:
        _close(ours(jnp.asarray(image)), theirs(image), tolerance)


def test_flip_is_torchvisions_horizontal_flip(photos):
    out = augment.OPS["flip"].fn(jnp.asarray(photos[0]), jax.random.key(0), p=1.0)
    np.testing.assert_array_equal(out, _tv(F.horizontal_flip, photos[0]))


TORCHVISION = {"randaugment": T.RandAugment, "trivialaugment": T.TrivialAugmentWide,
               "autoaugment": T.AutoAugment}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_the_policies_op_tables_are_torchvisions(name):
    theirs = TORCHVISION[name]._AUGMENTATION_SPACE
    ours = policies.SPACES[name]
    assert list(ours) == list(theirs)
    for op, (magnitudes, signed) in theirs.items():
        assert ours[op][1] == signed, op
        for bins in (10, 31):
            expected = magnitudes(bins, 48, 64)
            got = ours[op][0](bins, 48, 64) if ours[op][0] else None
            if expected is None:
                assert got is None, op
            else:
                np.testing.assert_array_equal(got, expected.numpy(), err_msg=op)


def test_the_autoaugment_policies_are_torchvisions():
    for name, policy in (("imagenet", T.AutoAugmentPolicy.IMAGENET),
                         ("cifar10", T.AutoAugmentPolicy.CIFAR10)):
        assert policies.AUTOAUGMENT[name] == T.AutoAugment(policy)._policies


# Every op of each policy at a few bins, both signs, against torchvision's own
# ``_apply_image_or_video_transform`` with the magnitude it would draw.
# Sharpness: the smoothing's order of sums. Color: compiled with a traced factor, XLA's
# fusion of the blend rounds a few values the other way (the kernel alone is exact).
TOLERANCE = {"Sharpness": (1, 0.002), "Color": (1, 0.05)}
BINS = {"randaugment": (31, (0, 9, 30)), "trivialaugment": (31, (5, 20, 30)),
        "autoaugment": (10, (3, 9))}


@pytest.mark.parametrize("name", sorted(BINS))
def test_every_policy_op_matches_torchvision(photos, name):
    space, (num_bins, bins) = policies.SPACES[name], BINS[name]
    tv = TORCHVISION[name]()
    image = photos[0]
    params = policies.table(space, num_bins, *image.shape[:2])
    apply = jax.jit(lambda im, op, b, neg: policies._apply(im, space, params, op, b, neg))
    for index, (op, (_, signed)) in enumerate(space.items()):
        values = TORCHVISION[name]._AUGMENTATION_SPACE[op][0](num_bins, *image.shape[:2])
        for b in bins:
            for negate in (False, True) if signed else (False,):
                magnitude = 0.0 if values is None else float(values[b]) * (-1 if negate else 1)
                theirs = _tv(tv._apply_image_or_video_transform, image, transform_id=op,
                             magnitude=magnitude, interpolation=tv.interpolation, fill=tv._fill)
                ours = apply(jnp.asarray(image), index, b, jnp.asarray(negate))
                _close(ours, theirs, TOLERANCE.get(op, EXACT), (op, b, negate))


SPEC = ("crop(padding=4) flip randaugment(num_ops=2,magnitude=9) trivialaugment "
        "autoaugment(policy=cifar10) erasing(p=0.5) jitter(hue=0.1) resized_crop")


@pytest.mark.heavy  # .ci/run runs it; the bare suite covers the same more cheaply
def test_the_augmented_batch_is_the_same_on_one_device_or_eight(photos):
    images = np.stack([np.roll(photos[i % 2], 3 * i, axis=1)[:32, :32] for i in range(16)])
    assert jax.device_count() == 8, "conftest sets 8 virtual CPU devices"

    def run(devices):
        mesh = parallel.make_mesh(devices)

        def per_device(batch):
            local = batch["images"].shape[0]
            index = jax.lax.axis_index(parallel.AXIS) * local + jnp.arange(local)
            return augment.augment(batch["images"], jax.random.key(3), index, SPEC)

        spec = PartitionSpec(parallel.AXIS)
        fn = jax.jit(parallel.per_device(per_device, mesh, spec, spec))
        return np.asarray(fn(parallel.global_batch({"images": images}, mesh)))

    one, eight = run(jax.devices()[:1]), run(jax.devices())
    np.testing.assert_array_equal(one, eight)
    assert np.mean(one != images) > 0.5  # something happened


def test_the_shorthand_fields_are_the_same_ops():
    data = {"crop_padding": 4, "flip": True, "mixup_alpha": 0.2, "cutmix_alpha": 0.0,
            "augment": "erasing(p=0.25)"}
    assert augment.format_chain(augment.chain(data)) == (
        "crop(padding=4) flip(p=0.5) mixup(alpha=0.2) erasing(p=0.25,scale=(0.02, 0.33),"
        "ratio=(0.3, 3.3),value=0)")
    listed = {**data, "crop_padding": 0, "flip": False, "mixup_alpha": 0.0,
              "augment": "crop(padding=4) flip mixup(alpha=0.2) erasing(p=0.25)"}
    assert augment.chain(listed) == augment.chain(data)  # the same ops, the same order


@pytest.mark.parametrize("spec", ["randaugment(num_ops=2,magnitude=9)", "trivialaugment"])
def test_a_run_is_bit_identical_after_a_stop_and_resume(tmp_path, data_dir, spec):
    config = tiny_config(data_dir, num_steps=8, checkpoint_every_steps=100, eval_every_steps=0,
                         plots=False)
    config.data.crop_padding = 0
    config.data.augment = f"crop(padding=1) {spec}"
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    training.run(config, straight)
    assert training.run(config, resumed, stop_at_step=3)["step"] == 3
    training.run(config, resumed)
    (step_a, a), (step_b, b) = _final_state(straight), _final_state(resumed)
    assert step_a == step_b == 8
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert _metrics(straight) == _metrics(resumed)
