"""A cheap identity of a dataset, recorded by a run and checked when it resumes.

``of(cfg)`` fingerprints the dataset that config section ``data`` names, without reading its
images (except where asked to):

* ``npz:FILE``: the file's size and the SHA-256 of its bytes, streamed (about 0.1 s for the
  55 MB of a Fashion-MNIST-sized file on one core; the page cache then serves ``np.load``).
* ``folder:DIR``: the image count, their total size, and hashes of the manifest of the
  image files the loader reads (relative paths; then with sizes; then with modification
  times): one ``stat`` per file. With ``data.fingerprint=content``, the SHA-256 of every
  file's bytes instead of the modification times (reads the whole folder).
* a TFDS name: its full name and version, each split's example count, byte count and shard
  lengths, and a hash of the download checksums that the builder records, from
  ``dataset_info.json`` (no record is read).
* ``digits``: a constant; it is made by a builder that ships with cnnjax.

``changes(old, new)`` says in words what differs between two fingerprints ('' if nothing),
most telling first; ``describe(fingerprint)`` names one in a few words, for messages.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from cnnjax.data import local
from cnnjax.files import sha256_file

# The built-in datasets: identical wherever cnnjax is installed (the builder is the data).
BUILTIN = {"digits": "scikit-learn load_digits, stratified 75/25 split (random_state=0), "
                     "builder 1.0.0"}
# Keys that say where the data is, not what it is: a moved file is the same data.
_WHERE = ("name",)


def of(cfg) -> dict[str, Any] | None:
    """The fingerprint of the dataset of config section ``data`` (``name``, ``data_dir``,
    ``fingerprint``); None when it cannot be opened (the loader then reports why)."""
    kind, sep, path = cfg.name.partition(":")
    try:
        if sep and kind == "npz":
            return _npz(os.path.expanduser(path), cfg.name)
        if sep and kind == "folder":
            content = cfg.get("fingerprint", "manifest") == "content"
            return _folder(os.path.expanduser(path), cfg.name, content)
        if cfg.name in BUILTIN:
            return {"name": cfg.name, "source": "builtin", "identity": BUILTIN[cfg.name]}
        return _tfds(cfg.name, cfg.data_dir)
    except OSError:  # missing or unreadable: opening the dataset says so, in one line
        return None


def _npz(path: str, name: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    return {"name": name, "source": "npz", "bytes": os.path.getsize(path),
            "sha256": sha256_file(path)}


def image_files(root: str) -> list[str]:
    """The image files of folder ``root`` that ``local.open_folder`` reads, sorted."""
    splits = [os.path.join(root, s) for s in ("train", "test")]
    if all(os.path.isdir(d) for d in splits):
        return [p for d in splits for p in local.listing(d)[1]]
    return local.listing(root)[1]


def _folder(root: str, name: str, content: bool) -> dict[str, Any] | None:
    if not os.path.isdir(root):
        return None
    paths = image_files(root)
    start = len(os.path.join(root, ""))  # every path is root/...: the rest is relative
    rel, sizes, last = [], [], []
    for path in paths:
        st = os.stat(path)
        rel.append(path[start:])
        sizes.append(st.st_size)
        last.append(sha256_file(path) if content else st.st_mtime_ns)
    # One hash per layer over a joined manifest: per-file hash updates would cost more than
    # the stat calls.
    names = "\0".join(rel)
    with_sizes = "\0".join(f"{r}\0{n}" for r, n in zip(rel, sizes, strict=True))
    with_last = "\0".join(f"{r}\0{n}\0{m}" for r, n, m in zip(rel, sizes, last, strict=True))
    total = sum(sizes)
    return {"name": name, "source": "folder", "images": len(paths), "bytes": total,
            "names": _digest(names), "sizes": _digest(with_sizes),
            "content" if content else "mtimes": _digest(with_last)}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _tfds(name: str, data_dir: str) -> dict[str, Any] | None:
    import tensorflow_datasets as tfds  # imported by the loader anyway

    from cnnjax.data.sources import _quiet, resolve_data_dir

    try:
        with _quiet():
            info = tfds.builder(name, data_dir=resolve_data_dir(data_dir)).info
    except Exception:  # noqa: BLE001 - an unknown or malformed name: opening it says so
        return None
    splits = {k: {"examples": int(s.num_examples), "bytes": int(s.num_bytes),
                  "shards": [int(n) for n in s.shard_lengths]}
              for k, s in sorted(info.splits.items())}
    checksums = sorted(f"{url} {c.sha256} {c.size}"
                       for url, c in info.as_proto.download_checksums.items())
    return {"name": name, "source": "tfds", "dataset": info.full_name,
            "version": str(info.version), "splits": splits,
            "downloads": hashlib.sha256("\n".join(checksums).encode()).hexdigest()
            if checksums else ""}


def same(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    """Whether two fingerprints identify the same data (where it lives aside)."""
    return not changes(old, new)


def changes(old: dict[str, Any] | None, new: dict[str, Any] | None) -> str:
    """What differs from fingerprint ``old`` to ``new``, in words ('' if nothing or unknown)."""
    if old is None or new is None:
        return ""
    if old.get("source") != new.get("source"):
        return f"{describe(old)} -> {describe(new)}"
    try:
        return _changes(old, new)
    except (KeyError, TypeError, AttributeError):  # a record of another shape: compare it whole
        rest = sorted(k for k in {*old, *new} - set(_WHERE) if old.get(k) != new.get(k))
        return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in rest)


def _changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    found = []
    source = new["source"]
    if source == "npz":
        if old["bytes"] != new["bytes"]:
            found.append(f"file size {old['bytes']:,} -> {new['bytes']:,} bytes")
        if old["sha256"] != new["sha256"]:
            found.append(f"file hash sha256 {old['sha256'][:12]} -> {new['sha256'][:12]}")
    elif source == "folder":
        if old["images"] != new["images"]:
            found.append(f"{old['images']:,} -> {new['images']:,} images")
        elif old["names"] != new["names"]:
            found.append(f"the same number of images ({new['images']:,}) under other names")
        elif old["sizes"] != new["sizes"]:
            found.append("image files of other sizes under the same names")
        for key, what in (("mtimes", "image files modified (other modification times)"),
                          ("content", "image content changed")):
            if not found and key in old and key in new and old[key] != new[key]:
                found.append(what)
        if old["bytes"] != new["bytes"]:
            found.append(f"{old['bytes']:,} -> {new['bytes']:,} bytes")
    elif source == "tfds":
        if old["dataset"] != new["dataset"] and old["version"] == new["version"]:
            found.append(f"dataset {old['dataset']} -> {new['dataset']}")
        if old["version"] != new["version"]:
            found.append(f"version {old['version']} -> {new['version']}")
        if old["splits"] != new["splits"]:
            found.append(f"splits {_splits(old)} -> {_splits(new)}")
        if old["downloads"] != new["downloads"]:
            found.append("other download checksums")
    elif source != "builtin" or old != new:
        raise KeyError(source)  # compared whole by the caller
    return ", ".join(found)


def _splits(fp: dict[str, Any]) -> str:
    return ",".join(f"{k}={v['examples']}" for k, v in fp["splits"].items()) or "none"


def describe(fp: dict[str, Any] | None) -> str:
    """A few words that name fingerprint ``fp`` (``npz 54,880,394 bytes sha256 1a2b3c4d5e6f``)."""
    if fp is None:
        return "unknown data"
    source = fp.get("source")
    if source == "npz":
        return f"npz {fp['bytes']:,} bytes sha256 {fp['sha256'][:12]}"
    if source == "folder":
        last = fp.get("content") or fp.get("mtimes") or ""
        return f"folder of {fp['images']:,} images, {fp['bytes']:,} bytes, manifest {last[:12]}"
    if source == "tfds":
        return f"TFDS {fp['dataset']} ({_splits(fp)})"
    if source == "builtin":
        return f"{fp['name']} (built in)"
    return str(fp)
