"""The sandbox's bounded in-memory oplog, cluster time and resume tokens.

Each write appends one :class:`Entry`, and so does each change of a
collection's metadata (create, createIndexes, dropIndexes, collMod: the
:data:`EXPANDED_OPS`, which only streams opened with ``showExpandedEvents``
show, yet which take their place and clusterTime in the oplog as in
MongoDB's); all entries of one committed
transaction share a clusterTime and a wallTime (the commit's, as they come
from MongoDB's single ``applyOps`` oplog entry) and are told apart by
``txn_index``.  The oplog keeps the newest ``max_entries`` oplog entries,
counting a whole transaction as one, as MongoDB does, so a transaction is
never split.  Once an entry falls off, a change stream that would need it
gets error 286 (ChangeStreamHistoryLost), exactly as MongoDB does when its
oplog has rolled over.  History also starts at the server's start: tokens
from an earlier server instance are lost.

Resume tokens are ``{"_data": <hex>}`` like MongoDB's: opaque to clients,
ordered by string comparison, encoding (clusterTime, txn index, kind).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson.timestamp import Timestamp

from walkit.clock import Clock

#: Token kinds; the order matters: an invalidate sorts after its cause and a
#: high-water mark after every event at its clusterTime.
KIND_EVENT = 0x00
KIND_INVALIDATE = 0x01
KIND_HIGH_WATER = 0xFF

MAX_INDEX = 0xFFFFFFFF

#: Operations only a stream with ``showExpandedEvents`` shows.
EXPANDED_OPS = frozenset({"create", "createIndexes", "dropIndexes", "modify"})

Position = tuple[int, int, int]  # (ts.time, ts.inc, txn_index)


@dataclass
class Entry:
    """One logged change, before it is shaped into a change event."""

    ts: Timestamp
    wall: datetime
    op: str  # insert update replace delete drop rename dropDatabase, or one of EXPANDED_OPS
    db: str
    coll: str | None = None
    doc_key: dict[str, Any] | None = None
    pre: dict[str, Any] | None = None  # image before the change (update/replace/delete)
    post: dict[str, Any] | None = None  # image after the change (insert/update/replace)
    update: dict[str, Any] | None = None  # updateDescription
    to: tuple[str, str] | None = None  # rename target (db, coll)
    images: bool = False  # the collection had changeStreamPreAndPostImages
    uuid: Any = None  # the collection's UUID (collectionUUID); None for dropDatabase
    desc: dict[str, Any] | None = None  # operationDescription (DDL and rename)
    state_before: dict[str, Any] | None = None  # stateBeforeChange (modify)
    lsid: dict[str, Any] | None = None
    txn_number: int | None = None
    txn_index: int = 0

    @property
    def position(self) -> Position:
        return (self.ts.time, self.ts.inc, self.txn_index)


def encode_token(pos: Position, kind: int, epoch: str) -> dict[str, str]:
    """The resume token for an event (or high-water mark) at ``pos``.

    ``epoch`` names the server instance, so a token from before a restart is
    recognised as lost history even when its clusterTime looks recent.
    """
    t, i, idx = pos
    return {"_data": f"82{t:08X}{i:08X}{idx:08X}{kind:02X}{epoch}"}


def decode_token(token: Any) -> tuple[Position, int, str]:
    """Parse a token made by :func:`encode_token`: (position, kind, epoch)."""
    data = token.get("_data") if isinstance(token, dict) else None
    if not isinstance(data, str) or len(data) != 36 or not data.startswith("82"):
        raise ValueError(f"not a resume token of this server: {token!r}")
    try:
        t, i, idx, kind = int(data[2:10], 16), int(data[10:18], 16), int(data[18:26], 16), int(data[26:28], 16)
    except ValueError:
        raise ValueError(f"not a resume token of this server: {token!r}") from None
    return (t, i, idx), kind, data[28:]


class Oplog:
    """Bounded, append-only log of entries with a monotonic cluster time."""

    def __init__(self, clock: Clock, max_entries: int, lock: threading.RLock) -> None:
        if max_entries < 1:
            raise ValueError("the oplog must keep at least one entry")
        self.clock = clock
        self.max_entries = max_entries
        #: This server instance, written into every resume token.
        self.epoch = os.urandom(4).hex().upper()
        self.entries: deque[Entry] = deque()
        #: How many oplog entries ``entries`` holds (one per write or transaction).
        self.groups = 0
        #: Shares the engine's lock: wait on it (released meanwhile) for appends.
        self.changed = threading.Condition(lock)
        start = self._clock_secs()
        #: The server's start counts as the first operation, as MongoDB's
        #: initial no-op oplog entry does; history begins after it.
        self._last = Timestamp(start, 1)
        #: Positions at or before the floor are no longer in the oplog.
        self.floor: Position = (start, 1, MAX_INDEX)
        self.appended = 0

    def _clock_secs(self) -> int:
        return int(self.clock.now().timestamp())

    def next_ts(self, secs: int | None = None) -> Timestamp:
        """A new clusterTime, strictly after every earlier one (``secs``: the clock's seconds, if read)."""
        if secs is None:
            secs = self._clock_secs()
        if secs > self._last.time:
            self._last = Timestamp(secs, 1)
        else:
            self._last = Timestamp(self._last.time, self._last.inc + 1)
        return self._last

    @property
    def cluster_time(self) -> Timestamp:
        """The latest clusterTime handed out (the operationTime of replies)."""
        return self._last

    def append(self, entries: list[Entry]) -> None:
        """Append one oplog entry's changes (one write, or one whole transaction
        sharing a clusterTime), stamp them with one wallTime and wake readers."""
        if not entries:
            return
        with self.changed:
            wall = self.clock.now()
            for entry in entries:
                entry.wall = wall
                self.entries.append(entry)
            self.appended += len(entries)
            self.groups += 1
            while self.groups > self.max_entries:
                self._drop_oldest()
            self.changed.notify_all()

    def append_one(self, entry: Entry) -> None:
        """:meth:`next_ts` and :meth:`append` for one change, reading the clock once."""
        with self.changed:
            wall = self.clock.now()
            entry.ts = self.next_ts(int(wall.timestamp()))
            entry.wall = wall
            self.entries.append(entry)
            self.appended += 1
            self.groups += 1
            while self.groups > self.max_entries:
                self._drop_oldest()
            self.changed.notify_all()

    def _drop_oldest(self) -> None:
        """Truncate the oldest oplog entry: one write, or a whole transaction."""
        last = self.entries.popleft()
        while self.entries and self.entries[0].ts == last.ts:
            last = self.entries.popleft()
        self.floor = last.position
        self.groups -= 1

    def high_water(self) -> Position:
        """A position after every entry logged so far."""
        return (self._last.time, self._last.inc, MAX_INDEX)

    def lost(self, after: Position) -> bool:
        """True when some entry after ``after`` has fallen off (or predates the server)."""
        return after < self.floor

    def token(self, pos: Position, kind: int = KIND_EVENT) -> dict[str, str]:
        """This server's resume token for ``pos``."""
        return encode_token(pos, kind, self.epoch)

    def check(self, after: Position) -> None:
        """Raise ChangeStreamHistoryLost (286) when :meth:`lost` says so."""
        if self.lost(after):
            from walkit.sandbox.errors import CommandError

            raise CommandError(286, "Resume of change stream was not possible, as the resume point may no longer be in the oplog.")

    def find(self, pos: Position) -> Entry | None:
        """The entry at exactly ``pos``, if the oplog still holds it."""
        found = self.read_after((pos[0], pos[1], pos[2] - 1), 1)
        return found[0] if found and found[0].position == pos else None

    def read_after(self, after: Position, limit: int) -> list[Entry]:
        """Up to ``limit`` entries strictly after ``after``, oldest first."""
        entries = self.entries
        if not entries or entries[-1].position <= after:
            return []
        # Binary search over the deque's positions (entries are in order).
        lo, hi = 0, len(entries)
        while lo < hi:
            mid = (lo + hi) // 2
            if entries[mid].position <= after:
                lo = mid + 1
            else:
                hi = mid
        n = len(entries)
        if lo >= n - limit:  # the newest entries (what a stream that keeps up reads): from the right end
            newest = list(itertools.islice(reversed(entries), n - lo))
            newest.reverse()
            return newest
        return list(itertools.islice(entries, lo, lo + limit))  # (a deque walks from the left)
