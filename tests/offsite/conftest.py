"""A simulated site for the off-site tests, driven day by day through the real code.

:class:`Site` is a sandbox on a :class:`SimulatedClock`, capture in a thread on the
same clock, the Valerix mock (its state in a folder, its clock the same) and the
quota ledger.  ``site.day(n)`` runs one day's workload (inserts; updates with
``$inc``/``$set``/``$unset``/``$push``; deletes; now and then a transaction; a
second database) spread over the day, recording the exact state (raw BSON per
collection) at several instants; ``site.backup()`` makes the day's one call at
the backup hour.  The simulated days lie in the past, since restores refuse
instants in the (real) future.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import bson
import pymongo
from bson.codec_options import CodecOptions
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument

from tests.helpers import in_background
from walkit.clock import SimulatedClock
from walkit.errors import ProviderError
from walkit.home import Home
from walkit.offsite.quota import QuotaLedger
from walkit.offsite.upload import Policy, UploadResult, quota_dir, upload
from walkit.providers.mock import MockExternalBackupProvider
from walkit.restore.snapshot import SnapshotInfo, take_snapshot
from walkit.sandbox import Sandbox
from walkit.wal.capture import DOCUMENT_CHANGES, ChangeCapture
from walkit.wal.format import read_records

START = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday, safely in the past
BACKUP_HOUR = 23
RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True)
SYSTEM_DBS = ("admin", "config", "local")
DB, AUDIT = "shop", "audit"
CITIES = ["Zürich", "Basel", "Genève", "Lugano", "Chur"]
WAIT = 30.0

State = dict[str, list[bytes]]


def canonical(state: State) -> State:
    """Documents in ``_id`` order, empty collections left out: how both sides are compared."""
    key = lambda raw: bson.encode({"_id": RawBSONDocument(raw, RAW)["_id"]})  # noqa: E731
    return {ns: sorted(docs, key=key) for ns, docs in sorted(state.items()) if docs}


def read_dump(folder: Path) -> State:
    """``{"db.coll": [raw documents]}`` of a mongodump folder (``<db>/<coll>.bson``)."""
    out: State = {}
    for path in sorted(folder.glob("*/*.bson")):
        with path.open("rb") as f:
            out[f"{path.parent.name}.{path.stem}"] = [doc.raw for doc in bson.decode_file_iter(f, RAW)]
    return canonical(out)


def wait_until(what: str, predicate: Any, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


@dataclass
class Backup:
    """What one day's call did."""

    day: int
    at: datetime
    result: UploadResult | None = None
    error: ProviderError | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.ref is not None


@dataclass
class DayLog:
    day: int
    first_write: datetime | None = None
    last_write: datetime | None = None
    instants: list[datetime] = field(default_factory=list)


