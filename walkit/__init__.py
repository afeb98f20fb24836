"""walkit: MongoDB backups when the off-site service allows one call per day.

The public API is what ``__all__`` lists; everything else is private and may
change.  See README.md for the strategy and the commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from walkit._version import __version__
from walkit.clock import Clock, SimulatedClock, SystemClock
from walkit.compat import BackgroundCapture, create_wal_writer
from walkit.errors import (
    BundleError,
    ConfigError,
    NotAReplicaSetError,
    ProviderError,
    ProviderUnavailableError,
    QuotaError,
    QuotaExceededError,
    RateLimitError,
    RestoreError,
    SandboxError,
    ServerError,
    SnapshotError,
    StorageLimitError,
    WALCorruptError,
    WALError,
    WalkitError,
    WALLockedError,
)
from walkit.home import Home
from walkit.mongo import connect, describe_error, require_replica_set
from walkit.offsite.bundle import Bundle, Position, build_bundle, unpack_bundle, verify_bundle
from walkit.offsite.external import OffsitePlan, plan_external, restore_from_external
from walkit.offsite.quota import QuotaLedger
from walkit.offsite.retention import PruneReport, prune
from walkit.offsite.status import status as backup_status
from walkit.offsite.upload import Policy, UploadResult, upload
from walkit.providers import (
    ExternalBackupProvider,
    FileSystemBackupProvider,
    MockExternalBackupProvider,
    ObjectStoreBackupProvider,
    make_provider,
)
from walkit.restore.local import RestoreResult, metadata_at, restore, state_at
from walkit.restore.plan import RestorePlan, Target, plan_restore
from walkit.restore.snapshot import SnapshotInfo, list_snapshots, take_snapshot
from walkit.service.api import ApiContext, ApiServer, create_app
from walkit.service.config import Config, load_config
from walkit.service.worker import BackupService, create_backup_service
from walkit.wal.capture import CaptureStats, ChangeCapture
from walkit.wal.events import ChangeEvent
from walkit.wal.format import Report, read_records, verify
from walkit.wal.writer import WALWriter

__all__ = [
    "__version__",
    "sandbox",
    "Clock",
    "SystemClock",
    "SimulatedClock",
    "WalkitError",
    "ConfigError",
    "ServerError",
    "NotAReplicaSetError",
    "SandboxError",
    "WALError",
    "WALLockedError",
    "WALCorruptError",
    "SnapshotError",
    "RestoreError",
    "QuotaError",
    "QuotaExceededError",
    "Home",
    "ChangeCapture",
    "CaptureStats",
    "ChangeEvent",
    "WALWriter",
    "read_records",
    "verify",
    "Report",
    "create_wal_writer",
    "BackgroundCapture",
    "connect",
    "describe_error",
    "require_replica_set",
    "take_snapshot",
    "list_snapshots",
    "SnapshotInfo",
    "Target",
    "RestorePlan",
    "plan_restore",
    "restore",
    "state_at",
    "metadata_at",
    "RestoreResult",
    "QuotaLedger",
    "BundleError",
    "ProviderError",
    "ProviderUnavailableError",
    "RateLimitError",
    "StorageLimitError",
    "Bundle",
    "Position",
    "build_bundle",
    "verify_bundle",
    "unpack_bundle",
    "ExternalBackupProvider",
    "MockExternalBackupProvider",
    "FileSystemBackupProvider",
    "ObjectStoreBackupProvider",
    "make_provider",
    "upload",
    "Policy",
    "UploadResult",
    "plan_external",
    "restore_from_external",
    "OffsitePlan",
    "prune",
    "PruneReport",
    "backup_status",
    "BackupService",
    "create_backup_service",
    "Config",
    "load_config",
    "ApiContext",
    "ApiServer",
    "create_app",
]

if TYPE_CHECKING:
    from walkit import sandbox


def __getattr__(name: str) -> object:
    # The sandbox needs the [sandbox] extra (mongomock-ng), the lab's modules pandas and matplotlib:
    # each is imported on first use.
    if name in ("sandbox", "simulate", "plots", "widgets"):  # the notebooks' modules, on first use
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'walkit' has no attribute {name!r}")
