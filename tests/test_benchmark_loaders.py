"""experiments.benchmarks.loaders: both loaders measured on synthetic JPEGs, and the command."""

import os
import subprocess
import sys

from experiments.benchmarks import loaders

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_each_loader_gets_a_rate_and_the_streamed_images_decode(tmp_path):
    results = loaders.measure(16, [0], batch_size=8, batches=2, n=32)
    assert [label.split(",")[0] for label, _ in results] == ["memory", "streaming"]
    assert all(rate > 0 for _, rate in results)
    record = loaders.JpegRecords(loaders.synthetic_images(2, 16, 16))[1]
    assert record["image"].shape == (16, 16, 3) and record["label"] == 1


def test_the_command_prints_one_line_per_measurement():
    result = subprocess.run(
        [sys.executable, "-m", "experiments.benchmarks.loaders", "--sizes=16", "--workers=0",
         "--batch_size=8", "--batches=2", "--images=32"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("host: ") and len(lines) == 3
    assert all(line.rstrip().endswith("images/s") for line in lines[1:])
