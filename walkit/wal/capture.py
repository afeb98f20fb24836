"""Change capture: a MongoDB change stream, written into the local WAL.

:class:`ChangeCapture` watches a whole deployment, one database, or some of
its collections, and appends every change event, raw, to the WAL.  The WAL
is its own checkpoint: a restart resumes after the newest resume token in it
(an event's, or an idle stream's ``postBatchResumeToken`` saved as a
checkpoint), so nothing is lost or doubled across ``kill -9``.

- Post-images are asked for with ``fullDocument: whenAvailable`` on servers
  that have them (6.0+); ``updateLookup`` is never used, as its image is of
  lookup time, not event time.  The ``updateDescription`` is always kept.
- Schema changes: on 6.0+ the stream is opened with ``showExpandedEvents``,
  so ``create`` (with the collection's options), ``createIndexes``,
  ``dropIndexes`` and ``modify`` are in the WAL, in order, and every event
  carries ``collectionUUID``.  An older server has none: capture says so
  once, and restores take indexes and options from the snapshots.
- History lost (error 286, or a resume token the server no longer accepts):
  a **gap marker** is written, a clear warning is logged, and capture goes
  on from a new stream.  Restores must never cross a gap silently.
- Server restarts and network drops: reconnect with capped exponential
  backoff and resume from the WAL's newest token.
- A stop (:meth:`ChangeCapture.stop`, SIGTERM/SIGINT in the CLI) first
  catches up to the server's operationTime at the stop (or until the
  stream has nothing more; at most ``stop_grace`` seconds), then fsyncs
  all, so changes acknowledged before the stop are on disk (on MongoDB:
  those majority-committed by then, as change streams show no others).
- A fresh home (``initial_snapshot``) begins with a snapshot of capture's
  scope, taken in a thread once the stream is open, so every instant after
  capture started is restorable; after a gap marker a snapshot is taken
  the same way.  A failed snapshot is logged and capture goes on.
- A standalone server: NotAReplicaSetError with the fix.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import errors as pm
from pymongo.change_stream import ChangeStream

from walkit.clock import Clock, SystemClock
from walkit.errors import NotAReplicaSetError
from walkit.home import Home
from walkit.mongo import STANDALONE_FIX, connect, redact, require_replica_set
from walkit.wal.writer import DEFAULT_FSYNC_INTERVAL, DEFAULT_SEGMENT_BYTES, DEFAULT_SEGMENT_SECONDS, WALWriter

log = logging.getLogger("walkit.capture")

__all__ = ["ChangeCapture", "CaptureStats"]

RAW_CODEC = CodecOptions(document_class=RawBSONDocument, tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_AUTO)
HISTORY_LOST = {286, 260, 280}  # lost, or a token this server cannot resume from
POST_IMAGE_WIRE = 17  # MongoDB 6.0
DOCUMENT_CHANGES = frozenset(("insert", "update", "replace", "delete"))


@dataclass
class CaptureStats:
    """What one run of capture did."""

    events: int = 0  # every event written (document changes, DDL, drops, renames, ...)
    #: Document changes among them (insert, update, replace, delete): what writes to documents produce.
    changes: int = 0
    last_change_seq: int | None = None
    gaps: int = 0
    checkpoints: int = 0
    reconnects: int = 0
    #: Seconds from an event's wallTime to the moment its record was fsynced (recent ones).
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    snapshots: list[str] = field(default_factory=list)  # ids of the snapshots capture took
    snapshot_errors: list[str] = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None


def token_time(token: Any) -> Timestamp | None:
    """The clusterTime a resume token stands for, or None when it does not say.

    MongoDB's ``_data`` is a hex KeyString that starts with the cluster time:
    type byte 0x82, then seconds and increment (big-endian).  A token that does
    not look like that gives None (the WAL then knows the position only by
    the token itself).
    """
    data = token.get("_data") if hasattr(token, "get") else None
    if not isinstance(data, str) or len(data) < 18 or not data.startswith("82"):
        return None
    try:
        return Timestamp(int(data[2:10], 16), int(data[10:18], 16))
    except ValueError:
        return None


class ChangeCapture:
    """Capture changes from ``uri`` into the WAL of ``home``.

    ``database`` limits capture to one database; ``collections`` to some of
    its collections (or, without ``database``, to collections of those
    names anywhere); ``exclude_collections`` leaves some out.
    """

    def __init__(
        self,
        uri: str,
        home: Home | str | Path | None = None,
        *,
        database: str | None = None,
        collections: Sequence[str] | None = None,
        exclude_collections: Sequence[str] | None = None,
        clock: Clock | None = None,
        fsync_interval: float = DEFAULT_FSYNC_INTERVAL,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        segment_seconds: float = DEFAULT_SEGMENT_SECONDS,
        checkpoint_interval: float = 10.0,
        max_backoff: float = 30.0,
        stop_grace: float = 5.0,
        initial_snapshot: bool = True,
    ) -> None:
        self.uri = uri
        self.home = home if isinstance(home, Home) else Home(home)
        self.database = database
        self.collections = list(collections or [])
        self.exclude = list(exclude_collections or [])
        self.clock = clock or SystemClock()
        self.fsync_interval = fsync_interval
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self.checkpoint_interval = checkpoint_interval
        self.max_backoff = max_backoff
        self.stop_grace = stop_grace
        self.initial_snapshot = initial_snapshot
        self.stats = CaptureStats()
        self._snapshotter: threading.Thread | None = None
        self._stop = threading.Event()
        self.writer: WALWriter | None = None
        #: Set once the change stream is open: changes acknowledged from then on will be captured.
        self.streaming = threading.Event()
        #: Called once the lock is held, the server checked and the WAL open.
        self.on_ready: Callable[[ChangeCapture], None] | None = None
        self._pending: deque[tuple[int, Any]] = deque()  # (seq, wallTime) written, not yet fsynced
        self._pending_lock = threading.Lock()
        self._said_no_ddl = False  # the "no expanded events" warning is given once

    # -- public ----------------------------------------------------------------------
    @property
    def scope(self) -> str:
        where = f"database {self.database!r}" if self.database else "the whole deployment"
        if self.collections:
            where += f", collections {', '.join(self.collections)}"
        if self.exclude:
            where += f", except {', '.join(self.exclude)}"
        return where

    @property
    def snapshotting(self) -> bool:
        """True while capture's own snapshot (fresh home, or after a gap) is being taken."""
        return self._snapshotter is not None and self._snapshotter.is_alive()

    def stop(self) -> None:
        """Ask :meth:`run` to catch up, flush everything and return (thread-safe)."""
        self._stop.set()

    def run(self, stop: threading.Event | None = None) -> CaptureStats:
        """Capture until ``stop()`` (or ``stop`` is set); everything is fsynced on return."""
        if stop is not None:
            self._stop = stop
        with self.home:  # the writer lock
            self.writer = WALWriter(
                self.home.wal_dir,
                clock=self.clock,
                segment_bytes=self.segment_bytes,
                segment_seconds=self.segment_seconds,
                fsync_interval=self.fsync_interval,
            )
            self.writer.on_durable = self._durable
            # Check the server before touching the WAL: a wrong URI leaves nothing behind.
            client: pymongo.MongoClient = connect(self.uri, timeout_ms=5000, document_class=RawBSONDocument)
            try:
                hello = require_replica_set(client, self.uri)
                self.writer.open()
                if self.on_ready is not None:
                    self.on_ready(self)
                self._loop(client, int(hello.get("maxWireVersion", 0)))
            finally:
                if self._snapshotter is not None:
                    self._snapshotter.join(self.stop_grace)  # else the next snapshot removes what it left
                self.writer.close()
                client.close()
        return self.stats

    # -- the loop ------------------------------------------------------------------------
    def _pipeline(self) -> list[dict[str, Any]]:
        stages: list[dict[str, Any]] = []
        if self.collections:
            stages.append({"$match": {"$or": [
                {"ns.coll": {"$in": self.collections}},
                {"to.coll": {"$in": self.collections}},
                {"operationType": {"$in": ["dropDatabase", "invalidate"]}},
            ]}})
        if self.exclude:
            stages.append({"$match": {"$or": [
                {"ns.coll": {"$nin": self.exclude}},
                {"operationType": "rename", "to.coll": {"$nin": self.exclude}},
            ]}})
        return stages

    def _open(self, client: pymongo.MongoClient, wire: int, fresh: bool = False) -> ChangeStream[Any]:
        assert self.writer is not None
        kwargs: dict[str, Any] = {"max_await_time_ms": max(50, int(self.fsync_interval * 1000))}
        if wire >= POST_IMAGE_WIRE:
            kwargs["full_document"] = "whenAvailable"
            kwargs["show_expanded_events"] = True  # create, createIndexes, dropIndexes, modify; collectionUUID
        elif not self._said_no_ddl:
            self._said_no_ddl = True
            log.warning(
                "this server (before MongoDB 6.0) reports no schema changes in change streams: indexes and collection options "
                "changed after a snapshot are not in the WAL, and restores take them from the snapshots; upgrade to 6.0+ for exact ones"
            )
        token = None if fresh else self.writer.last_token
        start_at = None if fresh or token is not None else self.writer.last_ct
        snapshot_start = None
        if token is None and start_at is None and not fresh:
            start_at = snapshot_start = self._snapshot_start()
            if start_at is not None:  # a fresh home with a snapshot: capture from where its scan began
                self.writer.checkpoint(None, start_at)  # no token yet: a restart starts at this time
                self.writer.sync()
        if token is not None:
            kwargs["start_after" if self.writer.last_invalidate else "resume_after"] = token
        elif start_at is not None:
            kwargs["start_at_operation_time"] = start_at
        target = client.get_database(self.database, codec_options=RAW_CODEC) if self.database else client
        try:
            stream = target.watch(self._pipeline(), **kwargs)
        except pm.OperationFailure as exc:
            if exc.code == 40573:
                raise NotAReplicaSetError(f"the server has no change streams (standalone); {STANDALONE_FIX}") from None
            raise
        if token is None and not fresh:  # a first stream: save where it starts before any event arrives
            if stream.resume_token is not None:  # (None when the first batch holds events: they carry tokens)
                when = start_at or token_time(stream.resume_token) or self._operation_time(client, 5.0)
                self.writer.checkpoint(stream.resume_token, when)
                self.writer.sync()
            self.stats.checkpoints += 1
            if self.initial_snapshot and start_at is None:
                self._snapshot_soon("the initial snapshot")
            elif snapshot_start is not None:
                log.info("fresh WAL: capturing from the start of the newest snapshot (%s)", snapshot_start)
        return stream

    def _snapshot_start(self) -> Timestamp | None:
        """The scan start of the home's newest snapshot of capture's scope, if any."""
        from walkit.restore.snapshot import list_snapshots

        try:
            snaps = [s for s in list_snapshots(self.home) if s.covers(self.database, self.collections or None)]
        except Exception as exc:  # a damaged manifest: capture still starts, from now
            log.warning("cannot read the snapshots in %s (%s); capturing from now", self.home.path, exc)
            return None
        return max(snaps, key=lambda s: s.end).start if snaps else None

    def _snapshot_soon(self, why: str) -> None:
        """Take a snapshot of capture's scope in a thread, while capture goes on."""
        if self._snapshotter is not None and self._snapshotter.is_alive():
            return

        def take() -> None:
            from walkit.restore.snapshot import take_snapshot

            try:
                snap = take_snapshot(
                    self.uri, self.home, database=self.database, collections=self.collections,
                    exclude_collections=self.exclude, clock=self.clock, progress=False,
                )
                self.stats.snapshots.append(snap.id)
                log.info("%s: %s (%d documents), restorable from %s", why, snap.id, snap.documents, snap.end_wall.isoformat())
            except Exception as exc:  # capture goes on; the WAL is still worth keeping
                self.stats.snapshot_errors.append(str(exc))
                log.warning("%s failed: %s; take one with `walkit snapshot`", why, exc)

        self._snapshotter = threading.Thread(target=take, name="walkit-capture-snapshot", daemon=True)
        self._snapshotter.start()

    def _loop(self, client: pymongo.MongoClient, wire: int) -> None:
        assert self.writer is not None
        backoff = 0.5
        gap_reason: str | None = None  # set when history was lost: start afresh, then mark the gap
        while not self._stop.is_set():
            try:
                stream = self._open(client, wire, fresh=gap_reason is not None)
                self.streaming.set()
                if gap_reason is not None:
                    self._record_gap(stream, gap_reason)
                    gap_reason = None
                with stream:
                    self._drain(stream, client)
                backoff = 0.5
            except pm.OperationFailure as exc:
                if exc.code not in HISTORY_LOST:
                    raise
                gap_reason = f"change stream history lost (error {exc.code}: {exc.details.get('errmsg') if exc.details else exc})"
                log.warning(
                    "history lost after seq %d: the server no longer has the changes since then (it restarted, or its oplog rolled over); "
                    "recording a gap marker and capturing from now on. Restores cannot cross the gap: take a fresh snapshot.",
                    self.writer.next_seq - 1,
                )
            except (pm.ConnectionFailure, pm.ServerSelectionTimeoutError) as exc:
                self.writer.sync()
                self.stats.reconnects += 1
                delay = backoff * (0.5 + random.random())
                log.warning("lost the connection to %s (%s); retrying in %.1f s", redact(self.uri), str(exc).split(",")[0], delay)
                self._stop.wait(delay)
                backoff = min(self.max_backoff, backoff * 2)

    def _record_gap(self, stream: ChangeStream[Any], reason: str) -> None:
        assert self.writer is not None
        seq = self.writer.append_gap(reason, stream.resume_token, token_time(stream.resume_token))
        self.writer.sync()
        self.stats.gaps += 1
        log.warning("gap marker written at seq %d; taking a fresh snapshot so that restores can begin after it", seq)
        self._snapshot_soon("the snapshot after a gap")

    def _durable(self, seq: int) -> None:
        """Writer callback after an fsync: record how long those events took."""
        now = self.clock.now()
        with self._pending_lock:
            while self._pending and self._pending[0][0] <= seq:
                _, wall = self._pending.popleft()
                if wall is not None:
                    self.stats.lags.append((now - wall).total_seconds())

    def _drain(self, stream: ChangeStream[Any], client: pymongo.MongoClient) -> None:
        """Append events until stopped or the stream ends (invalidate).

        Every event is written at once; fsyncs are grouped (see WALWriter).
        Once stopped, it goes on past the server's operationTime at that
        moment, or until the stream has nothing more (or ``stop_grace`` runs
        out), so nothing acknowledged before the stop is left behind.
        """
        writer = self.writer
        assert writer is not None
        last_checkpoint = time.monotonic()
        stop_by: float | None = None
        stop_at: Timestamp | None = None  # the server's operationTime when asked to stop
        while stream.alive:
            if self._stop.is_set():
                if stop_by is None:
                    stop_by = time.monotonic() + self.stop_grace
                    stop_at = self._operation_time(client, max(0.1, self.stop_grace / 2))
                if time.monotonic() >= stop_by:
                    break
            event = stream.try_next()
            if event is None:
                if stop_by is not None:
                    reached = token_time(stream.resume_token)
                    if stop_at is None or reached is None or reached >= stop_at:
                        break  # caught up with what the server had when asked to stop
                    continue  # an empty batch before the stream reached the stop: keep reading (until stop_grace)
                token = stream.resume_token
                if token is not None and token != writer.last_token and time.monotonic() - last_checkpoint >= self.checkpoint_interval:
                    writer.checkpoint(token, token_time(token))
                    self.stats.checkpoints += 1
                    last_checkpoint = time.monotonic()
                writer.commit(flush=True)  # idle: hand everything buffered to the file now
                continue
            if writer.last_token is not None and event["_id"] == writer.last_token:
                continue  # the resume point itself, delivered again
            seq = writer.append_event(event)
            with self._pending_lock:
                self._pending.append((seq, event.get("wallTime")))
            self.stats.events += 1
            if event["operationType"] in DOCUMENT_CHANGES:
                self.stats.changes += 1
                self.stats.last_change_seq = seq
            self.stats.first_seq = self.stats.first_seq or seq
            self.stats.last_seq = seq
            writer.commit(force_sync=event["operationType"] == "invalidate")
            if stop_at is not None and event["clusterTime"] > stop_at:
                break  # past the last change acknowledged before the stop
        token = stream.resume_token
        if stop_by is not None and token is not None and token != writer.last_token:
            writer.checkpoint(token, token_time(token))  # the WAL covers up to the stop
            self.stats.checkpoints += 1
        writer.sync()

    @staticmethod
    def _operation_time(client: pymongo.MongoClient, timeout: float) -> Timestamp | None:
        """The server's newest operationTime, or None if it cannot say within ``timeout`` s."""
        try:
            with pymongo.timeout(timeout):
                reply = client.admin.command("ping")
        except pm.PyMongoError:
            return None
        at = reply.get("operationTime")
        return at if isinstance(at, Timestamp) else None
