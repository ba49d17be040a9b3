"""Pretrained ImageNet weights by name: where each comes from, verified, converted once, cached.

    cnnjax --config=cifar10_finetune_resnet18 --config.init.pretrained=resnet18
    cnnjax weights list | download NAME | verify [NAME]

``SOURCES`` maps a model name to torchvision's ImageNet weights as timm keeps them on the
Hugging Face Hub (``timm/<arch>.tv_in1k``: one ``model.safetensors``, readable without torch),
pinned to a revision, with torchvision's own URL as the alternative. The file is downloaded
with ``huggingface_hub`` (its cache, ``HF_HOME``/``HF_HUB_CACHE``; ``HF_ENDPOINT``;
``HF_HUB_OFFLINE``; its progress bar; a connection lost mid-file resumes with an HTTP range
where it stopped), its SHA-256 checked, converted with ``cnnjax.models.pretrained`` and
the Orbax checkpoint cached in ``$CNNJAX_HOME/weights/<name>-<sha256[:16]>`` (``CNNJAX_HOME``
defaults to ``$XDG_CACHE_HOME/cnnjax``, that is ``~/.cache/cnnjax``). A later launch reads the
cache and converts nothing. A file whose digest is wrong is deleted, never converted.

The digests: a table entry's ``sha256`` is the file's full digest, checked when known. Until it
is filled in (from the Hub's file page, which shows each LFS file's SHA-256), the download is
checked against the digest the Hub itself announces for the file (its LFS object id, which
``huggingface_hub`` names the downloaded blob after) and the log says the table pins none.
torchvision's URLs carry the first 8 hex digits of their ``.pth`` file's SHA-256 in the file
name (``resnet18-f37072fd.pth``): ``url_sha256`` holds them, for a file downloaded by hand.
The ``revision`` of each entry must likewise be set to the commit of the Hub repo that was
checked; ``"main"`` follows the repo's newest commit, its digest still checked as above.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from cnnjax.errors import ConfigError
from cnnjax.files import sha256_file

EXTRA = "pip install cnnjax[hub]"
IMAGENET_CLASSES = 1000
_TV = "https://download.pytorch.org/models/"


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the ImageNet weights of model ``arch`` come from.

    ``repo``/``revision``/``filename``: the Hub file (safetensors); ``sha256``: its full digest
    ('' until filled in from the Hub); ``keymap``: how its key names become torchvision's
    ('' = they are torchvision's); ``url``: torchvision's ``.pth`` (needs torch to read), whose
    name carries ``url_sha256``, the first hex digits of its SHA-256.
    """

    arch: str
    repo: str
    url: str
    revision: str = "main"
    filename: str = "model.safetensors"
    sha256: str = ""
    keymap: str = ""

    @property
    def url_sha256(self) -> str:
        """The SHA-256 prefix in torchvision's file name: ``resnet18-f37072fd.pth`` ->
        ``f37072fd``."""
        match = re.search(r"-([0-9a-f]{8,})\.pth$", self.url)
        return match.group(1) if match else ""


def _tv(arch: str, pth: str, keymap: str = "", timm: str | None = None,
        tag: str = "tv_in1k") -> Source:
    return Source(arch, f"timm/{timm or arch}.{tag}", _TV + pth, keymap=keymap)


