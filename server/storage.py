"""Atomic files: a reader (or a restarted server) sees the old version or the new one, never a torn one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json_atomic(path: Path, document: Any, strict: bool = True) -> None:
    """Write ``document`` as JSON; ``strict`` refuses NaN and infinity (ValueError), which JSON has no words for.

    Files for people and other tools (report.json) are strict; the server's own checkpoint index is not, so a
    strategy state holding a NaN can still be saved and read back by Python."""
    write_atomic(path, (json.dumps(document, indent=2, allow_nan=not strict) + "\n").encode())
