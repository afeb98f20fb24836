"""Appending to the write-ahead log: framing, group commit, rotation, recovery.

One :class:`WALWriter` per home (the caller holds the home's lock).  Records
are buffered and written by :meth:`WALWriter.commit`, which also ``fsync``s
when the last fsync is older than ``fsync_interval`` (group commit); a record
is durable once a commit has synced it.  What a crash can lose:

- ``kill -9`` of the writer: only records not yet committed, which the
  change stream delivers again on restart (the WAL resumes from its own last
  resume token), so no event is lost or doubled;
- a power cut: also what was written but not yet synced, at most
  ``fsync_interval`` of events; those too come back from the server's oplog
  on restart, provided the oplog still holds them.

On open, a torn tail (a record cut off by a crash, or bytes after the last
record that hold no complete record) is truncated with a warning; damage
anywhere else raises WALCorruptError and nothing is written (open reads and
checks the whole WAL, so it takes time in proportion to the WAL kept locally).
A segment is sealed when it reaches ``segment_bytes`` or ``segment_seconds``:
a seal record with the hash of everything before it, then a zstd copy made
under a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import bson
from bson.datetime_ms import DatetimeMS
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from . import __version__
from .clock import Clock, SystemClock
from .errors import WALCorruptError
from .wal import FORMAT, RAW, FrameError, Segment, frame, list_segments, segment_name, verify

log = logging.getLogger("walkit.wal")

DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
DEFAULT_SEGMENT_SECONDS = 3600.0
DEFAULT_FSYNC_INTERVAL = 0.2
WRITE_CHUNK = 64 * 1024  # while busy, write to the file in chunks of this size ...
WRITE_PAUSE = 0.002  # ... or when the previous write is this old
ADVICE = (
    "nothing was written. Run `walkit verify` to see every problem; move the damaged file, and every "
    "segment after it, out of the WAL folder (keep them) and restart capture, which resumes after the "
    "last intact segment (and records a gap if the server no longer has the changes since then)"
)
MISSING_ADVICE = (
    "nothing was written. Put the file back, or move every segment after the gap out of the WAL folder "
    "(keep them) and restart capture, which resumes after the last segment before the gap"
)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WALWriter:
    """The single appender of one WAL folder."""

    def __init__(
        self,
        wal_dir: Path,
        *,
        clock: Clock | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        segment_seconds: float = DEFAULT_SEGMENT_SECONDS,
        fsync_interval: float = DEFAULT_FSYNC_INTERVAL,
        warn: Callable[[str], None] = log.warning,
    ) -> None:
        self.dir = Path(wal_dir)
        self.clock = clock or SystemClock()
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self.fsync_interval = fsync_interval
        self.warn = warn
        self.next_seq = 1
        #: The newest resume token in the WAL, its clusterTime and whether it is an invalidate.
        self.last_token: RawBSONDocument | None = None
        self.last_ct: Timestamp | None = None
        self.last_invalidate = False
        self.last_gap = False
        self._buffer = bytearray()
        self._fd: int | None = None
        self._index = 0
        self._digest = hashlib.sha256()
        self._size = 0
        self._created: datetime | None = None
        self._rotate_at: datetime | None = None
        self._data_records = 0
        self._last_sync = time.monotonic()
        self.durable_seq = 0
        self._written_seq = 0
        self._last_write = 0.0
        self._io = threading.RLock()
        self._closed = threading.Event()
        #: Called with the newest durable seq after every fsync (from any thread).
        self.on_durable: Callable[[int], None] = lambda seq: None

    # -- opening -------------------------------------------------------------------
    def open(self) -> WALWriter:
        """Check the whole WAL (as :func:`walkit.wal.verify` does), finish an interrupted
        seal, truncate a torn tail, and get ready to append.  On damage, WALCorruptError
        and no file is changed."""
        self.dir.mkdir(parents=True, exist_ok=True)
        listing = list_segments(self.dir)
        if listing.strangers:
            raise WALCorruptError(listing.strangers[0].name, 0, "this file does not belong in the WAL folder", "move it elsewhere and start again; nothing was written")
        segments = listing.segments
        for a, b in zip(segments, segments[1:], strict=False):
            if b.index != a.index + 1:
                raise WALCorruptError(segment_name(a.index + 1, True), 0, f"segment is missing (found {a.name} and then {b.name})", MISSING_ADVICE)
        report = verify(self.dir)
        if report.problems:
            first = report.problems[0]
            more = f" (and {len(report.problems) - 1} more problems)" if len(report.problems) > 1 else ""
            raise WALCorruptError(first.file, first.offset or 0, first.reason + more, ADVICE)
        for leftover in self.dir.glob("seg-*.tmp"):
            leftover.unlink()  # a zstd copy cut short: its open segment is still there
        prev_hash, first_seq = "", 1
        for seg in segments:
            if seg.sealed and seg.path.with_suffix("").exists():
                seg.path.with_suffix("").unlink()  # the zstd copy was renamed in: the open file is redundant
        sealed = [s for s in segments if s.sealed]
        opened = [s for s in segments if not s.sealed]
        if len(opened) > 1 or (opened and sealed and opened[0].index < sealed[-1].index):
            raise WALCorruptError(opened[0].name, 0, "an unsealed segment is followed by others", ADVICE)
        if sealed:
            self._find_token(sealed[:-1])
            prev_hash, first_seq = self._read_sealed_tail(sealed[-1])
        if opened:
            self._recover_open(opened[0], prev_hash, first_seq)
        else:
            self._start_segment((sealed[-1].index + 1) if sealed else 1, prev_hash, first_seq)
        self._written_seq = self.durable_seq = self.next_seq - 1
        if self.fsync_interval > 0:
            threading.Thread(target=self._syncer, name="walkit-wal-syncer", daemon=True).start()
        return self

    def _read_sealed_tail(self, seg: Segment) -> tuple[str, int]:
        """The seal hash and next seq after the newest sealed segment (checked)."""
        seal = None
        try:
            for rec in seg.records():
                self._note(rec)
                if rec.kind == "s":
                    seal = rec
        except FrameError as exc:
            raise WALCorruptError(seg.name, exc.offset, exc.reason, ADVICE) from None
        except Exception as exc:
            raise WALCorruptError(seg.name, 0, f"cannot be read: {exc}", ADVICE) from None
        if seal is None:
            raise WALCorruptError(seg.name, 0, "sealed segment has no seal record", ADVICE)
        return str(seal.get("sha256")), int(seal.get("last_seq")) + 1

    def _find_token(self, older: list[Segment]) -> None:
        """The newest resume token before the last sealed segment, which may hold none
        (only gaps without a token): without it a restart would begin from "now"."""
        for seg in reversed(older):
            found = None
            for rec in seg.records():
                if rec.kind in ("e", "c") or (rec.kind == "g" and rec.get("resume_tok") is not None):
                    found = rec
            if found is not None:
                self._note(found)
                return

    def _note(self, rec: Any) -> None:
        """Track the newest seq and resume token while reading existing records."""
        if rec.kind in ("e", "g"):
            self.next_seq = int(rec.get("seq")) + 1
            self.durable_seq = self.next_seq - 1
        if rec.kind == "e":
            self.last_token, self.last_ct = rec.get("tok"), rec.get("ct")
            self.last_invalidate = rec.get("ev", {}).get("operationType") == "invalidate"
            self.last_gap = False
        elif rec.kind == "c" or (rec.kind == "g" and rec.get("resume_tok") is not None):
            self.last_token = rec.get("tok") if rec.kind == "c" else rec.get("resume_tok")
            self.last_ct = rec.get("ct")
            self.last_invalidate = False
            self.last_gap = rec.kind == "g"
        elif rec.kind == "g":  # no new stream's token: keep the older one (resuming from it marks the gap again)
            self.last_gap = True

    def _recover_open(self, seg: Segment, prev_hash: str, first_seq: int) -> None:
        good = 0
        header = None
        sealed = False
        try:
            for rec in seg.records():
                if header is None:
                    if rec.kind != "h":
                        raise WALCorruptError(seg.name, rec.offset, "the segment does not start with a header", ADVICE)
                    header = rec
                    if prev_hash and rec.get("prev") != prev_hash:
                        raise WALCorruptError(seg.name, 0, "its header does not chain to the previous segment", ADVICE)
                if rec.kind == "s":
                    sealed = True
                else:
                    self._digest.update(frame(rec.raw))
                self._note(rec)
                if rec.kind in ("e", "g"):
                    self._data_records += 1
                good = rec.offset + rec.size
        except FrameError as exc:
            if not exc.torn:
                raise WALCorruptError(seg.name, exc.offset, exc.reason, ADVICE) from None
            self.warn(f"{seg.name}: truncating a torn tail at byte {exc.offset} ({exc.reason}); the change stream re-delivers it")
            with seg.path.open("r+b") as f:
                f.truncate(exc.offset)
                os.fsync(f.fileno())
            good = exc.offset
        if header is None:  # empty, or only a torn header: begin the segment afresh
            seg.path.unlink()
            self._digest = hashlib.sha256()
            self._start_segment(seg.index, prev_hash, first_seq)
            return
        self._index = seg.index
        self._created = header.get("created")
        self._rotate_at = self._created + timedelta(seconds=self.segment_seconds) if isinstance(self._created, datetime) else None
        self._size = good
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
        if sealed:  # crashed between the seal record and the zstd copy: finish it
            self._compress_and_start_next(self._digest.hexdigest())

    def _start_segment(self, index: int, prev_hash: str, first_seq: int) -> None:
        self._index = index
        self._digest = hashlib.sha256()
        self._size = 0
        self._data_records = 0
        self._created = self.clock.now()
        self._rotate_at = self._created + timedelta(seconds=self.segment_seconds)
        path = self.dir / segment_name(index, False)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o644)
        _fsync_dir(self.dir)
        header = {"k": "h", "segment": index, "first_seq": Int64(first_seq), "prev": prev_hash, "created": self._created, "format": FORMAT, "walkit": __version__}
        self._add(bson.encode(header))
        self.sync()

    # -- appending ---------------------------------------------------------------------
    def _add(self, body: bytes) -> None:
        data = frame(body)
        self._buffer += data
        self._digest.update(data)
        self._size += len(data)

    def append_event(self, event: RawBSONDocument) -> int:
        """Buffer one change event (raw, as the server sent it); returns its seq."""
        seq = self.next_seq
        ct, tok = event["clusterTime"], event["_id"]
        wt = event.get("wallTime") or self.clock.now()
        self._add(_event_body(seq, ct, wt, tok, event))
        self.next_seq += 1
        self._data_records += 1
        self.last_token, self.last_ct = tok, ct
        self.last_invalidate = event["operationType"] == "invalidate"
        self.last_gap = False
        return seq

    def append_gap(self, reason: str, resume_token: Any = None, resume_ct: Timestamp | None = None) -> int:
        """Record that history was lost after the newest record; returns its seq.

        ``resume_token`` is where the new stream starts, so a restart resumes there.
        Without one the older token is kept, as a reopened writer keeps it: a
        restart that resumes from it fails again and marks the gap again,
        where starting from "now" would skip changes silently.
        """
        seq = self.next_seq
        body = {"k": "g", "seq": Int64(seq), "wt": self.clock.now(), "reason": reason, "after_tok": self.last_token, "after_ct": self.last_ct, "resume_tok": resume_token, "ct": resume_ct}
        self._add(bson.encode(body))
        self.next_seq += 1
        self._data_records += 1
        if resume_token is not None:
            self.last_token, self.last_ct, self.last_invalidate = resume_token, resume_ct, False
        self.last_gap = True
        return seq

    def checkpoint(self, token: Any, cluster_time: Timestamp | None) -> None:
        """Persist an idle stream's postBatchResumeToken (no seq)."""
        body = {"k": "c", "after_seq": Int64(self.next_seq - 1), "wt": self.clock.now(), "tok": token, "ct": cluster_time}
        self._add(bson.encode(body))
        self.last_token, self.last_ct, self.last_invalidate, self.last_gap = token, cluster_time, False, False

    def commit(self, force_sync: bool = False, flush: bool = False) -> bool:
        """Hand buffered records to the file; fsync if the last fsync is older
        than ``fsync_interval`` (or if forced).  True when this call synced.

        While records arrive faster than every ``WRITE_PAUSE`` seconds they
        are written in chunks of ``WRITE_CHUNK`` bytes; ``flush=True`` (the
        caller is idle) writes at once.  Records written but not synced here
        are synced by the background syncer within ``fsync_interval``.
        """
        now = time.monotonic()
        sync_due = force_sync or now - self._last_sync >= self.fsync_interval
        busy = len(self._buffer) < WRITE_CHUNK and now - self._last_write < WRITE_PAUSE and not self._rotation_due()
        if busy and not (sync_due or flush):
            return False
        with self._io:
            if self._buffer:
                assert self._fd is not None
                data, self._buffer = bytes(self._buffer), bytearray()
                view = memoryview(data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                self._written_seq = self.next_seq - 1
            self._last_write = now
            synced = False
            if sync_due:
                synced = self._fsync()
            if self._rotation_due():
                self._seal()
                synced = True
        if synced:
            self.on_durable(self.durable_seq)
        return synced

    def sync(self) -> None:
        """Write and fsync everything now."""
        self.commit(force_sync=True)

    def _fsync(self) -> bool:
        assert self._fd is not None
        os.fsync(self._fd)
        self._last_sync = time.monotonic()
        self.durable_seq = self._written_seq
        return True

    def _syncer(self) -> None:
        """Trailing-edge group commit: fsync written records within fsync_interval."""
        while not self._closed.wait(self.fsync_interval / 2):
            with self._io:
                if self._fd is None or self.durable_seq >= self._written_seq:
                    continue
                if time.monotonic() - self._last_sync < self.fsync_interval / 2:
                    continue
                self._fsync()
                durable = self.durable_seq
            self.on_durable(durable)

    # -- rotation ------------------------------------------------------------------------
    def _rotation_due(self) -> bool:
        if self._data_records == 0:
            return False
        if self._size >= self.segment_bytes:
            return True
        return self._rotate_at is not None and self.clock.now() >= self._rotate_at

    def _seal(self) -> None:
        digest = self._digest.hexdigest()
        seal = {"k": "s", "segment": self._index, "last_seq": Int64(self.next_seq - 1), "records": self._data_records, "sha256": digest, "sealed": self.clock.now()}
        data = frame(bson.encode(seal))
        assert self._fd is not None
        os.write(self._fd, data)
        self._fsync()
        self._compress_and_start_next(digest)

    def _compress_and_start_next(self, digest: str) -> None:
        import zstandard

        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        src = self.dir / segment_name(self._index, False)
        dst = self.dir / segment_name(self._index, True)
        tmp = dst.with_name(dst.name + ".tmp")
        with src.open("rb") as fin, tmp.open("wb") as fout:
            zstandard.ZstdCompressor(level=1, threads=-1).copy_stream(fin, fout)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
        _fsync_dir(self.dir)
        src.unlink()
        _fsync_dir(self.dir)
        self._start_segment(self._index + 1, digest, self.next_seq)

    def close(self) -> None:
        """Write and fsync everything; the open segment stays open for the next run."""
        self._closed.set()
        if self._fd is not None:
            self.sync()
            with self._io:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> WALWriter:
        return self.open() if self._fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()


_EVENT_KIND = b"\x02k\x00" + struct.pack("<i", 2) + b"e\x00"
_I64, _TS, _I32 = struct.Struct("<q"), struct.Struct("<II"), struct.Struct("<i")


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)