# torchvision's IMAGENET1K_V1 weights (V2 for RegNet: timm keeps only those on the Hub), by
# cnnjax's model name. timm renames VGG's classifier and every RegNet layer (``keymap``).
SOURCES: dict[str, Source] = {s.arch: s for s in (
    _tv("resnet18", "resnet18-f37072fd.pth"),
    _tv("resnet34", "resnet34-b627a593.pth"),
    _tv("resnet50", "resnet50-0676ba61.pth"),
    _tv("resnet101", "resnet101-63fe2227.pth"),
    _tv("resnet152", "resnet152-394f9c45.pth"),
    _tv("resnext50_32x4d", "resnext50_32x4d-7cdf4587.pth"),
    _tv("resnext101_32x8d", "resnext101_32x8d-8ba56ff5.pth"),
    _tv("wide_resnet50_2", "wide_resnet50_2-95faca4d.pth"),
    _tv("wide_resnet101_2", "wide_resnet101_2-32ee1156.pth"),
    _tv("densenet121", "densenet121-a639ec97.pth"),
    _tv("densenet161", "densenet161-8d451a50.pth"),
    _tv("densenet169", "densenet169-b2777c0a.pth"),
    _tv("densenet201", "densenet201-c1103571.pth"),
    *(_tv(a, f"{a}-{h}.pth", keymap="vgg") for a, h in (
        ("vgg11", "8a719046"), ("vgg11_bn", "6002323d"), ("vgg13", "19584684"),
        ("vgg13_bn", "abd245e5"), ("vgg16", "397923af"), ("vgg16_bn", "6c64b313"),
        ("vgg19", "dcbb9e9d"), ("vgg19_bn", "c79401a0"))),
    *(_tv(a, f"{a}-{h}.pth", keymap="regnet", timm=t, tag="tv2_in1k") for a, t, h in (
        ("regnet_x_400mf", "regnetx_004_tv", "62229a5f"),
        ("regnet_x_800mf", "regnetx_008", "94a99ebd"),
        ("regnet_x_1_6gf", "regnetx_016", "a12f2b72"),
        ("regnet_x_3_2gf", "regnetx_032", "7071aa85"),
        ("regnet_x_8gf", "regnetx_080", "2b70d774"),
        ("regnet_x_16gf", "regnetx_160", "ba3796d7"),
        ("regnet_x_32gf", "regnetx_320", "6eb8fdc6"),
        ("regnet_y_400mf", "regnety_004", "e6988f5f"),
        ("regnet_y_800mf", "regnety_008_tv", "58fc7688"),
        ("regnet_y_1_6gf", "regnety_016", "0d7bc02a"),
        ("regnet_y_3_2gf", "regnety_032", "9180c971"),
        ("regnet_y_8gf", "regnety_080_tv", "dc2b1b54"),
        ("regnet_y_16gf", "regnety_160", "3e4a00f9"),
        ("regnet_y_32gf", "regnety_320", "8db6d4b5"))),
)}

# Models with torchvision weights but no torch-free copy of them: the .pth to download by hand
# (and convert with `python -m cnnjax.models.pretrained`, which reads it with torch).
BY_HAND: dict[str, str] = {
    "resnext101_64x4d": "resnext101_64x4d-173b62eb.pth",
    "convnext_tiny": "convnext_tiny-983f1562.pth",
    "convnext_small": "convnext_small-0c510722.pth",
    "convnext_base": "convnext_base-6075fbad.pth",
    "convnext_large": "convnext_large-ea097f82.pth",
    **{f"efficientnet_b{i}": f"efficientnet_b{i}_{who}-{h}.pth" for i, who, h in (
        (0, "rwightman", "7f5810bc"), (1, "rwightman", "bac287d4"), (2, "rwightman", "c35c1473"),
        (3, "rwightman", "b3899882"), (4, "rwightman", "23ab8bcd"), (5, "lukemelas", "1a07897c"),
        (6, "lukemelas", "24a108a5"), (7, "lukemelas", "c5b4e57e"))},
    "efficientnet_v2_s": "efficientnet_v2_s-dd5fe13b.pth",
    "efficientnet_v2_m": "efficientnet_v2_m-dc08266a.pth",
    "efficientnet_v2_l": "efficientnet_v2_l-59c71312.pth",
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
    "mobilenet_v3_small": "mobilenet_v3_small-047dcff4.pth",
    "mobilenet_v3_large": "mobilenet_v3_large-8738ca79.pth",
    "regnet_y_128gf": "regnet_y_128gf_swag-c8ce3e52.pth",
}