class Site:
    """A sandbox, capture, the mock service and the ledger, all on one simulated clock."""

    def __init__(
        self,
        root: Path,
        *,
        seed: int = 1,
        failure_rate: float = 0.0,
        provider_seed: int | None = 1,
        capture: dict[str, Any] | None = None,
        start: datetime = START,
    ) -> None:
        self.root = root
        self.start = start
        self.clock = SimulatedClock(start)
        self.sandbox = Sandbox(0, clock=self.clock).start()
        self.client: pymongo.MongoClient = pymongo.MongoClient(self.sandbox.uri, tz_aware=True)
        self.home = Home(root / "home")
        self.provider = MockExternalBackupProvider(
            latency_ms=0, failure_rate=failure_rate, seed=provider_seed, clock=self.clock, state_dir=root / "valerix"
        )
        self.ledger = QuotaLedger(quota_dir(self.home), clock=self.clock)
        self.rng = random.Random(seed)
        self.capture_options = {"fsync_interval": 0.02, "checkpoint_interval": 0.02, "initial_snapshot": False, **(capture or {})}
        #: Change events made so far, capture's seq must reach exactly this: one per document change, and (MongoDB 6.0+,
        #: showExpandedEvents) one ``create`` per collection a write creates, one ``drop`` per dropped collection.
        self.events = 0
        self.changes = 0  # document changes (insert, update, replace, delete) among them: what the workload's writes made
        #: seq -> (operationType, namespace) of every other event the workload made (creates, drops)
        self.ddl: dict[int, tuple[str, str]] = {}
        self.existing: set[str] = set()  # namespaces that exist now (a first insert into any other creates it: a create event)
        self.checked = 0  # the WAL's events up to this seq were checked against the model (wait_captured)
        self.recorded: list[tuple[datetime, State]] = []
        self.days: list[DayLog] = []
        self.backups: list[Backup] = []
        self._ids = itertools.count(1)
        self.live: dict[str, list[Any]] = {"customers": [], "orders": [], "events": []}
        self.cap: ChangeCapture | None = None
        self._thread: threading.Thread | None = None
        self._failures: list[BaseException] = []
        self.start_capture(fresh=True)

    # -- capture ---------------------------------------------------------------------
    def start_capture(self, *, fresh: bool = False) -> ChangeCapture:
        """Run capture in a thread; on a fresh home wait until its stream is open, else until it is ready."""
        cap = ChangeCapture(self.sandbox.uri, self.home, clock=self.clock, **self.capture_options)
        ready = threading.Event()
        cap.on_ready = lambda _cap: ready.set()
        self._thread, self._failures = in_background(cap)
        self.cap = cap
        assert ready.wait(WAIT) or self._failures, "capture did not get ready"
        if self._failures:
            raise self._failures[0]
        if fresh:  # from now on every write is seen (a resumed capture starts after the WAL's last token: nothing is missed)
            wait_until("capture did not open its change stream", lambda: cap.stats.checkpoints > 0 or bool(self._failures))
        return cap

    def stop_capture(self) -> None:
        if self.cap is None:
            return
        self.cap.stop()
        assert self._thread is not None
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "capture did not stop"
        self.cap = None
        if self._failures:
            raise self._failures[0]

    def wait_captured(self) -> None:
        """Until capture has every event made so far on disk (and no more than those)."""
        cap = self.cap
        assert cap is not None

        def done() -> bool:
            if self._failures:
                raise self._failures[0]
            w = cap.writer
            return w is not None and (w.next_seq - 1) >= self.events and w.durable_seq >= self.events

        wait_until(f"capture did not reach seq {self.events}", done)
        assert cap.writer is not None and cap.writer.next_seq - 1 == self.events, (cap.writer.next_seq - 1, self.events)
        # and each event is the one the model expects at its seq: a create or drop exactly where the workload made it,
        # a document change everywhere else (so no write was lost or doubled, and no DDL event is missing or extra)
        got: dict[int, tuple[str, str]] = {}
        for rec in read_records(self.home.wal_dir, from_seq=self.checked + 1):
            seq = rec.seq
            assert rec.kind == "e" and seq is not None, f"a {rec.kind!r} record at seq {seq}"
            ev = rec.event()
            got[seq] = (ev["operationType"], f"{ev['ns']['db']}.{ev['ns']['coll']}")
        assert sorted(got) == list(range(self.checked + 1, self.events + 1))
        ddl = {seq: what for seq, what in got.items() if what[0] not in DOCUMENT_CHANGES}
        assert ddl == {seq: what for seq, what in self.ddl.items() if seq > self.checked}
        assert self.events - len(self.ddl) == self.changes  # so the WAL holds exactly the workload's document changes
        self.checked = self.events

    def close(self) -> None:
        try:
            self.stop_capture()
        finally:
            self.client.close()
            self.sandbox.stop()

    # -- time --------------------------------------------------------------------------
    def day_start(self, day: int) -> datetime:
        return self.start + timedelta(days=day)

    def to(self, instant: datetime) -> None:
        """Move the clock forward to ``instant``."""
        step = (instant - self.clock.now()).total_seconds()
        assert step >= 0, f"the clock is already past {instant}"
        self.clock.advance(step)

    # -- state -------------------------------------------------------------------------
    def state(self) -> State:
        out: State = {}
        for name in self.client.list_database_names():
            if name in SYSTEM_DBS:
                continue
            db = self.client[name]
            for coll in db.list_collection_names():
                out[f"{name}.{coll}"] = [d.raw for d in db.get_collection(coll, codec_options=RAW).find({})]
        return canonical(out)

    def record(self, log: DayLog | None = None) -> datetime:
        """Advance a little and record (instant, state)."""
        self.clock.advance(self.rng.randint(1, 20))
        now = self.clock.now()
        self.recorded.append((now, self.state()))
        if log is not None:
            log.instants.append(now)
        return now

    def expected_at(self, instant: datetime) -> State:
        """The recorded state at ``instant`` (which must be a recorded instant)."""
        found = [state for at, state in self.recorded if at == instant]
        assert len(found) == 1
        return found[0]

    # -- the workload --------------------------------------------------------------------
    def day(self, day: int, writes: int = 60, records: int = 4, *, drop_events: bool = False, until_hour: int = 22, from_minute: int = 30) -> DayLog:
        """One day's workload, spread from ``from_minute`` after midnight to ``until_hour``."""
        log = DayLog(day)
        self.days.append(log)
        base = self.day_start(day)
        minutes = sorted(self.rng.sample(range(from_minute, until_hour * 60), writes))
        to_record = set(self.rng.sample(range(writes), min(records, writes)))
        drop_at = writes // 2 if drop_events else -1
        for n, minute in enumerate(minutes):
            self.to(base + timedelta(minutes=minute, seconds=self.rng.randint(0, 29)))
            if n == drop_at:
                self.drop_events()
            else:
                self.write()
            log.first_write = log.first_write or self.clock.now()
            log.last_write = self.clock.now()
            if n in to_record:
                self.record(log)
        return log

    def _new_id(self) -> int:
        return next(self._ids)

    def _ddl(self, op: str, ns: str) -> None:
        """One event other than a document change: at the next seq."""
        self.events += 1
        self.ddl[self.events] = (op, ns)
        if op == "create":
            self.existing.add(ns)
        elif op == "drop":
            self.existing.discard(ns)

    def _changed(self, n: int = 1) -> None:
        """``n`` document changes."""
        self.events += n
        self.changes += n

    def _insert(self, ns: str) -> None:
        """The events of one insert into ``ns``: its ``create`` first when the insert creates the collection (MongoDB 6.0+)."""
        if ns not in self.existing:
            self._ddl("create", ns)
        self._changed()

    def write(self) -> None:
        db = self.client[DB]
        rng = self.rng
        r = rng.random()
        if not self.live["customers"] or r < 0.18:
            cid = self._new_id()
            db.customers.insert_one({
                "_id": cid, "name": f"customer {cid}", "tier": rng.choice(["basic", "gold"]), "orders": 0,
                "addr": {"city": rng.choice(CITIES), "zip": Int64(rng.randint(1000, 9999))}, "note": "new", "tags": [],
                "since": self.clock.now(),
            })
            self.live["customers"].append(cid)
            self._insert(f"{DB}.customers")
        elif r < 0.36:
            oid = self._new_id()
            db.orders.insert_one({
                "_id": oid, "customer": rng.choice(self.live["customers"]), "qty": rng.randint(1, 5), "items": [],
                "total": Decimal128(Decimal(rng.randint(100, 99999)) / 100), "status": "open", "express": rng.random() < 0.2,
            })
            self.live["orders"].append(oid)
            self._insert(f"{DB}.orders")
        elif r < 0.44:
            eid = f"ev-{self._new_id():06d}"
            db.events.insert_one({"_id": eid, "kind": rng.choice(["click", "view", "cart"]), "at": self.clock.now(), "meta": {"n": rng.random()}})
            self.live["events"].append(eid)
            self._insert(f"{DB}.events")
        elif r < 0.50:
            self.client[AUDIT].log.insert_one({"_id": self._new_id(), "what": "login", "ok": rng.random() < 0.9, "at": self.clock.now()})
            self._insert(f"{AUDIT}.log")
        elif r < 0.60 and self.live["orders"]:
            res = db.orders.update_one({"_id": rng.choice(self.live["orders"])}, {"$inc": {"qty": rng.randint(1, 3)}})
            self._changed(res.modified_count)
        elif r < 0.68:
            res = db.customers.update_one(
                {"_id": rng.choice(self.live["customers"])},
                {"$set": {"addr.city": rng.choice(CITIES), "tier": rng.choice(["basic", "gold", "platinum"]), "seen": self.clock.now()}},
            )
            self._changed(res.modified_count)
        elif r < 0.74:
            field_name = rng.choice(["note", "seen", "addr.zip"])
            res = db.customers.update_one({"_id": rng.choice(self.live["customers"]), field_name: {"$exists": True}}, {"$unset": {field_name: ""}})
            self._changed(res.modified_count)
        elif r < 0.84 and self.live["orders"]:
            res = db.orders.update_one(
                {"_id": rng.choice(self.live["orders"])},
                {"$push": {"items": {"sku": f"S-{rng.randint(1, 50)}", "n": rng.randint(1, 3)}}, "$set": {"status": "filled"}},
            )
            self._changed(res.modified_count)
        elif r < 0.94:
            coll = rng.choice(["orders", "events", "customers"] if len(self.live["customers"]) > 3 else ["orders", "events"])
            if self.live[coll]:
                victim = self.live[coll].pop(rng.randrange(len(self.live[coll])))
                self._changed(db[coll].delete_one({"_id": victim}).deleted_count)
            else:
                self.write()
        else:
            self.transaction()

    def transaction(self) -> None:
        """An order and the customer's counter, in one transaction (one clusterTime)."""
        db = self.client[DB]
        exists = "orders" in db.list_collection_names()
        assert exists == (f"{DB}.orders" in self.existing)
        if not exists:  # made before the transaction (as always): its own create event, ahead of the transaction's two
            db.create_collection("orders")
            self._ddl("create", f"{DB}.orders")
        oid, cid = self._new_id(), self.rng.choice(self.live["customers"])

        def body(session: Any) -> None:
            db.orders.insert_one({"_id": oid, "customer": cid, "qty": 1, "items": [{"sku": "TX", "n": 1}], "status": "open"}, session=session)
            db.customers.update_one({"_id": cid}, {"$inc": {"orders": 1}, "$push": {"tags": "tx"}}, session=session)

        with self.client.start_session() as session:
            session.with_transaction(body)
        self.live["orders"].append(oid)
        self._changed(2)

    def drop_events(self) -> None:
        """Drop the events collection (one drop event); a later insert creates it again (a create event)."""
        db = self.client[DB]
        existed = "events" in db.list_collection_names()
        assert existed == (f"{DB}.events" in self.existing)
        db.events.drop()
        self.live["events"].clear()
        if existed:
            self._ddl("drop", f"{DB}.events")

    # -- the day's call ----------------------------------------------------------------
    def backup(self, day: int, policy: Policy | None = None, *, wait: bool = True, recipients: Any = ()) -> Backup:
        """Wait for capture, then make the day's one call at the backup hour (the state at that moment is recorded)."""
        if wait:
            self.wait_captured()
        self.to(self.day_start(day) + timedelta(hours=BACKUP_HOUR))
        self.recorded.append((self.clock.now(), self.state()))
        entry = Backup(day, self.clock.now())
        try:
            entry.result = upload(
                self.home, self.provider, self.ledger, policy=policy or Policy(snapshot_every_days=1), uri=self.sandbox.uri,
                clock=self.clock, recipients=recipients,
            )
        except ProviderError as exc:
            entry.error = exc
        self.backups.append(entry)
        return entry

    def local_snapshot(self, day: int) -> SnapshotInfo:
        """No call today: only a local snapshot at the backup hour (the state at that moment is recorded)."""
        self.wait_captured()
        self.to(self.day_start(day) + timedelta(hours=BACKUP_HOUR))
        self.recorded.append((self.clock.now(), self.state()))
        return take_snapshot(self.sandbox.uri, self.home, clock=self.clock, progress=False)

