"""Appending to the write-ahead log: framing, group commit, rotation, recovery.

One :class:`WALWriter` per home (the caller holds the home's lock).  Records
are buffered and written by :meth:`WALWriter.commit`; a syncer thread
``fsync``s written records within ``fsync_interval``, or as soon as
``SYNC_BYTES`` are unsynced (group commit), and ``on_durable`` reports the
newest durable seq.  What a crash can lose:

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
a seal record with the hash of everything before it; the next segment begins
at once and a background thread replaces the sealed file by a zstd copy
(made under a temporary name and renamed into place).  ``close`` waits for
that; a crash leaves the sealed ``.wal``, which the next ``open`` compresses.
Memory: the open segment's bytes (up to ``COMPRESS_WHOLE``), so sealing need
not read the file back, plus one segment being compressed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
from bson.datetime_ms import DatetimeMS
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

from walkit._fs import fsync_dir
from walkit._version import __version__
from walkit.clock import Clock, SystemClock
from walkit.errors import WALCorruptError
from walkit.wal.format import FORMAT, FRAME, RAW, FrameError, Segment, frame, list_segments, segment_name, verify

log = logging.getLogger("walkit.wal")

DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
DEFAULT_SEGMENT_SECONDS = 3600.0
DEFAULT_FSYNC_INTERVAL = 0.2
WRITE_CHUNK = 64 * 1024  # while busy, write to the file in chunks of this size ...
WRITE_PAUSE = 0.002  # ... or when the previous write is this old
COMPRESS_WHOLE = 64 * 1024 * 1024  # sealed segments up to this size are compressed in memory, in one call
SYNC_BYTES = 4 * 1024 * 1024  # the syncer fsyncs early once this much is written and not synced
ADVICE = (
    "nothing was written. Run `walkit verify` to see every problem; move the damaged file, and every "
    "segment after it, out of the WAL folder (keep them) and restart capture, which resumes after the "
    "last intact segment (and records a gap if the server no longer has the changes since then)"
)
MISSING_ADVICE = (
    "nothing was written. Put the file back, or move every segment after the gap out of the WAL folder "
    "(keep them) and restart capture, which resumes after the last segment before the gap"
)


#: Background compressions by WAL folder, so that a writer opened on a folder (in this
#: process) never races one still compressing a segment of it.
_COMPRESSING: dict[Path, threading.Thread] = {}
_COMPRESSING_LOCK = threading.Lock()


def _wait_for_compression(wal_dir: Path) -> None:
    with _COMPRESSING_LOCK:
        thread = _COMPRESSING.get(wal_dir.resolve())
    if thread is not None and thread is not threading.current_thread():
        thread.join()


def compress_segment(wal_dir: Path, index: int, whole: bytes | bytearray | None = None) -> None:
    """Replace the sealed ``seg-N.wal`` by ``seg-N.wal.zst`` (one zstd frame of the same bytes).

    ``whole``: the segment's bytes as the writer wrote them, which saves
    reading the file back (ignored unless its length is the file's).
    Crash-safe at every step: the copy is written under a temporary name,
    synced and renamed in before the original is removed; until then readers
    and the writer use the original.
    """
    import zstandard

    src = wal_dir / segment_name(index, False)
    dst = wal_dir / segment_name(index, True)
    tmp = dst.with_name(dst.name + ".tmp")
    cctx = zstandard.ZstdCompressor(level=1)
    size = src.stat().st_size
    with tmp.open("wb") as fout:
        if whole is not None and len(whole) == size:  # in one call, during which the GIL is released
            fout.write(cctx.compress(whole))
        elif size <= COMPRESS_WHOLE:
            fout.write(cctx.compress(src.read_bytes()))
        else:
            with src.open("rb") as fin:
                cctx.copy_stream(fin, fout, read_size=1 << 20, write_size=1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, dst)
    fsync_dir(wal_dir)
    src.unlink()  # not synced: if it comes back after a power cut, the next open removes it


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
        #: The open segment's bytes from file offset ``_seg_start``; ``_seg[:_flushed]`` is written.
        #: Kept whole (up to COMPRESS_WHOLE) so that sealing compresses it without reading the file back.
        self._seg = bytearray()
        self._seg_start = 0
        self._flushed = 0
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
        self._syncing = False
        self._io = threading.RLock()
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._unsynced = 0  # bytes written since the last fsync began
        #: Called with the newest durable seq after every fsync (from any thread).
        self.on_durable: Callable[[int], None] = lambda seq: None

    # -- opening -------------------------------------------------------------------
    def open(self) -> WALWriter:
        """Check the whole WAL (as :func:`walkit.wal.format.verify` does), finish an interrupted
        seal, truncate a torn tail, and get ready to append.  On damage, WALCorruptError
        and no file is changed."""
        self.dir.mkdir(parents=True, exist_ok=True)
        _wait_for_compression(self.dir)
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
            elif not seg.sealed and seg is not segments[-1]:  # sealed (verify checked), compression cut short
                compress_segment(self.dir, seg.index)
                seg.path, seg.sealed = self.dir / segment_name(seg.index, True), True
        sealed = [s for s in segments if s.sealed]
        opened = [s for s in segments if not s.sealed]
        if sealed:
            self._find_token(sealed[:-1])
            prev_hash, first_seq = self._read_sealed_tail(sealed[-1])
        if opened:
            self._recover_open(opened[0], prev_hash, first_seq)
        else:
            self._start_segment((sealed[-1].index + 1) if sealed else 1, prev_hash, first_seq)
        self._written_seq = self.durable_seq = self.next_seq - 1
        if self.fsync_interval > 0:
            self._syncing = True
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
        digest = hashlib.sha256()
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
                    digest.update(frame(rec.raw))
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
            self._start_segment(seg.index, prev_hash, first_seq)
            return
        self._index = seg.index
        self._seg, self._seg_start, self._flushed = bytearray(), good, 0  # begun by an earlier run
        self._created = header.get("created")
        self._rotate_at = self._created + timedelta(seconds=self.segment_seconds) if isinstance(self._created, datetime) else None
        self._size = good
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
        if sealed:  # crashed between the seal record and the next segment: finish it
            self._start_next(digest.hexdigest())
        else:
            self._digest = digest

    def _start_segment(self, index: int, prev_hash: str, first_seq: int) -> None:
        self._index = index
        self._digest = hashlib.sha256()
        self._seg, self._seg_start, self._flushed = bytearray(), 0, 0
        self._size = 0
        self._data_records = 0
        self._created = self.clock.now()
        self._rotate_at = self._created + timedelta(seconds=self.segment_seconds)
        path = self.dir / segment_name(index, False)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o644)
        fsync_dir(self.dir)
        header = {"k": "h", "segment": index, "first_seq": Int64(first_seq), "prev": prev_hash, "created": self._created, "format": FORMAT, "walkit": __version__}
        self._add(bson.encode(header))
        self.commit(flush=True)  # synced with the first records: a crash before that leaves an empty segment, begun afresh

    # -- appending ---------------------------------------------------------------------
    def _add(self, body: bytes) -> None:
        self._seg += FRAME.pack(len(body), zlib.crc32(body))
        self._seg += body
        self._size += FRAME.size + len(body)

    def append_event(self, event: RawBSONDocument) -> int:
        """Buffer one change event (raw, as the server sent it); returns its seq."""
        seq = self.next_seq
        ct, tok, wt = event["clusterTime"], event["_id"], event.get("wallTime")
        self._add(_event_body(seq, ct, wt if wt is not None else self.clock.now(), tok, event))
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
        # the syncer thread fsyncs within fsync_interval; inline only when forced, without a
        # syncer, or when the syncer has fallen far behind
        sync_due = force_sync or now - self._last_sync >= (2 * self.fsync_interval if self._syncing else self.fsync_interval)
        busy = len(self._seg) - self._flushed < WRITE_CHUNK and now - self._last_write < WRITE_PAUSE and not self._rotation_due()
        if busy and not (sync_due or flush):
            return False
        with self._io:
            if len(self._seg) > self._flushed:
                self._digest.update(self._write_pending())  # the seal's hash: of exactly the bytes written
                self._written_seq = self.next_seq - 1
                if self._unsynced >= SYNC_BYTES:
                    self._wake.set()  # the syncer flushes it now, so a seal's fsync has little left to do
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

    def _write_pending(self) -> bytes:
        """Write the records not yet written; returns their bytes."""
        assert self._fd is not None
        data = bytes(self._seg[self._flushed :])
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._flushed = len(self._seg)
        self._unsynced += len(data)
        if self._seg_start or self._flushed > COMPRESS_WHOLE:  # not kept whole: keep only what is unwritten
            self._seg_start += self._flushed
            self._seg, self._flushed = bytearray(), 0
        return data

    def sync(self) -> None:
        """Write and fsync everything now."""
        self.commit(force_sync=True)

    def _fsync(self) -> bool:
        assert self._fd is not None
        os.fsync(self._fd)
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self.durable_seq = max(self.durable_seq, self._written_seq)
        return True

    def _syncer(self) -> None:
        """Group commit: fsync written records within fsync_interval.  The fsync runs on
        a duplicate descriptor outside the lock, so appending goes on meanwhile."""
        while True:
            self._wake.wait(self.fsync_interval / 2)
            self._wake.clear()
            if self._closed.is_set():
                return
            with self._io:
                if self._fd is None or self.durable_seq >= self._written_seq:
                    continue
                if self._unsynced < SYNC_BYTES and time.monotonic() - self._last_sync < self.fsync_interval / 2:
                    continue
                fd, target, self._unsynced = os.dup(self._fd), self._written_seq, 0
            try:
                os.fsync(fd)  # covers everything written before it began
            finally:
                os.close(fd)
            with self._io:
                self._last_sync = time.monotonic()
                self.durable_seq = max(self.durable_seq, target)
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
        self._seg += frame(bson.encode(seal))
        self._write_pending()
        self._fsync()
        self._start_next(digest)

    def _start_next(self, digest: str) -> None:
        """Close the sealed segment, begin the next one, and compress the sealed one
        in the background (one compression at a time per folder)."""
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        sealed, whole = self._index, (self._seg if self._seg_start == 0 else None)
        self._start_segment(sealed + 1, digest, self.next_seq)
        _wait_for_compression(self.dir)
        thread = threading.Thread(target=self._compress_quietly, args=(sealed, whole), name=f"walkit-wal-seal-{sealed}", daemon=True)
        with _COMPRESSING_LOCK:
            _COMPRESSING[self.dir.resolve()] = thread
        thread.start()

    def _compress_quietly(self, index: int, whole: bytearray | None) -> None:
        try:
            compress_segment(self.dir, index, whole)
        except Exception as exc:  # the sealed .wal stays; the next open compresses it
            self.warn(f"{segment_name(index, False)}: sealed but not compressed ({exc}); the next start compresses it")

    def wait_for_seal(self) -> None:
        """Wait until the segments sealed so far are compressed (background work)."""
        _wait_for_compression(self.dir)

    def close(self) -> None:
        """Write and fsync everything and finish compressing sealed segments;
        the open segment stays open for the next run."""
        self._closed.set()
        self._wake.set()
        if self._fd is not None:
            self.sync()
            with self._io:
                os.close(self._fd)
                self._fd = None
        self.wait_for_seal()

    def __enter__(self) -> WALWriter:
        return self.open() if self._fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()


_EVENT_KIND = b"\x02k\x00" + struct.pack("<i", 2) + b"e\x00"
_I64, _TS, _I32 = struct.Struct("<q"), struct.Struct("<II"), struct.Struct("<i")


#: An event record up to its ``tok`` value: size, k, seq, ct, wt and the tok element's name.
_EVENT_HEAD = struct.Struct("<i14sq4sII4sq5s")
_SEQ_NAME, _CT_NAME, _WT_NAME, _TOK_NAME = _EVENT_KIND + b"\x12seq\x00", b"\x11ct\x00", b"\x09wt\x00", b"\x03tok\x00"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)


def _millis(dt: datetime) -> int:
    """BSON datetime milliseconds, as bson computes them (naive means UTC)."""
    if dt.tzinfo is None:
        return (dt - _EPOCH_NAIVE) // _MS
    return (dt - _EPOCH) // _MS


def _raw_bytes(doc: Any) -> bytes:
    return bytes(doc.raw) if isinstance(doc, RawBSONDocument) else bson.encode(doc)


def _event_body(seq: int, ct: Timestamp, wt: Any, tok: Any, event: RawBSONDocument) -> bytes:
    """The BSON of ``{k: "e", seq, ct, wt, tok, ev}``, built from the raw parts.

    The same bytes ``bson.encode`` gives for that document, without decoding
    or re-encoding the event (the hot path of capture).
    """
    millis = int(wt) if isinstance(wt, DatetimeMS) else _millis(wt)
    tok_raw = tok.raw if type(tok) is RawBSONDocument else _raw_bytes(tok)
    ev_raw = event.raw if type(event) is RawBSONDocument else _raw_bytes(event)
    head = _EVENT_HEAD.pack(60 + len(tok_raw) + len(ev_raw), _SEQ_NAME, seq, _CT_NAME, ct.inc, ct.time, _WT_NAME, millis, _TOK_NAME)
    return b"".join((head, tok_raw, b"\x03ev\x00", ev_raw, b"\x00"))


def raw_event(doc: dict[str, Any]) -> RawBSONDocument:
    """A change event as raw BSON (what capture receives from pymongo)."""
    return RawBSONDocument(bson.encode(doc), RAW)
