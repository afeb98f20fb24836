"""Shared set-up of the upload tests: a simulated world, and reading restored states.

:func:`open_world` starts a private sandbox whose clusterTime and wallTime follow a
:class:`SimulatedClock`, a capture of it into a fresh home (in a thread, same clock,
no idle checkpoints, so nothing reaches the WAL unless the test writes), a
:class:`MockExternalBackupProvider` (no latency, no random failures) on that clock and
the home's quota ledger.  :meth:`World.write` makes a batch of changes one simulated
minute later and waits until capture has fsynced them.  The clock starts in the past,
so restores never see an instant "in the future" of the real clock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import pymongo
from bson import Binary
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from tests.helpers import in_background
from walkit.clock import SimulatedClock
from walkit.home import Home
from walkit.offsite.external import restore_from_external
from walkit.offsite.quota import QuotaLedger
from walkit.offsite.upload import UploadResult, bundles_dir, quota_dir, upload
from walkit.providers.mock import MockExternalBackupProvider
from walkit.restore.local import state_at
from walkit.restore.plan import Target
from walkit.restore.snapshot import SnapshotInfo, take_snapshot
from walkit.sandbox import Sandbox
from walkit.wal.capture import DOCUMENT_CHANGES, ChangeCapture
from walkit.wal.format import read_records

T0 = datetime(2025, 6, 10, 6, 0, tzinfo=UTC)
DAY = timedelta(hours=24)
WAIT = 20.0
DB = "shop"
RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True)
State = dict[str, list[bytes]]  # "db.coll" -> documents' BSON, as state_at orders them


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs (not even ``except Exception``)."""


@dataclass
class World:
    tmp: Path
    clock: SimulatedClock
    uri: str
    client: pymongo.MongoClient
    home: Home
    mock: MockExternalBackupProvider
    ledger: QuotaLedger
    #: Change events made (so far all captured): the document changes, and (MongoDB 6.0+, showExpandedEvents) the
    #: ``create`` event of the first write, which creates the collection.  The WAL's seqs run 1..events.
    events: int = 0
    changes: int = 0  # document changes among them (insert, update): what the writes made
    docs: int = 0
    checked: int = 0  # the WAL's events up to this seq were checked (wait_durable)
    _capture: tuple[ChangeCapture, Any, list[BaseException]] | None = field(default=None, repr=False)

    # -- capture ------------------------------------------------------------------------
    def start_capture(self) -> None:
        """Capture in a thread; returns once its change stream is open (fresh home) or it resumes."""
        cap = ChangeCapture(self.uri, self.home, clock=self.clock, fsync_interval=0.05, initial_snapshot=False, checkpoint_interval=3600)
        ready: list[bool] = []
        cap.on_ready = lambda _cap: ready.append(True)
        fresh = not self.home.wal_dir.exists()
        thread, failures = in_background(cap)
        deadline = time.monotonic() + WAIT
        # a fresh home: wait for its first checkpoint (the stream is open); a resumed one
        # reads everything after its last token, so an open WAL is enough
        while not failures and not (cap.stats.checkpoints if fresh else ready):
            assert time.monotonic() < deadline, "capture did not start in time"
            time.sleep(0.01)
        if failures:
            raise failures[0]
        self._capture = (cap, thread, failures)

    def stop_capture(self) -> None:
        if self._capture is None:
            return
        cap, thread, failures = self._capture
        self._capture = None
        cap.stop()
        thread.join(WAIT)
        assert not thread.is_alive(), "capture did not stop in time"
        if failures:
            raise failures[0]

    def wait_durable(self) -> None:
        assert self._capture is not None, "capture is not running"
        cap, _, failures = self._capture
        deadline = time.monotonic() + WAIT
        while cap.writer is None or cap.writer.durable_seq < self.events:
            assert not failures, failures
            assert time.monotonic() < deadline, f"capture fsynced {cap.writer and cap.writer.durable_seq} of {self.events} events"
            time.sleep(0.005)
        assert cap.writer.next_seq - 1 == self.events, (cap.writer.next_seq - 1, self.events)  # and no more than those
        # each one what the writes made: seq 1 the collection's create, every other one a document change
        got = [(r.seq, r.event()["operationType"]) for r in read_records(self.home.wal_dir, from_seq=self.checked + 1)]
        expected = [(seq, "create" if seq == 1 else "change") for seq in range(self.checked + 1, self.events + 1)]
        assert [(seq, op if op not in DOCUMENT_CHANGES else "change") for seq, op in got] == expected
        self.checked = self.events

    # -- the workload ----------------------------------------------------------------------
    def write(self, n: int = 2, minutes: float = 1.0, marker: str = "") -> datetime:
        """One simulated minute later: ``n`` inserts, then an update of an older document; returns their time."""
        when = self.clock.advance(minutes=minutes)
        coll = self.client[DB].orders
        new = [{"_id": self.docs + i, "n": self.docs + i, "note": f"order {self.docs + i} {marker}"} for i in range(1, n + 1)]
        if not self.docs:
            self.events += 1  # the first insert creates the collection: a create event comes before its inserts
        coll.insert_many(new)
        self.events += n
        self.changes += n
        if self.docs:
            coll.update_one({"_id": self.docs}, {"$inc": {"n": 100}, "$set": {"touched": when}})
            self.events += 1
            self.changes += 1
        self.docs += n
        self.wait_durable()
        return when

    def snapshot(self) -> SnapshotInfo:
        self.clock.advance(minutes=1)
        return take_snapshot(self.uri, self.home, clock=self.clock, progress=False)

    def upload(self, **options: Any) -> UploadResult:
        options.setdefault("clock", self.clock)
        return upload(self.home, self.mock, self.ledger, **options)

    # -- observation -------------------------------------------------------------------------
    def bundle_files(self) -> list[str]:
        """What HOME/bundles holds (a plain file where the folder should be is reported too)."""
        folder = bundles_dir(self.home)
        if folder.exists() and not folder.is_dir():
            return [f"{folder.name} (a file, not a folder)"]
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def ledger_bytes(self) -> bytes:
        return self.ledger.path.read_bytes() if self.ledger.path.exists() else b""

    def local_state(self, at: datetime) -> State:
        return state_at(self.home, Target("at", at), clock=self.clock)

    def offsite_state(self, at: datetime, identities: Any = None, provider: Any = None) -> State:
        return offsite_state(provider or self.mock, at, self.tmp, clock=self.clock, identities=identities)