# ------------------------------------------------------------------------------ key maps


def _vgg_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """timm's VGG -> torchvision's: its classifier is two convolutions (7x7 and 1x1) and a
    head; torchvision's is Linear layers over the same NCHW-flattened features."""
    out = {}
    for key, value in state.items():
        if key.startswith("pre_logits.fc1."):
            key = "classifier.0." + key.rsplit(".", 1)[1]
        elif key.startswith("pre_logits.fc2."):
            key = "classifier.3." + key.rsplit(".", 1)[1]
        elif key.startswith("head.fc."):
            key = "classifier.6." + key.rsplit(".", 1)[1]
        if key in ("classifier.0.weight", "classifier.3.weight"):
            value = value.reshape(value.shape[0], -1)  # (out, c, kh, kw) -> (out, c*kh*kw)
        out[key] = value
    return out


_REGNET_BLOCK = re.compile(r"^s(\d+)\.b(\d+)\.")
_REGNET_LAYERS = (("conv1.conv", "f.a.0"), ("conv1.bn", "f.a.1"), ("conv2.conv", "f.b.0"),
                  ("conv2.bn", "f.b.1"), ("conv3.conv", "f.c.0"), ("conv3.bn", "f.c.1"),
                  ("se.fc1", "f.se.fc1"), ("se.fc2", "f.se.fc2"),
                  ("downsample.conv", "proj.0"), ("downsample.bn", "proj.1"))


def _regnet_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """timm's RegNet -> torchvision's (the inverse of timm's own torchvision import):
    ``s2.b3.conv1.conv`` -> ``trunk_output.block2.block2-2.f.a.0``, ``head.fc`` -> ``fc``."""
    out = {}
    for key, value in state.items():
        key = key.replace("stem.conv.", "stem.0.").replace("stem.bn.", "stem.1.")
        if match := _REGNET_BLOCK.match(key):
            stage, block = int(match.group(1)), int(match.group(2)) - 1
            rest = key[match.end():]
            for timm, torchvision in _REGNET_LAYERS:
                if rest.startswith(timm + "."):
                    rest = torchvision + rest[len(timm):]
                    break
            key = f"trunk_output.block{stage}.block{stage}-{block}.{rest}"
        elif key.startswith("head.fc."):
            key = key[len("head."):]
        out[key] = value
    return out


KEYMAPS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "": dict, "vgg": _vgg_keys, "regnet": _regnet_keys}


# ------------------------------------------------------------------------- names, checks


def names() -> list[str]:
    """Every model name with ImageNet weights: downloadable (``SOURCES``) or by hand."""
    return sorted({*SOURCES, *BY_HAND})


def source_of(name: str) -> Source:
    """The table entry of ``name``; a one-line ``ConfigError`` for an unknown name (with the
    closest names) or one without a torch-free source (with the file to fetch by hand)."""
    if name in SOURCES:
        return SOURCES[name]
    if name in BY_HAND:
        raise ConfigError(
            f"init.pretrained={name!r} has no torch-free source (no safetensors copy of "
            f"torchvision's weights on the Hub); download {_TV}{BY_HAND[name]} by hand, convert "
            f"it with python -m cnnjax.models.pretrained --arch={name} --torch_weights="
            f"{BY_HAND[name]} --out=pretrained/{name} (needs torch) and pass "
            f"--config.init.checkpoint=pretrained/{name}")
    close = difflib.get_close_matches(name, names(), n=3)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise ConfigError(f"init.pretrained={name!r} is no model with ImageNet weights; {hint}"
                      f"choose one of: {', '.join(sorted(SOURCES))} (cnnjax weights list)")


