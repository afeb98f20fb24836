"""The walkit exception tree.

Every error walkit raises on purpose is a :class:`WalkitError`; the CLI turns
it into one clear line and a non-zero exit code, never a traceback::

    WalkitError                  base; ``exit_code`` says how the CLI exits
    ├── ConfigError              a bad setting or argument (exit 2)
    ├── ServerError              the MongoDB deployment cannot do what is needed
    │   └── NotAReplicaSetError  change streams need a replica set (exit 2)
    ├── SandboxError             the embedded sandbox could not start or serve
    ├── WALError                 the write-ahead log cannot be used as asked
    │   ├── WALLockedError       another process writes this home (exit 2)
    │   └── WALCorruptError      a damaged segment: file, offset, reason
    ├── SnapshotError            a snapshot is missing, damaged or cannot be taken
    ├── RestoreError             no restore is possible as asked (names the restorable window)
    ├── QuotaError               the quota ledger cannot be read or locked; no call is made
    │   └── QuotaExceededError   the window's one call is spent: next_allowed says when (exit 3)
    ├── BundleError              a bundle cannot be built, read, decrypted or trusted
    └── ProviderError            the external service failed a call; ``sent`` says whether
        │                        anything may have reached it (False: the quota is not spent)
        ├── ProviderUnavailableError  it could not be reached at all (sent is False)
        ├── RateLimitError       it refused a second call inside its 24 h window
        └── StorageLimitError    the bundle is larger than it accepts or has room for

Guaranteed: each message names what was wrong and what to do about it.
"""

from __future__ import annotations

from datetime import datetime

__all__ = [
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
    "BundleError",
    "ProviderError",
    "ProviderUnavailableError",
    "RateLimitError",
    "StorageLimitError",
]


class WalkitError(Exception):
    """Base of every error walkit raises on purpose."""

    exit_code: int = 1


class ConfigError(WalkitError):
    """A setting, argument or environment variable has a bad value."""

    exit_code = 2


class ServerError(WalkitError):
    """The MongoDB deployment cannot do what walkit needs."""


class NotAReplicaSetError(ServerError):
    """The server is standalone, so it has no change streams."""

    exit_code = 2


class SandboxError(WalkitError):
    """The embedded sandbox server could not start or serve."""


class WALError(WalkitError):
    """The write-ahead log cannot be used as asked."""


class WALLockedError(WALError):
    """Another process holds this home's writer lock."""

    exit_code = 2


class WALCorruptError(WALError):
    """A WAL segment is damaged; names the file, the byte offset and why."""

    def __init__(self, file: str, offset: int, reason: str, advice: str = "") -> None:
        self.file = file
        self.offset = offset
        self.reason = reason
        text = f"{file} at byte {offset}: {reason}"
        super().__init__(f"{text}; {advice}" if advice else text)


class SnapshotError(WalkitError):
    """A snapshot cannot be taken, or a stored one is missing or damaged."""


class RestoreError(WalkitError):
    """The asked-for restore cannot be done; says why and what can be."""


class QuotaError(WalkitError):
    """The quota ledger cannot be read or locked; no call is made."""


class QuotaExceededError(QuotaError):
    """This window's external call is spent (or being made); says when the next is allowed."""

    exit_code = 3

    def __init__(self, message: str, next_allowed: datetime | None) -> None:
        super().__init__(message)
        self.next_allowed = next_allowed


class BundleError(WalkitError):
    """A bundle cannot be built, or a stored one is damaged, foreign or cannot be decrypted."""


class ProviderError(WalkitError):
    """The external backup service failed a call.

    ``sent`` is False only when nothing can have reached the service (so the
    day's call is not spent); when in doubt it is True.
    """

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class ProviderUnavailableError(ProviderError):
    """The service could not be reached at all; nothing was sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message, sent=False)


class RateLimitError(ProviderError):
    """The service refused a call inside its one-call-per-24-hours window."""

    exit_code = 3


class StorageLimitError(ProviderError):
    """The upload is larger than the service accepts or has room for."""
