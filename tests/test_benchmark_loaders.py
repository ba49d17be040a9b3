"""experiments.benchmarks.loaders: ImageNet-shaped JPEGs, written once, through each loader."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from experiments.benchmarks import jpeg_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_jpegs_are_imagenet_shaped_and_written_once(tmp_path):
    sizes = jpeg_dataset.imagenet_sizes(2000)
    heights, widths = np.mean(sizes, axis=0)
    assert 300 < heights < 400 and 350 < widths < 450  # ImageNet: about 400x350
    stats = jpeg_dataset.write_folder(str(tmp_path), 20)
    files = sorted((tmp_path / "train").glob("class*/*.jpg"))
    assert len(files) == 20 and len(list((tmp_path / "test").glob("class*/*.jpg"))) == 10
    with Image.open(files[3]) as im:
        assert im.format == "JPEG" and im.mode == "RGB"
    first = files[0].stat().st_mtime_ns
    assert jpeg_dataset.write_folder(str(tmp_path), 20) == stats  # kept, not written again
    assert files[0].stat().st_mtime_ns == first
    # As a TFDS dataset: the JPEG bytes stored as they are, read back undecoded.
    from cnnjax.data import sources

    name = jpeg_dataset.write_tfds(str(tmp_path), str(tmp_path / "tfds"))
    train = sources.open_tfds(name, str(tmp_path / "tfds")).train
    record = train.encoded(5)
    assert record["encoded"][:3] == b"\xff\xd8\xff" and 0 <= record["label"] < 10
    assert {f.read_bytes() for f in files} >= {record["encoded"]}


@pytest.mark.e2e
def test_the_command_prints_one_row_per_loader_and_worker_count(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.benchmarks.loaders", f"--dir={tmp_path}",
         "--images=40", "--size=32", "--workers=1", "--batch_size=8", "--batches=2",
         f"--json={tmp_path / 'r.json'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("host: ") and "40 training JPEGs" in lines[0]
    from cnnjax.data import dali

    rows = [line for line in lines[2:] if line.split()[0] in ("before", "streaming", "dali")]
    assert len(rows) == 2 * (3 + dali.available())  # loaders x (one core, 1 worker)
    assert all(line.endswith("x") for line in rows)
