"""The original (TypeScript) design's names, kept working in walkit.

``createWALWriter({database, collections, excludeCollections})`` becomes
:func:`create_wal_writer`; its ``start()`` runs capture in a background
thread and ``stop()`` flushes everything and waits for it.  The URI comes
from ``uri=`` or ``$MONGODB_URI``, the home from ``home=`` or
``$WALKIT_HOME``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from walkit.errors import ConfigError
from walkit.wal.capture import CaptureStats, ChangeCapture

__all__ = ["create_wal_writer", "BackgroundCapture"]


class BackgroundCapture:
    """A :class:`ChangeCapture` running in a thread of this process."""

    def __init__(self, capture: ChangeCapture) -> None:
        self.capture = capture
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> BackgroundCapture:
        if self._thread is not None:
            raise ConfigError("this WAL writer is already started")

        def run() -> None:
            try:
                self.capture.run()
            except BaseException as exc:  # handed to stop(), never lost
                self._error = exc

        self._thread = threading.Thread(target=run, name="walkit-capture", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> CaptureStats:
        """Flush, stop and return the run's stats; re-raises what stopped capture."""
        self.capture.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._error is not None:
            raise self._error
        return self.capture.stats

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def create_wal_writer(
    *,
    database: str | None = None,
    collections: Sequence[str] | None = None,
    exclude_collections: Sequence[str] | None = None,
    uri: str | None = None,
    home: str | Path | None = None,
) -> BackgroundCapture:
    """Capture changes into the WAL in the background, as the original ``createWALWriter``."""
    uri = uri or os.environ.get("MONGODB_URI")
    if not uri:
        raise ConfigError("create_wal_writer needs uri= or $MONGODB_URI")
    return BackgroundCapture(
        ChangeCapture(uri, home, database=database, collections=collections, exclude_collections=exclude_collections)
    )
