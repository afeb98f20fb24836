"""The write-ahead log's on-disk format, and reading and verifying it.

A WAL is a folder of segments ``seg-00000001.wal`` ... ; every segment but
the last is sealed and compressed to ``seg-NNNNNNNN.wal.zst`` (one zstd frame
of exactly the bytes the open segment had); a sealed segment may stay a
``.wal`` (ending with its seal record) until the writer's background
compression renames the copy in.  A segment is a run of frames::

    frame = u32 length | u32 crc32(body) | body          (little-endian)
    body  = one BSON document, "k" saying which record it is:
      h  header      first in every segment: segment, first_seq, prev (hash), created, format
      e  event       seq, ct (clusterTime), wt (wallTime), tok (resume token), ev (the event, raw)
      g  gap         seq, wt, reason, after_tok: history was lost here (error 286)
      c  checkpoint  after_seq, ct, tok: the stream's postBatchResumeToken while idle
      s  seal        last in a sealed segment: last_seq, records, sha256 of all bytes before it

Events and gaps carry a sequence number, gapless across the whole WAL.  The
seal's hash of its segment is repeated as the next segment's ``prev``, so a
missing, reordered or altered segment breaks the chain.  :func:`verify`
checks every CRC, the chain, the seals and seq continuity.  A bad frame in the
open segment that no good frame follows is a *torn tail* (a write cut off by a
crash, or the zeros a power cut can leave): not yet part of the WAL, readers
stop before it and the writer truncates it.  A bad frame with good frames
after it is damage.  Guaranteed: the event bytes read back are the bytes
MongoDB sent.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import bson
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp

FORMAT = 1
FRAME = struct.Struct("<II")
MAX_RECORD = 64 * 1024 * 1024
SEGMENT_RE = re.compile(r"^seg-(\d{8})\.wal(\.zst)?$")
#: How records are decoded: nested documents stay raw, so events keep their bytes.
RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_AUTO)
#: How an event is decoded for looking at it: plain dicts all the way down.
PLAIN: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_AUTO)
DATA_KINDS = ("e", "g")


def segment_name(index: int, sealed: bool) -> str:
    return f"seg-{index:08d}.wal" + (".zst" if sealed else "")


def frame(body: bytes) -> bytes:
    return FRAME.pack(len(body), zlib.crc32(body)) + body


_KIND_AT = b"\x02k\x00\x02\x00\x00\x00"  # the writer puts k (a one-letter string) first ...
_SEQ_AT = b"\x12seq\x00"  # ... and an event's or gap's int64 seq right after it
_I64, _I32, _TS = struct.Struct("<q"), struct.Struct("<i"), struct.Struct("<II")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _datetime(millis: int) -> Any:
    """A BSON datetime as the RAW codec decodes it (aware UTC; DatetimeMS when out of range)."""
    try:
        return _EPOCH + timedelta(milliseconds=millis)
    except OverflowError:
        return DatetimeMS(millis)


class Record:
    """One record and where it lies; decoded only as far as it is asked.

    ``kind`` and ``seq`` are read at the fixed offsets where the writer puts
    them (falling back to a full decode), so scanning a WAL for a seq range
    does not decode the events it skips.
    """

    __slots__ = ("kind", "raw", "file", "offset", "size", "_body")

    def __init__(self, kind: str, raw: bytes, file: str, offset: int, size: int) -> None:
        self.kind, self.raw, self.file, self.offset, self.size = kind, raw, file, offset, size
        self._body: RawBSONDocument | None = None

    @property
    def body(self) -> RawBSONDocument:
        if self._body is None:
            self._body = RawBSONDocument(self.raw, RAW)
        return self._body

    @property
    def seq(self) -> int | None:
        if self.raw[13:18] == _SEQ_AT:
            return _I64.unpack_from(self.raw, 18)[0]
        value = self.body.get("seq")
        return int(value) if value is not None else None

    def get(self, key: str, default: Any = None) -> Any:
        if key in ("ev", "tok") and self.kind == "e" and self._body is None:
            found = self._slice(key)
            if found is not None:
                return RawBSONDocument(found, RAW)
        return self.body.get(key, default)

    @property
    def ct(self) -> Any:
        """The record's clusterTime (an event's without decoding it), or None."""
        if self.kind == "e" and self.raw[26:30] == b"\x11ct\x00":
            inc, time = _TS.unpack_from(self.raw, 30)
            return Timestamp(time, inc)
        return self.body.get("ct")

    @property
    def wt(self) -> Any:
        """The record's wallTime (an event's without decoding it), or None."""
        if self.kind == "e" and self.raw[38:42] == b"\x09wt\x00":
            return _datetime(_I64.unpack_from(self.raw, 42)[0])
        return self.body.get("wt")

    def event(self) -> dict[str, Any]:
        """An event record's event as plain dicts (one C-speed decode); its exact
        bytes stay available as ``get("ev").raw``."""
        found = self._slice("ev") if self.kind == "e" else None
        return bson.decode(found if found is not None else self.body["ev"].raw, PLAIN)

    def _slice(self, key: str) -> bytes | None:
        """An event record's ``tok`` or ``ev`` bytes, cut where the writer put them."""
        raw = self.raw
        if raw[26:30] != b"\x11ct\x00" or raw[38:42] != b"\x09wt\x00" or raw[50:55] != b"\x03tok\x00":
            return None
        tok_end = 55 + _I32.unpack_from(raw, 55)[0]
        if key == "tok":
            return raw[55:tok_end]
        if raw[tok_end : tok_end + 4] != b"\x03ev\x00":
            return None
        start = tok_end + 4
        return raw[start : start + _I32.unpack_from(raw, start)[0]]


