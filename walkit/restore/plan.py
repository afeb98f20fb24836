"""Planning a point-in-time restore: which snapshot, which WAL range (a pure function).

The WAL is a series of *runs*: stretches with every change in them, split by
gap markers (history lost).  A restore target is an instant (``at``), the
state after an event (``seq``) or just before one (``before_seq``); it is
resolved against the WAL into a :class:`Cut`: the events included, never
splitting a transaction (its events share one clusterTime).

A snapshot can serve a cut when both lie in the same run, the run covers the
snapshot's start (so every change after it is in the WAL), and the snapshot
ended before the cut (everything its fuzzy scan saw is replayed too).  The
newest such snapshot wins (the shortest replay).  :func:`plan_restore` does
no I/O: it reads the manifests' and the WAL's summaries it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from bson.timestamp import Timestamp

from walkit.clock import as_utc
from walkit.errors import RestoreError
from walkit.restore.snapshot import SnapshotInfo

__all__ = ["Target", "Gap", "Run", "Cut", "RestorePlan", "plan_restore"]


@dataclass(frozen=True)
class Target:
    """What to restore: ``kind`` is "at" (value: datetime), "seq" or "before_seq" (value: int)."""

    kind: str
    value: datetime | int

    def __str__(self) -> str:
        if self.kind == "at":
            assert isinstance(self.value, datetime)
            return f"the state at {self.value.isoformat()}"
        return f"the state after event {self.value}" if self.kind == "seq" else f"the state just before event {self.value}"


@dataclass(frozen=True)
class Gap:
    """A gap marker: history lost between the run before it and the run after it."""

    seq: int
    wall: datetime | None
    reason: str


@dataclass(frozen=True)
class Run:
    """A stretch of the WAL without gaps: every change after ``start_ct`` up to ``end_ct`` is in it."""

    start_ct: Timestamp
    start_wall: datetime | None
    end_ct: Timestamp
    end_wall: datetime | None
    first_seq: int | None = None
    last_seq: int | None = None
    gap_before: Gap | None = None
    gap_after: Gap | None = None

    def holds(self, ct: Timestamp) -> bool:
        return self.start_ct <= ct <= self.end_ct


@dataclass(frozen=True)
class Cut:
    """The events a target includes: every event with ``seq <= last_seq`` in ``run``.

    ``next_ct`` is the clusterTime of the first event left out (None: none is).
    """

    run: Run
    last_seq: int | None
    next_ct: Timestamp | None


@dataclass
class RestorePlan:
    """What a restore will do; ``describe()`` is what ``--dry-run`` prints."""

    target: Target
    snapshot: SnapshotInfo
    from_ct: Timestamp  # replay events with clusterTime >= this ...
    to_seq: int | None  # ... up to and including this seq (None: no events)
    run: Run
    collections: list[str] = field(default_factory=list)
    events: int | None = None  # how many events the replay applies (counted by the caller)
    database: str | None = None  # the database restored (None: every database)

    def describe(self) -> str:
        s = self.snapshot
        lines = [
            f"restore {self.target}",
            f"  snapshot   {s.id}: {s.documents} documents in {len(s.collections)} collections, consistent from {s.end_wall.isoformat()}",
            f"  replay     WAL events with clusterTime >= {self.from_ct.time}.{self.from_ct.inc}"
            + (f", up to seq {self.to_seq}" if self.to_seq is not None else ", none (the snapshot alone)"),
            "  gaps       none in range (a plan never crosses one)",
        ]
        if self.events is not None:
            lines.insert(3, f"  events     {self.events} to replay")
        scope = f"database {self.database}" if self.database else "every database"
        lines.append(f"  scope      {scope}" + (f", collections {', '.join(self.collections)}" if self.collections else ""))
        return "\n".join(lines)


def _serves(run: Run, snap: SnapshotInfo) -> bool:
    """Whether this run of the WAL covers the snapshot: it holds the scan's start and end, and the
    snapshot was not taken before the gap that began the run (a restarted server's cluster time
    may even repeat, so the clusterTimes alone cannot tell)."""
    if not run.holds(snap.start) or snap.end > run.end_ct:
        return False
    gap = run.gap_before
    return gap is None or gap.wall is None or as_utc(snap.end_wall) >= as_utc(gap.wall)


def _when(wall: datetime | None, ct: Timestamp) -> str:
    return wall.isoformat() if wall is not None else f"clusterTime {ct.time}.{ct.inc}"


def windows(snapshots: list[SnapshotInfo], runs: list[Run]) -> list[tuple[datetime | None, datetime | None, Run]]:
    """For each run that a snapshot can serve: (earliest restorable instant, latest, run)."""
    out: list[tuple[datetime | None, datetime | None, Run]] = []
    for run in runs:
        usable = [s for s in snapshots if _serves(run, s)]
        if usable:
            start = min(s.end_wall for s in usable)
            end = run.end_wall if run.end_wall is None or run.end_wall >= start else start  # a snapshot newer than the run's last record
            out.append((start, end, run))
    return out


def describe_windows(snapshots: list[SnapshotInfo], runs: list[Run]) -> str:
    found = windows(snapshots, runs)
    if not found:
        if not snapshots:
            return "there is no snapshot yet (take one with `walkit snapshot` while capture runs)"
        return "no snapshot lies inside the WAL's coverage (take one with `walkit snapshot` while capture runs)"
    parts = [f"{a.isoformat() if a else '?'} .. {b.isoformat() if b else '?'}" for a, b, _ in found]
    return "restorable: " + "; ".join(parts)


def plan_restore(
    target: Target,
    cut: Cut,
    snapshots: list[SnapshotInfo],
    runs: list[Run],
    collections: list[str] | None = None,
    database: str | None = None,
    renames: Sequence[tuple[Timestamp, tuple[str, ...]]] = (),
) -> RestorePlan:
    """Choose the snapshot and WAL range for ``cut``; RestoreError names what is restorable instead.

    Only snapshots holding all of ``database`` (None: every database) and ``collections`` count,
    and none during whose scan a collection of it was renamed (``renames``: clusterTime and the
    databases involved): a fuzzy scan cannot tell where the moved documents were when it read them.
    """
    run = cut.run

    def renamed_during(snap: SnapshotInfo) -> bool:
        return any(snap.start <= ct <= snap.end and (database is None or database in dbs) for ct, dbs in renames)

    covering = [s for s in snapshots if s.covers(database, collections) and not renamed_during(s)]
    if snapshots and not covering and not any(renamed_during(s) for s in snapshots):
        what = f"database {database!r}" if database else "every database"
        what += f" (collections {', '.join(collections)})" if collections else ""
        scoped = [s for s in snapshots if s.database == database and (s.scope_collections or s.scope_exclude)]
        if scoped:
            s = scoped[-1]
            have = ", ".join(s.scope_collections) or f"all but {', '.join(s.scope_exclude)}"
            raise RestoreError(f"no snapshot holds all of {what}: snapshot {s.id} holds only collections {have}; name the ones to restore with --collections")
        kinds = sorted({s.database or "(all)" for s in snapshots})
        raise RestoreError(f"no snapshot holds {what}; the snapshots hold databases {', '.join(kinds)} (name one with --db)")
    snapshots = covering
    usable = []
    for snap in snapshots:
        if not _serves(run, snap):
            continue
        if target.kind == "at":
            assert isinstance(target.value, datetime)
            at = as_utc(target.value)  # naive means UTC
            if snap.end_wall > at:
                continue
        elif cut.next_ct is not None and snap.end >= cut.next_ct:
            continue  # its scan may hold changes the cut leaves out
        usable.append(snap)
    if not usable:
        raise RestoreError(f"cannot restore {target}: no snapshot ends before it in the same stretch of WAL; {describe_windows(snapshots, runs)}")
    snap = max(usable, key=lambda s: (s.end, s.id))
    return RestorePlan(target, snap, snap.start, cut.last_seq, run, list(collections or []), database=database)
