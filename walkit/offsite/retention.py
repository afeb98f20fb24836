"""Local retention: remove old WAL segments and snapshots, never what is not safe off-site.

``prune(home, ledger, wal_days=7, snapshot_days=30)`` (the original's
``WAL_RETENTION_DAYS`` and ``SNAPSHOT_RETENTION_DAYS``) removes:

- a **snapshot** consistent before ``now - snapshot_days``, unless it is the
  newest, or the *base* (the newest snapshot consistent before
  ``now - wal_days``: the one a local restore at the start of the WAL window
  begins from), or its instant is not yet restorable from the external
  bundles (nothing off-site yet, or changes up to it not uploaded); a
  snapshot older than the first one off-site never will be, so it goes by
  age alone (else it would pin the WAL it replays from forever);
- a sealed, compressed **WAL segment** whose newest record is older than
  ``now - wal_days``, whose events are all inside a successful upload, and
  which ends before the oldest snapshot kept began its scan (so every kept
  snapshot keeps the WAL it replays from).

Guaranteed: every instant from ``now - wal_days`` on that was restorable
locally stays restorable; nothing that is not off-site is removed; the open
segment and segments still being compressed are never touched.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from walkit.clock import Clock
from walkit.home import Home
from walkit.offsite.quota import QuotaLedger
from walkit.offsite.upload import position_after, uploaded_calls
from walkit.providers.base import ExternalBackupProvider
from walkit.restore.snapshot import SnapshotInfo, list_snapshots
from walkit.wal.format import Report, list_segments, summarize

__all__ = ["prune", "PruneReport"]


@dataclass
class PruneReport:
    """What ``prune`` removed (or would remove, with ``dry_run``) and why the rest stays."""

    snapshots: list[str] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    bytes: int = 0
    kept: list[str] = field(default_factory=list)  # notable reasons something old was kept

    def as_dict(self) -> dict[str, Any]:
        return {"snapshots": self.snapshots, "segments": self.segments, "bytes": self.bytes, "kept": self.kept}


def _size(path: Any) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def prune(
    home: Home,
    ledger: QuotaLedger,
    *,
    wal_days: float = 7,
    snapshot_days: float = 30,
    provider: ExternalBackupProvider | None = None,
    clock: Clock | None = None,
    dry_run: bool = False,
) -> PruneReport:
    """Apply the retention rules of the module docstring."""
    clock = clock or ledger.clock
    now = clock.now()
    report = PruneReport()
    wal_cut, snap_cut = now - timedelta(days=wal_days), now - timedelta(days=snapshot_days)
    calls = uploaded_calls(ledger, provider)
    uploaded, _ = position_after(calls)
    uploaded_to = max((datetime.fromisoformat(c.what["last_wall"]) for c in calls if c.what.get("last_wall")), default=None)
    first_offsite = min((datetime.fromisoformat(c.what["snapshot"]["end_wall"]) for c in calls if c.what.get("snapshot")), default=None)

    snaps = list_snapshots(home)
    base = max((s for s in snaps if s.end_wall <= wal_cut), key=lambda s: s.end, default=None)

    def offsite(s: SnapshotInfo) -> bool:
        """Its instant is restorable off-site, or never will be (it is older than the first
        snapshot off-site: the off-site chain starts there, so keeping it protects nothing)."""
        if first_offsite is None:
            return False
        return s.end_wall < first_offsite or (uploaded_to is not None and s.end_wall <= uploaded_to)

    keep: list[SnapshotInfo] = []
    for s in snaps:
        if s.end_wall >= snap_cut or s is snaps[-1] or s is base:
            keep.append(s)
        elif not offsite(s):
            keep.append(s)
            report.kept.append(f"snapshot {s.id}: its instant is not restorable off-site yet")
        else:
            report.snapshots.append(s.id)
            report.bytes += _size(s.path)
            if not dry_run:
                shutil.rmtree(s.path, ignore_errors=True)

    oldest = min(keep, key=lambda s: s.start) if keep else None
    limit = (oldest.wal_seq_before or 0) if oldest is not None else uploaded.last_seq
    listing = list_segments(home.wal_dir).segments
    for seg in listing[:-1]:  # never the newest
        if not seg.sealed or not seg.path.name.endswith(".zst"):
            break  # only ever a prefix of the WAL goes
        summary = summarize(seg, Report())
        last_seq, last_time = summary.last_seq, summary.last_time
        if last_seq is None or last_time is None:
            break
        if last_time >= wal_cut:
            break
        if last_seq > uploaded.last_seq:
            report.kept.append(f"{seg.name}: not all of it is off-site yet (uploaded up to seq {uploaded.last_seq})")
            break
        if last_seq >= limit:
            break  # the oldest snapshot kept replays from here
        report.segments.append(seg.name)
        report.bytes += seg.path.stat().st_size
        if not dry_run:
            seg.path.unlink()
    return report
