"""walkit: MongoDB backups when the off-site service allows one call per day.

The public API is what ``__all__`` lists; everything else is private and may
change.  See README.md for the strategy and the commands.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING

from .api import ApiContext, ApiServer, create_app
from .bundle import Bundle, Position, build_bundle, unpack_bundle, verify_bundle
from .capture import CaptureStats, ChangeCapture
from .clock import Clock, SimulatedClock, SystemClock
from .compat import BackgroundCapture, create_wal_writer
from .config import Config, load_config
from .errors import (
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
from .events import ChangeEvent
from .home import Home
from .mongo import connect, describe_error, require_replica_set
from .offsite import OffsitePlan, plan_external, restore_from_external
from .plan import RestorePlan, Target, plan_restore
from .providers import (
    ExternalBackupProvider,
    FileSystemBackupProvider,
    MockExternalBackupProvider,
    ObjectStoreBackupProvider,
    make_provider,
)
from .quota import QuotaLedger
from .restore import RestoreResult, metadata_at, restore, state_at
from .retention import PruneReport, prune
from .service import BackupService, create_backup_service
from .snapshot import SnapshotInfo, list_snapshots, take_snapshot
from .status import status as backup_status
from .upload import Policy, UploadResult, upload
from .wal import Report, read_records, verify
from .walwriter import WALWriter

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
    from . import sandbox


def __getattr__(name: str) -> object:
    # The sandbox needs the [sandbox] extra (mongomock-ng): import it on first use.
    if name == "sandbox":
        import importlib

        return importlib.import_module(".sandbox", __name__)
    raise AttributeError(f"module 'walkit' has no attribute {name!r}")
