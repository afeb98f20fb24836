"""A walkit home: the folder holding one deployment's local state.

Every path inside a home is named here::

    HOME/
      writer.lock     held (flock) by the one process that writes the WAL
      wal/            WAL segments: seg-00000001.wal (open), seg-*.wal.zst (sealed)
      snapshots/      local snapshots, one folder each
      bundles/        bundles being built or kept
      quota/          the ledger of the external calls
      worker.json     the backup worker's heartbeat and counters

Guaranteed: at most one writer per home at a time, across processes; the
lock is released by the kernel when its holder dies, even by ``kill -9``.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from walkit.errors import ConfigError, WALLockedError

__all__ = ["Home", "default_home"]


def default_home() -> Path:
    """``$WALKIT_HOME``, else ``./.walkit``."""
    return Path(os.environ.get("WALKIT_HOME") or ".walkit")


class Home:
    """Paths inside one walkit home, and its writer lock."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_home()
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"walkit home {self.path} exists and is not a folder; pick another --home")
        self._lock_fd: int | None = None

    @property
    def wal_dir(self) -> Path:
        """WAL segments (capture writes them; bundles and restores read them)."""
        return self.path / "wal"

    @property
    def snapshots_dir(self) -> Path:
        """Local snapshots, one folder each (``.tmp-*`` while one is written)."""
        return self.path / "snapshots"

    @property
    def bundles_dir(self) -> Path:
        """Bundles being built or kept (``walkit bundle``, the day's upload)."""
        return self.path / "bundles"

    @property
    def quota_dir(self) -> Path:
        """The quota ledger of the external calls."""
        return self.path / "quota"

    @property
    def worker_state(self) -> Path:
        """``worker.json``: the backup worker's heartbeat and counters."""
        return self.path / "worker.json"

    @property
    def writer_lock(self) -> Path:
        """Held (flock) by the one process writing the WAL."""
        return self.path / "writer.lock"

    def existing(self) -> Home:
        """This home if its folder exists; ConfigError (exit 2) naming it otherwise, so that a
        command reading a home never reports a mistyped one as empty."""
        if not self.path.is_dir():
            raise ConfigError(
                f"no walkit home at {self.path}: give the right --home (or $WALKIT_HOME); "
                "`walkit capture` or `walkit snapshot` creates one"
            )
        return self

    def create(self) -> Home:
        """Make the folders (a new home is fine; an existing one is kept as it is)."""
        try:
            self.wal_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create walkit home {self.path}: {exc.strerror}") from None
        return self

    def lock(self) -> Home:
        """Take the writer lock or raise WALLockedError naming the holder."""
        self.create()
        path = self.writer_lock
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise WALLockedError(
                f"{self.path} is already being written by {holder}; stop that walkit first, or use another --home"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"walkit pid {os.getpid()}\n".encode())
        self._lock_fd = fd
        return self

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Home:
        return self.lock()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.unlock()

    def __repr__(self) -> str:
        return f"Home({str(self.path)!r})"
