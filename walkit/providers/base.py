"""The external backup service's interface, as the original design had it.

``upload(data, metadata) -> ref``, ``download(ref) -> bytes`` and
``health_check() -> bool`` keep the seed's names (``healthCheck`` works too);
for bundles too large for memory, ``upload`` also takes an open binary file
or a path, and ``download_to(ref, file)`` streams.  ``list()`` says what the
service holds (needed to restore after losing the whole site) and
``limits()`` what it will accept, so walkit never spends the day's call on an
upload that would be refused.

Every failure is a :class:`~walkit.errors.ProviderError`; its ``sent`` is
False only when nothing can have reached the service.
"""

from __future__ import annotations

import io
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Union

__all__ = ["ExternalBackupProvider", "Limits", "StoredBackup", "UploadData", "open_upload", "check_download"]

#: What ``upload`` accepts: the bytes, a readable binary file, or a path to one.
UploadData = Union[bytes, bytearray, memoryview, BinaryIO, "os.PathLike[str]", str]
CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What the service accepts now (None: no limit known)."""

    max_upload_bytes: int | None = None
    free_bytes: int | None = None

    def refusal(self, size: int) -> str | None:
        """Why an upload of ``size`` bytes would be refused, or None."""
        if self.max_upload_bytes is not None and size > self.max_upload_bytes:
            return f"{size:,} bytes is more than the {self.max_upload_bytes:,} the service accepts in one upload"
        if self.free_bytes is not None and size > self.free_bytes:
            return f"{size:,} bytes is more than the {self.free_bytes:,} bytes of storage the service has left"
        return None


@dataclass(frozen=True)
class StoredBackup:
    """One upload the service holds."""

    ref: str
    size: int
    uploaded_at: datetime
    metadata: dict[str, Any] = field(default_factory=dict)


@contextmanager
def open_upload(data: UploadData) -> Iterator[tuple[BinaryIO, int]]:
    """``data`` as a readable binary stream positioned at its start, and its size in bytes."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        yield io.BytesIO(raw), len(raw)
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data)
        with path.open("rb") as f:
            yield f, path.stat().st_size
    else:
        start = data.tell()
        size = data.seek(0, io.SEEK_END) - start
        data.seek(start)
        yield data, size


class ExternalBackupProvider(ABC):
    """One external backup service.  Implementations must be safe to use from
    several processes at once (they may hold state in a folder)."""

    #: A short name for messages and ``walkit status``.
    name: str = "provider"

    @abstractmethod
    def upload(self, data: UploadData, metadata: dict[str, Any]) -> str:
        """Store ``data`` with ``metadata`` (JSON-able, stored verbatim); return its ref."""

    @abstractmethod
    def download_to(self, ref: str, out: BinaryIO) -> int:
        """Write the stored bytes of ``ref`` to ``out``; return how many.  ProviderError if unknown."""

    @abstractmethod
    def list(self) -> list[StoredBackup]:
        """Everything stored, oldest first."""

    @abstractmethod
    def health_check(self) -> bool:
        """True when the service answers."""

    def limits(self) -> Limits:
        """What the next upload may be (default: no known limit)."""
        return Limits()

    def download(self, ref: str) -> bytes:
        """The stored bytes of ``ref`` (the seed's API; prefer ``download_to`` for large ones)."""
        buf = io.BytesIO()
        self.download_to(ref, buf)
        return buf.getvalue()

    def healthCheck(self) -> bool:  # noqa: N802 - the original design's name
        return self.health_check()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_download(where: str, record: dict[str, Any], size: int, sha256: str) -> None:
    """ProviderError unless the downloaded ``size`` and ``sha256`` are what ``record`` says was uploaded."""
    from walkit.errors import ProviderError

    if size != record["size"] or sha256 != record["sha256"]:
        raise ProviderError(
            f"{where} is damaged: {size:,} bytes with sha256 {sha256[:12]}..., but "
            f"{record['size']:,} bytes with sha256 {record['sha256'][:12]}... were uploaded; do not restore from it"
        )