def offsite_state(provider: Any, at: datetime, tmp: Path, *, clock: Any = None, identities: Any = None) -> State:
    """The state at ``at`` restored from the provider's bundles alone (into a dump folder, read back)."""
    out = tmp / f"dump-{os.urandom(4).hex()}"
    result = restore_from_external(provider, Target("at", at), identities=identities, workdir=tmp, to_dump=out, clock=clock, progress=False)
    assert result.offsite is not None and result.offsite.bundles
    return dump_state(out)


def dump_state(folder: Path) -> State:
    """A mongodump folder's documents, as ``state_at`` returns them."""
    state: State = {}
    for path in sorted(folder.glob("*/*.bson")):
        with path.open("rb") as f:
            state[f"{path.parent.name}.{path.name[: -len('.bson')]}"] = [d.raw for d in bson.decode_file_iter(f, RAW)]
    return state


@contextmanager
def open_world(tmp: Path, *, preload_bytes: int = 0, start: datetime = T0, **mock_options: Any) -> Iterator[World]:
    """A sandbox on a simulated clock, a capture of it running, a mock service and the ledger.

    ``preload_bytes`` of incompressible documents are written before capture starts: they
    are in every snapshot but not in the WAL (so snapshots weigh, WAL-only bundles do not).
    """
    clock = SimulatedClock(start)
    box = Sandbox(0, clock=clock).start()
    client: pymongo.MongoClient = pymongo.MongoClient(box.uri, serverSelectionTimeoutMS=10_000)
    world: World | None = None
    try:
        if preload_bytes:
            client[DB].blobs.insert_many([{"_id": i, "data": Binary(os.urandom(4096))} for i in range(preload_bytes // 4096)])
        options: dict[str, Any] = {"latency_ms": 0, "failure_rate": 0.0, "seed": 7} | mock_options
        mock = MockExternalBackupProvider(clock=clock, **options)
        home = Home(tmp / "home")
        world = World(tmp, clock, box.uri, client, home, mock, QuotaLedger(quota_dir(home), clock=clock))
        world.start_capture()
        yield world
    finally:
        try:
            if world is not None:
                world.stop_capture()
        finally:
            client.close()
            box.stop()


def assert_service_rule(mock: MockExternalBackupProvider) -> None:
    """The service never saw two upload calls within 24 h, and never refused one as rate limited."""
    calls = mock.calls
    assert all(c["outcome"] != "rate_limited" for c in calls), calls
    times = [c["at"] for c in calls]
    assert times == sorted(times)
    for before, after in zip(times, times[1:], strict=False):
        assert after - before >= DAY, f"two upload calls {after - before} apart: {calls}"