def _millis(dt: datetime) -> int:
    """BSON datetime milliseconds, as bson computes them (naive means UTC)."""
    if dt.tzinfo is None:
        return (dt - _EPOCH_NAIVE) // _MS
    return (dt - _EPOCH) // _MS


def _raw_bytes(doc: Any) -> bytes:
    return doc.raw if isinstance(doc, RawBSONDocument) else bson.encode(doc)


def _event_body(seq: int, ct: Timestamp, wt: Any, tok: Any, event: RawBSONDocument) -> bytes:
    """The BSON of ``{k: "e", seq, ct, wt, tok, ev}``, built from the raw parts.

    The same bytes ``bson.encode`` gives for that document, without decoding
    or re-encoding the event (the hot path of capture).
    """
    millis = int(wt) if isinstance(wt, DatetimeMS) else _millis(wt)
    elements = b"".join((
        _EVENT_KIND,
        b"\x12seq\x00", _I64.pack(seq),
        b"\x11ct\x00", _TS.pack(ct.inc, ct.time),
        b"\x09wt\x00", _I64.pack(millis),
        b"\x03tok\x00", _raw_bytes(tok),
        b"\x03ev\x00", _raw_bytes(event),
    ))
    return _I32.pack(len(elements) + 5) + elements + b"\x00"


def raw_event(doc: dict[str, Any]) -> RawBSONDocument:
    """A change event as raw BSON (what capture receives from pymongo)."""
    return RawBSONDocument(bson.encode(doc), RAW)
