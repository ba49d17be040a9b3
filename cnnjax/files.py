"""The files of a workdir are written whole or not at all.

Every JSON, CSV and text file that cnnjax writes goes through ``write_atomic``: the content is
written to a temporary file beside the target (named after this process, so that two writers,
such as two sweep array tasks, never share one) and renamed over it, which POSIX makes atomic.
A reader, or a process killed half-way, sees the old file or the new one, never a mix. A
file that cannot be written (a full disk) raises ``errors.WriteError`` naming it, and leaves
the old one in place.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable
from typing import Any

from cnnjax import errors


def sha256_file(path: str) -> str:
    """The SHA-256 of the file at ``path``, hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_atomic(path: str, text: str | bytes) -> None:
    """Replaces the file at ``path`` with ``text`` (or bytes) in one step."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with errors.writing(path):
            with (open(tmp, "wb") if isinstance(text, bytes) else open(tmp, "w", newline="")) as f:
                f.write(text)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str, obj: Any, **kwargs: Any) -> None:
    """``obj`` as indented JSON at ``path``, atomically."""
    write_atomic(path, json.dumps(obj, indent=2, **kwargs))


def write_csv(path: str, rows: Iterable[dict[str, Any]], empty_header: str) -> None:
    """``rows`` as CSV with the union of their keys as columns (``empty_header`` if none)."""
    rows = list(rows)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(dict.fromkeys(k for r in rows for k in r))
                            or [empty_header])
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, out.getvalue())
