"""File-system steps every stage shares: fsync a folder, append an fsynced JSON line, write a file durably.

Guaranteed: when these return, what they wrote is on disk (fsynced), a new
file's folder entry too.  Not guaranteed: atomicity across several calls;
callers that need all-or-nothing write under a temporary name and rename.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["append_json_line", "fsync_dir", "write_synced"]


def append_json_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it (and the folder when the file is new).

    A torn last line (a crash while appending) is cut off first, so the log stays
    readable; only call with the log's lock held.
    """
    new = not path.exists()
    with path.open("a+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end and os.pread(f.fileno(), 1, end - 1) != b"\n":
            f.seek(0)
            f.truncate(f.read().rfind(b"\n") + 1)
        f.write(json.dumps(record, default=str).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    if new:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (created, renamed, removed files) durable; given a file, its data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` and fsync it."""
    with path.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
