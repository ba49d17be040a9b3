"""Pretrained weights by name, without the network: a loopback Hub serves a converted file.

The server answers as the Hugging Face Hub does for an LFS file (what
``huggingface_hub.file_download`` reads): ``HEAD /<repo>/resolve/<revision>/<file>`` with
``X-Repo-Commit``, an ``ETag`` that is the file's SHA-256 and ``Content-Length``; ``GET`` the
same path, honouring ``Range: bytes=N-`` with a 206 and ``Content-Range``. It records every
request, so a test sees what was downloaded, and resumed, and that a cache hit asks nothing.
"""

import hashlib
import http.server
import os
import re
import sys
import threading

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
import torchvision

from cnnjax import config as config_lib
from cnnjax import transfer, weights
from cnnjax.errors import ConfigError
from cnnjax.models import get_model
from cnnjax.models.pretrained import convert_torchvision
from tests.helpers import assert_refused, command
from tests.test_pretrained import random_torchvision

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "loopback/resnet18.tv_in1k"


class LoopbackHub:
    """A Hub at ``self.url`` serving ``files`` (repo -> bytes) at revision ``COMMIT``."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests, self.corrupt = files, [], False
        self.drop_after = 0  # > 0: the next whole-file GET stops after this many bytes
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _file(self):
                match = re.fullmatch(r"/(.+)/resolve/([^/]+)/(.+)", self.path)
                if not match or match.group(1) not in hub.files or match.group(2) not in (
                        COMMIT, "main"):  # a branch resolves to the commit, as on the Hub
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return hub.files[match.group(1)]

            def _headers(self, data: bytes, start: int = 0):
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()

            def do_HEAD(self):
                hub.requests.append(("HEAD", self.path, None))
                if (data := self._file()) is not None:
                    self._headers(data)

            def do_GET(self):
                hub.requests.append(("GET", self.path, self.headers.get("Range")))
                if (data := self._file()) is None:
                    return
                ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                start = int(ranged.group(1)) if ranged else 0
                self._headers(data, start)
                body = data[start:]
                if hub.drop_after and not start:  # a connection lost mid-file
                    self.wfile.write(body[:hub.drop_after])
                    self.wfile.flush()
                    self.close_connection = True
                    hub.drop_after = 0
                    return
                if hub.corrupt:  # the size right, one bit flipped: only the digest can tell
                    body = body[:-1] + bytes([body[-1] ^ 1])
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def downloads(self):
        return [r for r in self.requests if r[0] == "GET" and "/resolve/" in r[1]]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A random torchvision ResNet-18 (BatchNorm statistics randomised, so that a wrong
    mapping shows in the logits) as the Hub's model.safetensors: (path, bytes, module)."""
    model = random_torchvision("resnet18")
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("hub") / "model.safetensors"
    safetensors.torch.save_file(state, str(path))
    return path, path.read_bytes(), model.eval()


@pytest.fixture
def hub(resnet18_file, tmp_path, monkeypatch):
    """The loopback Hub as HF_ENDPOINT; HOME and every cache in tmp_path; the table's
    resnet18 entry pointing at the loopback repo, pinned to its commit."""
    server = LoopbackHub({REPO: resnet18_file[1]})
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "CNNJAX_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setitem(weights.SOURCES, "resnet18", weights.Source(
        "resnet18", REPO, "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        revision=COMMIT))
    yield server
    server.close()