def check_config(config, num_classes: int | None = None) -> None:
    """``init.pretrained`` against the rest of the config, before anything is downloaded:
    the name, the model it is for, ``init.checkpoint`` left empty, and a head that fits
    ``num_classes`` (the dataset's) or is excluded by ``init.exclude``."""
    name = config.init.pretrained
    if not name:
        return
    source = source_of(name)
    if config.init.checkpoint:
        raise ConfigError(f"init.pretrained={name!r} and init.checkpoint="
                          f"{config.init.checkpoint!r} both name the starting weights; give one")
    if config.model.name != source.arch:
        raise ConfigError(f"init.pretrained={name!r} holds the weights of {source.arch}, not of "
                          f"model {config.model.name!r}; pass --config.model.name={source.arch} "
                          "or the weights of this model")
    if (num_classes is not None and num_classes != IMAGENET_CLASSES
            and not re.search(config.init.exclude or "(?!)", "head/kernel")):
        raise ConfigError(f"init.pretrained={name!r} has a {IMAGENET_CLASSES}-class head and the "
                          f"data has {num_classes} classes; pass --config.init.exclude='^head/' "
                          "to start a new head")


# -------------------------------------------------------------------------------- the cache


def home() -> str:
    """``$CNNJAX_HOME``, else ``$XDG_CACHE_HOME/cnnjax``, else ``~/.cache/cnnjax``."""
    if os.environ.get("CNNJAX_HOME"):
        return os.path.abspath(os.path.expanduser(os.environ["CNNJAX_HOME"]))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(cache), "cnnjax")


def cache_root() -> str:
    """The folder of converted weights, one ``<name>-<sha256[:16]>`` folder each."""
    return os.path.join(home(), "weights")


_RECORD = "source.json"  # beside the Orbax files: where they came from, their digests