def _kind(body: bytes) -> str:
    if body[4:11] == _KIND_AT and body[12] == 0:
        return chr(body[11])
    return RawBSONDocument(body, RAW)["k"]


class FrameError(Exception):
    """A frame that cannot be read: ``torn`` when it is cut off by the end of the data."""

    def __init__(self, offset: int, reason: str, torn: bool) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.torn = torn


def _frame_follows(data: bytes) -> bool:
    """Whether a complete frame with a good CRC starts anywhere in ``data`` after its first byte."""
    end = len(data) - FRAME.size
    for at in range(1, end - 4):
        length, crc = FRAME.unpack_from(data, at)
        # a body is a BSON document, which starts with its own length: a cheap filter before the CRC
        if 5 <= length <= end - at and data[at : at + 4] == data[at + FRAME.size : at + FRAME.size + 4]:
            if zlib.crc32(data[at + FRAME.size : at + FRAME.size + length]) == crc:
                return True
    return False


def _torn(stream: IO[bytes], consumed: bytes) -> bool:
    """A bad frame is a torn tail when no good frame follows it: a write cut off by a crash,
    or what a power cut leaves after the last write (zeros, stale bytes)."""
    try:
        rest = consumed + stream.read()
    except Exception:  # a damaged compressed stream: not a tail that a crash can leave
        return False
    return not _frame_follows(rest)


READ_CHUNK = 1 << 20


def iter_frames(stream: IO[bytes], name: str, start: int = 0) -> Iterator[Record]:
    """Records from a stream of frames (read in chunks of ``READ_CHUNK``); FrameError at the first bad one."""
    offset = start
    buf, pos = b"", 0
    unpack, crc32, head = FRAME.unpack_from, zlib.crc32, FRAME.size
    while True:
        if len(buf) - pos < head:
            buf, pos = buf[pos:], 0
            while len(buf) < head and (more := stream.read(READ_CHUNK)):
                buf += more  # at most a frame header's worth of joining
            if not buf:
                return
            if len(buf) < head:
                raise FrameError(offset, f"frame header cut off after {len(buf)} of {head} bytes", torn=True)
        length, crc = unpack(buf, pos)
        if length < 5 or length > MAX_RECORD:
            raise FrameError(offset, f"impossible record length {length}", torn=_torn(stream, buf[pos:]))
        end = pos + head + length
        if end > len(buf):
            parts, have, end = [buf[pos:]], len(buf) - pos, end - pos
            while have < end:
                more = stream.read(max(READ_CHUNK, end - have))
                if not more:
                    got = b"".join(parts)
                    raise FrameError(offset, f"record cut off: {have - head} of {length} bytes", torn=_torn(stream, got))
                parts.append(more)
                have += len(more)
            buf, pos = b"".join(parts), 0
        body = buf[pos + head : end]
        if crc32(body) != crc:
            raise FrameError(offset, "CRC mismatch (the record's bytes are not what was written)", torn=_torn(stream, buf[pos:]))
        try:
            kind = _kind(body)
        except (bson.errors.InvalidBSON, KeyError, IndexError) as exc:
            raise FrameError(offset, f"record is not a walkit record: {exc}", torn=False) from None
        yield Record(kind, body, name, offset, head + length)
        offset += head + length
        pos = end