def blobs(tmp_path):
    folder = tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def test_a_name_is_fetched_verified_converted_once_then_read_from_the_cache(
        hub, resnet18_file, tmp_path, capsys):
    first = command(capsys, "weights", "download", "resnet18")
    assert first.returncode == 0, first.stderr
    digest = hashlib.sha256(resnet18_file[1]).hexdigest()
    # The default cache: $XDG_CACHE_HOME/cnnjax, keyed by name and digest.
    directory = tmp_path / "home" / ".cache" / "cnnjax" / "weights" / f"resnet18-{digest[:16]}"
    assert f"SHA-256 {digest[:16]}... verified against the Hub's LFS digest" in first.stdout
    assert f"converted once into {directory}" in first.stdout
    assert len(hub.downloads()) == 1 and blobs(tmp_path) == [digest]

    # A second launch, offline even: the cache, no request, no conversion.
    hub.requests.clear()
    again = command(capsys, "weights", "download", "resnet18", env={"HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0, again.stderr
    assert f"pretrained resnet18: the cached conversion in {directory}" in again.stdout
    assert "converted" not in again.stdout and hub.requests == []

    listed = command(capsys, "weights", "list")
    assert f"[cached {directory}]" in listed.stdout
    assert re.search(r"^convnext_tiny +by hand: .*convnext_tiny-983f1562\.pth", listed.stdout,
                     re.M)
    assert command(capsys, "weights", "verify", "resnet18").stdout.startswith("resnet18: ok")

    # The weights a run starts from (transfer's merge into a fresh model) give the logits of
    # the file converted directly, and torchvision's own.
    model = get_model("resnet18")
    images = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    fresh = jax.eval_shape(model.init, jax.random.key(1), images)  # the paths and shapes
    apply = jax.jit(model.apply)  # one compile for both sets of weights
    loaded = transfer.load_variables(str(directory))
    params, notes = transfer.merge(fresh["params"], loaded["params"])
    stats, stat_notes = transfer.merge(fresh["batch_stats"], loaded["batch_stats"])
    assert notes == [] and stat_notes == []
    transferred = apply({"params": params, "batch_stats": stats}, images)
    state = safetensors.torch.load_file(str(resnet18_file[0]))
    direct = apply(convert_torchvision(state, "resnet18"), images)
    np.testing.assert_array_equal(np.asarray(transferred), np.asarray(direct))
    with torch.no_grad():
        expected = resnet18_file[2](torch.tensor(np.asarray(images).transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(np.asarray(transferred), expected.numpy(), atol=1e-4)

    # A cached file changed afterwards: verify names it, exit 2.
    victim = next(p for p in sorted(directory.rglob("*")) if p.is_file()
                  and p.name != "source.json" and p.stat().st_size > 1000)
    with open(victim, "r+b") as f:
        f.write(b"\0" * 8)
    changed = command(capsys, "weights", "verify")
    assert changed.returncode == 2
    assert f"resnet18: changed: {victim.relative_to(directory)}" in changed.stdout
    assert changed.stderr.startswith("error: 1 cached conversion(s) changed")


def test_a_table_digest_is_checked_and_a_corrupted_download_deleted_never_loaded(
        hub, resnet18_file, tmp_path, capsys, data_dir, monkeypatch):
    digest = hashlib.sha256(resnet18_file[1]).hexdigest()
    monkeypatch.setitem(weights.SOURCES, "resnet18", weights.Source(
        "resnet18", REPO, "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        revision=COMMIT, sha256=digest))
    hub.corrupt = True
    workdir = tmp_path / "run"
    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
    assert_refused(capsys, str(workdir), [
        "--config.model.name=resnet18", "--config.init.pretrained=resnet18",
        "--config.init.exclude=^head/", "--config.train.num_steps=1", "--workdir={run}"],
        f"not {digest[:16]}... (the table in cnnjax/weights.py); deleted it")
    assert not workdir.exists() and len(hub.downloads()) == 1
    assert blobs(tmp_path) == []  # neither the blob nor a half file is left
    assert not (tmp_path / "home" / ".cache" / "cnnjax" / "weights").exists() or not os.listdir(
        tmp_path / "home" / ".cache" / "cnnjax" / "weights")
    # The server mended: the next launch downloads it whole and it verifies.
    hub.corrupt = False
    assert weights.fetch("resnet18", log=lambda _: None).endswith(f"resnet18-{digest[:16]}")


def test_an_interrupted_download_resumes_where_it_stopped(hub, resnet18_file, tmp_path):
    data = resnet18_file[1]
    digest = hashlib.sha256(data).hexdigest()
    half = len(data) // 2
    hub.drop_after = half
    path = weights._download("resnet18", weights.SOURCES["resnet18"])
    (_, _, first), (_, _, second) = hub.downloads()  # the second from where the first stopped
    resumed = int(re.fullmatch(r"bytes=(\d+)-", second).group(1))
    assert first is None and 0 < resumed <= half  # (whole blocks of what arrived are kept)
    assert weights.sha256_file(path) == digest and blobs(tmp_path) == [digest]


def test_offline_without_the_cache_is_one_line_naming_how_to_get_it(hub, tmp_path, capsys):
    result = command(capsys, "weights", "download", "resnet18", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "is not in the cache" in result.stderr and "HF_HUB_OFFLINE is set" in result.stderr
    assert "cnnjax weights download resnet18 where the Hub is reachable" in result.stderr
    assert hub.requests == []


def test_offline_since_import_counts_as_offline(hub, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as read when it was imported
    result = command(capsys, "weights", "download", "resnet18")
    assert result.returncode == 2 and "HF_HUB_OFFLINE is set" in result.stderr
    assert hub.requests == []


def test_the_cache_is_cnnjax_home_else_xdg_cache_home_else_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNJAX_HOME", str(tmp_path / "c"))
    assert weights.cache_root() == str(tmp_path / "c" / "weights")
    monkeypatch.delenv("CNNJAX_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert weights.cache_root() == str(tmp_path / "x" / "cnnjax" / "weights")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert weights.cache_root() == str(tmp_path / "h" / ".cache" / "cnnjax" / "weights")


@pytest.mark.parametrize("flags, message", [
    (["--config.model.name=convnext_tiny", "--config.init.pretrained=convnext_tiny"],
     "has no torch-free source (no safetensors copy of torchvision's weights on the Hub); "
     "download https://download.pytorch.org/models/convnext_tiny-983f1562.pth by hand"),
    (["--config.model.name=resnet18", "--config.init.pretrained=resnet19"],
     "init.pretrained='resnet19' is no model with ImageNet weights; did you mean 'resnet18'"),
    (["--config.model.name=resnet34", "--config.init.pretrained=resnet18"],
     "holds the weights of resnet18, not of model 'resnet34'; pass --config.model.name=resnet18"),
    (["--config.model.name=resnet18", "--config.init.pretrained=resnet18"],
     "has a 1000-class head and the data has 10 classes; pass --config.init.exclude='^head/'"),
])
def test_a_name_that_cannot_work_is_refused_before_any_download(
        hub, tmp_path, capsys, data_dir, monkeypatch, flags, message):
    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
    assert_refused(capsys, str(tmp_path / "run"), [*flags, "--workdir={run}"], message)
    assert hub.requests == [] and not (tmp_path / "run").exists()


def test_without_huggingface_hub_the_error_names_the_extra(hub, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(ConfigError, match=r"needs huggingface_hub; pip install cnnjax\[hub\]"):
        weights.fetch("resnet18")


def test_get_config_takes_pretrained():
    import cnnjax

    config = cnnjax.get_config("cifar10_finetune_resnet18", pretrained="resnet18")
    assert config.init.pretrained == "resnet18" and config.init.exclude == "^head/"
    with pytest.raises(ConfigError, match="did you mean 'resnet50'"):
        config_lib.validate(cnnjax.get_config("default", pretrained="resnet05"))


# ---------------------------------------------------------------- key maps, class names


def _timm_regnet(state):
    """torchvision -> timm's RegNet names, as timm's own `_filter_fn` imports them."""
    replaces = [("f.a.0", "conv1.conv"), ("f.a.1", "conv1.bn"), ("f.b.0", "conv2.conv"),
                ("f.b.1", "conv2.bn"), ("f.final_bn", "conv3.bn"), ("f.se.excitation.0", "se.fc1"),
                ("f.se.excitation.2", "se.fc2"), ("f.se", "se"), ("f.c.0", "conv3.conv"),
                ("f.c.1", "conv3.bn"), ("f.c", "conv3.conv"), ("proj.0", "downsample.conv"),
                ("proj.1", "downsample.bn"), ("proj", "downsample.conv")]
    out = {}
    for k, v in state.items():
        k = k.replace("stem.0", "stem.conv").replace("stem.1", "stem.bn")
        k = re.sub(r"trunk_output.block(\d)\.block(\d+)\-(\d+)",
                   lambda x: f"s{int(x.group(1))}.b{int(x.group(3)) + 1}", k)
        for s, r in replaces:
            k = k.replace(s, r)
        out[k.replace("fc.", "head.fc.")] = v
    return out


def _timm_vgg(state):
    """torchvision -> timm's VGG (timm's `_filter_fn`: the classifier as convolutions)."""
    out = {}
    for k, v in state.items():
        k_r = k.replace("classifier.0", "pre_logits.fc1").replace(
            "classifier.3", "pre_logits.fc2").replace("classifier.6", "head.fc")
        if "classifier.0.weight" in k:
            v = v.reshape(-1, 512, 7, 7)
        if "classifier.3.weight" in k:
            v = v.reshape(-1, 4096, 1, 1)
        out[k_r] = v
    return out


@pytest.mark.parametrize("arch", ["regnet_x_400mf", "regnet_y_400mf"])
def test_the_regnet_key_map_inverts_timms_import(arch):
    state = {k: v.numpy() for k, v in getattr(torchvision.models, arch)().state_dict().items()
             if not k.endswith("num_batches_tracked")}
    timm = _timm_regnet(state)
    assert any(k.startswith("s1.b1.conv1.conv") for k in timm)  # renamed for real
    back = weights.KEYMAPS["regnet"](timm)
    assert back.keys() == state.keys()
    for k, v in state.items():
        np.testing.assert_array_equal(back[k], v)


def test_the_vgg_key_map_inverts_timms_import():
    rng = np.random.default_rng(0)
    state = {"features.0.weight": rng.normal(size=(4, 3, 3, 3)), "features.0.bias": np.ones(4),
             "classifier.0.weight": rng.normal(size=(3, 512 * 7 * 7)),
             "classifier.0.bias": np.ones(3), "classifier.3.weight": rng.normal(size=(2, 4096)),
             "classifier.3.bias": np.ones(2), "classifier.6.weight": rng.normal(size=(5, 2)),
             "classifier.6.bias": np.ones(5)}
    back = weights.KEYMAPS["vgg"](_timm_vgg(state))
    assert back.keys() == state.keys()
    for k, v in state.items():
        np.testing.assert_array_equal(back[k], v)


def test_the_table_covers_every_converted_model_once_with_torchvisions_file_names():
    from cnnjax.models.pretrained import ARCHS

    assert set(weights.SOURCES) | set(weights.BY_HAND) == set(ARCHS)
    assert not set(weights.SOURCES) & set(weights.BY_HAND)
    for name, source in weights.SOURCES.items():
        assert source.arch == name and source.url_sha256 and source.repo.startswith("timm/")
        # The URL is torchvision's own, for the weights the Hub copy holds (V2 for RegNet).
        tv = torchvision.models.get_model_weights(name)
        version = "IMAGENET1K_V2" if name.startswith("regnet") else "IMAGENET1K_V1"
        assert source.url == tv[version].url, name
    for name, file in weights.BY_HAND.items():
        assert any(w.url.endswith("/" + file) for w in torchvision.models.get_model_weights(name))


def test_imagenet_class_names_are_torchvisions():
    names = weights.imagenet_classes()
    assert names == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    from ml_collections import ConfigDict

    run = ConfigDict({"init": {"pretrained": "resnet18"}, "data": {"name": "cifar10"}})
    assert weights.class_names(run, 1000) == names
    assert weights.class_names(run, 10) is None
    scratch = ConfigDict({"init": {"pretrained": ""}, "data": {"name": "npz:x.npz"}})
    assert weights.class_names(scratch, 1000) is None


def test_predict_and_explain_name_imagenets_classes(tmp_path, data_dir, capsys):
    """A 1000-class run on data named ImageNet prints the class names; the class is the
    argmax of the probabilities, as without names."""
    from cnnjax import run as run_lib
    from cnnjax import training
    from tests.helpers import tiny_config

    rng = np.random.default_rng(0)
    labels = np.arange(1000)
    images = rng.integers(0, 256, (1000, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "imagenet_tiny.npz", images=images, labels=labels,
             test_images=images[:64], test_labels=labels[:64])
    config = tiny_config(data_dir, num_steps=1, eval_every_steps=0, checkpoint_every_steps=1,
                         plots=False)
    config.data.name = f"npz:{tmp_path / 'imagenet_tiny.npz'}"
    config.data.crop_padding = 0
    config.train.writers = "jsonl"
    workdir = str(tmp_path / "run")
    training.run(config, workdir)
    np.savez(tmp_path / "x.npz", images=images[:2])
    capsys.readouterr()
    rows = run_lib.run_predict(workdir, str(tmp_path / "x.npz"))
    out = capsys.readouterr().out
    names = weights.imagenet_classes()
    for row in rows:
        k = int(np.argmax([row[f"p_{i}"] for i in range(1000)]))
        assert row["predicted"] == k and row["class_name"] == names[k]
        assert f"{row['input']}: class {k} ({names[k]}) (p=" in out
    result = run_lib.run_explain(workdir, str(tmp_path / "x.npz"))
    out = capsys.readouterr().out
    k = int(result.predicted[0])
    assert f"{tmp_path / 'x.npz'}[0]: class {k} ({names[k]}) (p=" in out


@pytest.mark.e2e
def test_two_launches_fetch_and_convert_once_and_start_from_the_converted_weights(
        hub, resnet18_file, tmp_path, data_dir):
    """launch.py from a fresh HOME with the loopback Hub: the first launch fetches, verifies and
    converts; the second (another workdir) reads the cache; the linear probe's backbone, which
    training leaves bit-identical, is the converted file's."""
    from cnnjax.checkpoint import Checkpointer
    from cnnjax.models.pretrained import load_pretrained
    from tests.test_launch import launch

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 4)
    np.savez(tmp_path / "small.npz", images=rng.integers(0, 256, (40, 32, 32, 3), np.uint8),
             labels=labels, test_images=rng.integers(0, 256, (8, 32, 32, 3), np.uint8),
             test_labels=labels[:8])
    env = {k: os.environ[k] for k in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "HF_ENDPOINT")}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    # The launches read the table as it ships: timm/resnet18.tv_in1k at "main".
    hub.files["timm/resnet18.tv_in1k"] = resnet18_file[1]
    flags = ["--config=cifar10_linear_probe_resnet18", "--config.init.pretrained=resnet18",
             f"--config.data.name=npz:{tmp_path / 'small.npz'}", "--config.data.image_size=0",
             "--config.data.batch_size=8", "--config.data.eval_batch_size=8",
             "--config.train.num_steps=2", "--config.train.writers=jsonl",
             "--noconfig.train.plots", "--compilation_cache_dir="]
    first = launch(*flags, f"--workdir={tmp_path / 'a'}", data_dir=data_dir, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "verified against" in first.stdout and "converted once into" in first.stdout
    second = launch(*flags, f"--workdir={tmp_path / 'b'}", data_dir=data_dir, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "pretrained resnet18: the cached conversion in" in second.stdout
    assert "converted" not in second.stdout and len(hub.downloads()) == 1

    digest = hashlib.sha256(resnet18_file[1]).hexdigest()
    directory = os.path.join(weights.cache_root(), f"resnet18-{digest[:16]}")
    assert f"the cached conversion in {directory}" in second.stdout
    converted = load_pretrained(directory)
    state, _ = Checkpointer(str(tmp_path / "b" / "checkpoints"), 1).read()
    for collection in ("params", "batch_stats"):
        flat = jax.tree_util.tree_flatten_with_path(converted[collection])[0]
        trained = dict(jax.tree_util.tree_flatten_with_path(state[collection])[0])
        for path, value in flat:
            if "head" not in jax.tree_util.keystr(path):
                np.testing.assert_array_equal(np.asarray(trained[path]), np.asarray(value))