def _record(directory: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(directory, _RECORD)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cached(name: str) -> str | None:
    """The cached conversion of ``name``'s table entry (same repo, revision, file and, when
    the table pins one, digest), or None."""
    source, root = SOURCES[name], cache_root()
    if not os.path.isdir(root):
        return None
    for entry in sorted(os.listdir(root)):
        if not entry.startswith(f"{name}-") or entry.endswith(".tmp"):
            continue
        record = _record(os.path.join(root, entry))
        if record and record.get("name") == name and all(
                record.get(k) == getattr(source, k) for k in ("repo", "revision", "filename")) \
                and (not source.sha256 or record.get("sha256") == source.sha256):
            return os.path.join(root, entry)
    return None


def _tree_digests(directory: str) -> dict[str, str]:
    found = {}
    for root, _, files in os.walk(directory):
        for file in files:
            path = os.path.join(root, file)
            rel = os.path.relpath(path, directory)
            if rel != _RECORD:
                found[rel] = sha256_file(path)
    return dict(sorted(found.items()))


# ------------------------------------------------------------------------------- downloads


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now. huggingface_hub reads it once, on import; cnnjax reads it
    at each call and passes ``local_files_only``, so that setting it later also counts."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(
        os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_cache() -> str:
    """huggingface_hub's download cache as the environment names it now (``HF_HUB_CACHE``,
    else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface")
    return os.path.join(os.path.expanduser(hf_home), "hub")


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError(f"downloading pretrained weights needs huggingface_hub; {EXTRA}, "
                          "or convert a file yourself with python -m cnnjax.models.pretrained "
                          "and pass --config.init.checkpoint") from None
    return huggingface_hub


def _download(name: str, source: Source) -> str:
    """The Hub file of ``source``, downloaded (or found in huggingface_hub's cache)."""
    hub = _hub()
    from huggingface_hub import constants
    from huggingface_hub import errors as hub_errors

    # Offline if it is set now, or was when huggingface_hub was imported: then its sessions
    # refuse every request whatever the environment says since.
    local_only = offline() or bool(constants.HF_HUB_OFFLINE)
    try:
        return hub.hf_hub_download(
            source.repo, source.filename, revision=source.revision, cache_dir=hub_cache(),
            endpoint=os.environ.get("HF_ENDPOINT") or None, local_files_only=local_only)
    except hub_errors.LocalEntryNotFoundError:
        if local_only:
            raise ConfigError(
                f"pretrained {name} is not in the cache ({cache_root()}) and HF_HUB_OFFLINE is "
                f"set; run cnnjax weights download {name} where the Hub is reachable (same "
                "CNNJAX_HOME), or unset HF_HUB_OFFLINE") from None
        endpoint = os.environ.get("HF_ENDPOINT") or "huggingface.co"
        raise ConfigError(
            f"cannot reach the Hugging Face Hub ({endpoint}) for {source.repo}/"
            f"{source.filename} and it is not cached; check the connection "
            f"(or HF_ENDPOINT), or download {source.url} by hand") from None
    except (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError,
            hub_errors.EntryNotFoundError) as e:
        raise ConfigError(f"the Hub has no {source.repo}/{source.filename} at revision "
                          f"{source.revision} ({type(e).__name__}); download {source.url} by "
                          "hand") from None
    except (OSError, hub_errors.HfHubHTTPError) as e:
        reason = " ".join(str(e).split())[:200]
        raise ConfigError(f"downloading {source.repo}/{source.filename} failed ({reason}); "
                          "relaunch to resume it") from None


def _expected_digest(source: Source, path: str) -> tuple[str, str]:
    """(digest the file must have, where that digest comes from)."""
    if source.sha256:
        return source.sha256, "the table in cnnjax/weights.py"
    blob = os.path.basename(os.path.realpath(path))
    if re.fullmatch(r"[0-9a-f]{64}", blob):  # an LFS file: the blob is named by its SHA-256
        return blob, "the Hub's LFS digest (the table pins none yet)"
    return "", "nothing: the table pins no digest and the Hub announced none"


def _discard(path: str) -> None:
    """Deletes a downloaded file: the blob and the snapshot's link to it."""
    for p in {os.path.realpath(path), path}:
        try:
            os.remove(p)
        except FileNotFoundError:
            pass


def fetch(name: str, log: Callable[[str], None] = print) -> str:
    """The directory of ``name``'s converted weights: from the cache, or downloaded, verified,
    converted and cached first. Every failure is a one-line ``ConfigError``; a file whose
    SHA-256 is wrong is deleted first."""
    source = source_of(name)
    if (directory := cached(name)) is not None:
        log(f"pretrained {name}: the cached conversion in {directory}")
        return directory
    path = _download(name, source)
    expected, origin = _expected_digest(source, path)
    digest = sha256_file(path)
    if expected and digest != expected:
        _discard(path)
        raise ConfigError(f"the download of {source.repo}/{source.filename} has SHA-256 "
                          f"{digest[:16]}..., not {expected[:16]}... ({origin}); deleted it, "
                          "relaunch to download it again")
    log(f"pretrained {name}: {source.repo}/{source.filename} ({os.path.getsize(path) / 1e6:.1f} MB)"
        f" SHA-256 {digest[:16]}... verified against {origin}")
    directory = convert(name, source, path, digest)
    log(f"pretrained {name}: converted once into {directory}")
    return directory


def convert(name: str, source: Source, path: str, digest: str) -> str:
    """Converts the downloaded file into ``cache_root()/<name>-<digest[:16]>`` (written in a
    temporary folder beside it, then renamed: a killed conversion leaves no half cache)."""
    from cnnjax.models import pretrained

    try:
        state = KEYMAPS[source.keymap](pretrained.load_state_dict(path))
        variables = pretrained.convert_torchvision(state, source.arch)
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split())[:300]
        raise ConfigError(f"{path} does not convert to {source.arch} ({reason})") from None
    root = cache_root()
    final = os.path.join(root, f"{name}-{digest[:16]}")
    os.makedirs(root, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f"{name}-", suffix=".tmp", dir=root)
    try:
        checkpoint = os.path.join(work, "checkpoint")
        pretrained.save_pretrained(variables, checkpoint)
        for entry in os.listdir(checkpoint):  # the Orbax files at the top of the folder
            os.rename(os.path.join(checkpoint, entry), os.path.join(work, entry))
        os.rmdir(checkpoint)
        record = {"name": name, "arch": source.arch, "repo": source.repo,
                  "revision": source.revision, "filename": source.filename, "sha256": digest,
                  "files": _tree_digests(work)}
        with open(os.path.join(work, _RECORD), "w") as f:
            json.dump(record, f, indent=2)
        if os.path.isdir(final):  # a conversion of the same file by another launch
            shutil.rmtree(final)
        os.rename(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def verify(directory: str) -> list[str]:
    """The files of a cached conversion that are missing or whose SHA-256 changed since it was
    written ([] = intact)."""
    record = _record(directory)
    if record is None:
        return [_RECORD]
    now = _tree_digests(directory)
    return sorted(f for f, d in record.get("files", {}).items() if now.get(f) != d) + sorted(
        set(now) - set(record.get("files", {})))


def class_names(config, num_classes: int) -> list[str] | None:
    """ImageNet's class names, for a run with 1000 classes that started from ImageNet weights
    (``init.pretrained``) or whose data is named ImageNet (TFDS's ``imagenet2012``, or a
    ``folder:``/``npz:`` path with "imagenet" in it: its synset folders sorted by name are
    torchvision's label order); None otherwise."""
    if num_classes != IMAGENET_CLASSES:
        return None
    init = config.get("init", {})
    if not (init.get("pretrained") or "imagenet" in str(config.data.name).lower()):
        return None
    return imagenet_classes()


def imagenet_classes() -> list[str]:
    """ImageNet-1k's 1000 class names in label order (torchvision's, shipped with cnnjax)."""
    path = os.path.join(os.path.dirname(__file__), "models", "imagenet_classes.txt")
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


# ----------------------------------------------------------------------------- the command


def command(words: list[str]) -> int:
    """``cnnjax weights list | download NAME | verify [NAME]``; returns the exit status."""
    usage = "cnnjax weights list | download NAME | verify [NAME]"
    if not words or words[0] not in ("list", "download", "verify"):
        given = f"unknown weights command {words[0]!r}" if words else "a weights command is missing"
        raise ConfigError(f"{given}; usage: {usage}")
    what, args = words[0], words[1:]
    if what == "list":
        if args:
            raise ConfigError(f"cnnjax weights list takes no argument; usage: {usage}")
        width = max(map(len, names()))
        for name in names():
            if name in SOURCES:
                s = SOURCES[name]
                where = cached(name)
                state = f"cached {where}" if where else "not cached"
                print(f"{name:<{width}}  hf://{s.repo}@{s.revision}/{s.filename}  or {s.url}  "
                      f"[{state}]")
            else:
                print(f"{name:<{width}}  by hand: {_TV}{BY_HAND[name]} (needs torch)")
        print(f"cache: {cache_root()}")
        return 0
    if what == "download":
        if len(args) != 1:
            raise ConfigError(f"cnnjax weights download takes one NAME; usage: {usage}")
        fetch(args[0])
        return 0
    if len(args) > 1:
        raise ConfigError(f"cnnjax weights verify takes at most one NAME; usage: {usage}")
    chosen = [args[0]] if args else sorted(SOURCES)
    for name in chosen:
        source_of(name)
    bad = 0
    for name in chosen:
        directory = cached(name)
        if directory is None:
            if args:
                raise ConfigError(f"pretrained {name} is not cached; cnnjax weights download "
                                  f"{name}")
            continue
        problems = verify(directory)
        bad += bool(problems)
        print(f"{name}: {'ok' if not problems else 'changed: ' + ', '.join(problems)} "
              f"({directory})")
    if bad:
        print(f"error: {bad} cached conversion(s) changed since they were written; delete them "
              "and download again", file=sys.stderr)
        return 2
    return 0