@dataclass
class Segment:
    """One segment file."""

    index: int
    path: Path
    sealed: bool

    @property
    def name(self) -> str:
        return self.path.name

    def open(self) -> IO[bytes]:
        """The segment's uncompressed bytes as a stream.

        An open segment that the writer seals meanwhile is read from its
        sealed copy (renamed into place before the open file is removed).
        """
        if not self.sealed:
            try:
                return self.path.open("rb")
            except FileNotFoundError:
                self.path, self.sealed = self.path.with_name(self.path.name + ".zst"), True
        raw = self.path.open("rb")
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)

    def records(self) -> Iterator[Record]:
        with self.open() as stream:
            yield from iter_frames(stream, self.name)


@dataclass
class Listing:
    """What a WAL folder holds: segments in order, and files that do not belong."""

    segments: list[Segment] = field(default_factory=list)
    strangers: list[Path] = field(default_factory=list)


def list_segments(wal_dir: Path) -> Listing:
    """The folder's segments by index (a sealed copy wins over an open one)."""
    out = Listing()
    if not wal_dir.exists():
        return out
    found: dict[int, Segment] = {}
    for path in sorted(wal_dir.iterdir()):
        match = SEGMENT_RE.match(path.name)
        if match and not match.group(2) and not path.is_file():
            sealed_copy = path.with_name(path.name + ".zst")  # compressed and removed since the folder was listed
            if sealed_copy.is_file():
                path, match = sealed_copy, SEGMENT_RE.match(sealed_copy.name)
        if not match or not path.is_file():
            if not path.name.endswith(".tmp"):
                out.strangers.append(path)
            continue
        index, sealed = int(match.group(1)), bool(match.group(2))
        if index not in found or sealed:
            found[index] = Segment(index, path, sealed)
    out.segments = [found[i] for i in sorted(found)]
    return out


def read_records(wal_dir: Path, from_seq: int | None = None, to_seq: int | None = None, kinds: tuple[str, ...] = DATA_KINDS) -> Iterator[Record]:
    """Records of the given kinds, oldest first, with ``from_seq <= seq <= to_seq``.

    Streams segment by segment; raises WALCorruptError at a damaged record.
    """
    from walkit.errors import WALCorruptError

    segments = list_segments(wal_dir).segments
    for seg in segments:
        try:
            for rec in seg.records():
                if rec.kind not in kinds:
                    continue
                seq = rec.seq
                if seq is not None:
                    if from_seq is not None and seq < from_seq:
                        continue
                    if to_seq is not None and seq > to_seq:
                        return
                yield rec
        except FrameError as exc:
            if exc.torn and not seg.sealed and seg is segments[-1]:
                return  # the writer's unfinished tail: not yet part of the WAL
            raise WALCorruptError(seg.name, exc.offset, exc.reason, "run `walkit verify` for the whole picture") from None


# -- verification -------------------------------------------------------------------


@dataclass
class Problem:
    file: str
    offset: int | None
    reason: str

    def __str__(self) -> str:
        at = f" at byte {self.offset}" if self.offset is not None else ""
        return f"{self.file}{at}: {self.reason}"


@dataclass
class SegmentSummary:
    """What ``walkit wal ls`` shows for one segment."""

    name: str
    sealed: bool
    size: int
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    first_time: datetime | None = None
    last_time: datetime | None = None
    seal_hash: str | None = None
    header: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """The result of :func:`verify`."""

    segments: list[SegmentSummary] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    events: int = 0
    gaps: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    torn_tail: Problem | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "segments": len(self.segments),
            "events": self.events,
            "gaps": self.gaps,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "problems": [{"file": p.file, "offset": p.offset, "reason": p.reason} for p in self.problems],
            "torn_tail": None if self.torn_tail is None else str(self.torn_tail),
        }


def _time(rec: Record) -> datetime | None:
    value = rec.wt
    return value if isinstance(value, datetime) else None


