"""External backup providers: where the one daily bundle goes.

Three implementations of :class:`ExternalBackupProvider`, with the seed's names:

* :class:`MockExternalBackupProvider` - the "Valerix" simulation (latency, failures, a
  storage limit and its own one-upload-per-24-h limit), in memory or in a folder;
* :class:`FileSystemBackupProvider` - files in a local folder, optionally compressed,
  pruned to ``max_backups`` without breaking restore chains;
* :class:`ObjectStoreBackupProvider` - S3 / GCS / Azure / ``file://`` / ``memory://``
  through fsspec (``pip install 'walkit[objectstore]'``).

:func:`make_provider` builds one from a kind and a location (as the CLI and the
configuration name them).  Every failure is a :class:`~walkit.errors.ProviderError`
(or a :class:`~walkit.errors.ConfigError` for bad settings), never a bare exception.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from walkit.clock import Clock
from walkit.errors import ConfigError
from walkit.providers.base import ExternalBackupProvider, Limits, StoredBackup, UploadData, open_upload
from walkit.providers.filesystem import FileSystemBackupProvider
from walkit.providers.mock import OUTCOMES, MockExternalBackupProvider
from walkit.providers.objectstore import ObjectStoreBackupProvider

__all__ = [
    "ExternalBackupProvider",
    "Limits",
    "StoredBackup",
    "UploadData",
    "open_upload",
    "MockExternalBackupProvider",
    "FileSystemBackupProvider",
    "ObjectStoreBackupProvider",
    "OUTCOMES",
    "PROVIDER_KINDS",
    "make_provider",
]

#: The kinds :func:`make_provider` knows, and what its ``location`` means for each.
PROVIDER_KINDS: dict[str, str] = {
    "mock": "state_dir (optional; without it the mock lives in memory)",
    "filesystem": "backup_dir (required)",
    "objectstore": "url, e.g. s3://bucket/prefix (required)",
}


def make_provider(
    kind: str, location: str | os.PathLike[str] | None = None, *, clock: Clock | None = None, **options: Any
) -> ExternalBackupProvider:
    """The provider of ``kind`` at ``location`` with ``options`` (the class's keyword arguments).

    ConfigError for an unknown kind, a missing required location, or an option the
    provider does not take; the message names what is allowed.
    """
    allowed = ", ".join(f"{k} (location: {v})" for k, v in PROVIDER_KINDS.items())
    if not isinstance(kind, str) or kind.strip().lower() not in PROVIDER_KINDS:
        raise ConfigError(f"unknown backup provider kind {kind!r}; use one of: {allowed}")
    kind = kind.strip().lower()
    if kind != "mock" and not location:
        raise ConfigError(f"the {kind} provider needs a location: {PROVIDER_KINDS[kind]}")
    for key in ("state_dir", "backup_dir", "backupDir", "url"):
        if key in options:
            raise ConfigError(f"pass the {kind} provider's {key} as its location, not as an option")
    cls: type[ExternalBackupProvider]
    args: tuple[Any, ...]
    if kind == "mock":
        cls, args, kwargs = MockExternalBackupProvider, (), {"state_dir": location, "clock": clock, **options}
    elif kind == "filesystem":
        cls, args, kwargs = FileSystemBackupProvider, (location,), {"clock": clock, **options}
    else:
        cls, args, kwargs = ObjectStoreBackupProvider, (location,), {"clock": clock, **options}
    try:
        inspect.signature(cls).bind(*args, **kwargs)
    except TypeError as exc:
        params = [p for p in inspect.signature(cls).parameters if p not in ("clock", "state_dir", "backup_dir", "url")]
        raise ConfigError(f"bad options for the {kind} provider ({exc}); it takes: {', '.join(params)}") from None
    return cls(*args, **kwargs)