def summarize(seg: Segment, report: Report) -> SegmentSummary:
    """Read one segment, checking its frames, header, seal and inner seq run."""
    try:
        size = seg.path.stat().st_size
    except FileNotFoundError:  # sealed while we looked: read the sealed copy
        seg.path, seg.sealed = seg.path.with_name(seg.path.name + ".zst"), True
        size = seg.path.stat().st_size
    summary = SegmentSummary(seg.name, seg.sealed, size)
    digest = hashlib.sha256()  # of every frame before the seal, as the writer hashed them
    last_seq: int | None = None
    newest: Record | None = None
    try:
        for rec in seg.records():
            summary.records += 1
            if summary.records == 1:
                if rec.kind != "h":
                    report.problems.append(Problem(seg.name, rec.offset, "the segment does not start with a header record"))
                else:
                    summary.header = {k: rec.get(k) for k in ("segment", "first_seq", "prev", "created", "format")}
            if rec.kind == "s":
                summary.seal_hash = rec.get("sha256")
                if summary.seal_hash != digest.hexdigest():
                    report.problems.append(Problem(seg.name, rec.offset, "the seal's hash does not match the segment's records"))
                continue
            digest.update(frame(rec.raw))
            if rec.kind not in DATA_KINDS:
                continue
            seq = rec.seq
            if last_seq is not None and seq != last_seq + 1:
                report.problems.append(Problem(seg.name, rec.offset, f"seq {seq} follows seq {last_seq}"))
            last_seq = seq
            if rec.kind == "e":
                report.events += 1
            else:
                report.gaps += 1
            summary.first_seq = seq if summary.first_seq is None else summary.first_seq
            summary.last_seq = seq
            if summary.first_time is None:
                summary.first_time = _time(rec)
            newest = rec  # its time is read once, at the end
    except FrameError as exc:
        problem = Problem(seg.name, exc.offset, exc.reason)
        if exc.torn and not seg.sealed:
            report.torn_tail = problem  # an unfinished write; the writer truncates it on open
        else:
            report.problems.append(problem)
    except Exception as exc:  # zstd errors and the like: the file is not what it should be
        report.problems.append(Problem(seg.name, None, f"cannot be read: {exc}"))
    if newest is not None:
        summary.last_time = _time(newest) or summary.first_time
    return summary


def verify(wal_dir: Path) -> Report:
    """Check every record's CRC, every seal's hash, the segment chain and seq continuity."""
    report = Report()
    listing = list_segments(wal_dir)
    for path in listing.strangers:
        report.problems.append(Problem(path.name, None, "this file does not belong in a WAL folder (move it elsewhere)"))
    previous: tuple[Segment, SegmentSummary] | None = None
    expected_seq: int | None = None
    for position, seg in enumerate(listing.segments):
        known = len(report.problems)
        summary = summarize(seg, report)
        last = position == len(listing.segments) - 1
        if not last and report.torn_tail is not None and report.torn_tail.file == seg.name:
            report.problems.append(report.torn_tail)  # only the newest segment can have an unfinished write
            report.torn_tail = None
        damaged = len(report.problems) > known
        report.segments.append(summary)
        header = summary.header
        if previous is not None and seg.index != previous[0].index + 1:
            report.problems.append(Problem(seg.name, None, f"segment {previous[0].index + 1:08d} is missing before it"))
        if seg.sealed and summary.seal_hash is None:
            report.problems.append(Problem(seg.name, None, "a sealed segment without a seal record (cut short?)"))
        if not seg.sealed and not last and summary.seal_hash is None and not damaged:
            report.problems.append(Problem(seg.name, None, "an unsealed segment is followed by others"))
        if header:
            if header.get("segment") != seg.index:
                report.problems.append(Problem(seg.name, 0, f"its header says it is segment {header.get('segment')}"))
            if previous is not None and previous[1].seal_hash and header.get("prev") != previous[1].seal_hash:
                report.problems.append(Problem(seg.name, 0, f"its header does not chain to {previous[0].name} (a segment was altered, replaced or reordered)"))
            first = int(header.get("first_seq") or 0)
            if expected_seq is not None and first != expected_seq:
                report.problems.append(Problem(seg.name, 0, f"starts at seq {first}, expected {expected_seq}"))
            expected_seq = first
        if damaged:  # its seqs and seal are unknown: do not blame the next segment for them
            expected_seq, previous = None, None
            continue
        if summary.first_seq is not None:
            if expected_seq is not None and summary.first_seq != expected_seq:
                report.problems.append(Problem(seg.name, None, f"first seq {summary.first_seq}, expected {expected_seq}"))
            report.first_seq = summary.first_seq if report.first_seq is None else report.first_seq
            report.last_seq = summary.last_seq
            expected_seq = (summary.last_seq or 0) + 1
        previous = (seg, summary)
    return report
