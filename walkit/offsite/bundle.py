"""One daily bundle: everything since the previous successful upload, in one file.

A bundle is a tar archive (GNU format); every member but the manifest is one
zstd frame::

    wal/seg-NNNNNNNN.wal.zst          the WAL records after the previous bundle, as one sealed
                                      segment in the WAL's own format (header, records, seal);
                                      NNNNNNNN is the bundle's index, and its header's ``prev``
                                      is the previous bundle's seal, so bundles form a chain
    snapshot/manifest.json.zst        optional: one snapshot, in mongodump layout, each file
    snapshot/<db>/<coll>.bson.zst     compressed on its own
    snapshot/<db>/<coll>.metadata.json.zst
    MANIFEST.json                     last, plain JSON: what the bundle covers (index, WAL seq
                                      and time range, chain hashes, the snapshot), and the
                                      SHA-256 and size of every member, compressed and raw

With age recipients the whole tar is encrypted in the age format (file name
``.tar.age``); then nothing readable leaves the machine (the provider sees
only the coverage metadata :meth:`Bundle.metadata` gives: seq numbers,
times, sizes).  Standard tools get the data back: ``age -d``, ``tar x``,
``zstd -d``, ``mongorestore``.

Guaranteed: a bundle is written under a temporary name and renamed into
place.  :func:`unpack_bundle` refuses absolute names, ``..``, links, members
the manifest does not list and members larger than it says, and checks every
hash; :func:`verify_bundle` also reads the WAL segment through (CRCs, seal,
seq continuity) and checks the chain against the previous bundle when asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import bson
import zstandard
from bson.int64 import Int64
from bson.timestamp import Timestamp

from walkit._fs import fsync_dir
from walkit._version import __version__
from walkit.clock import Clock, SystemClock
from walkit.errors import BundleError, ConfigError, SnapshotError
from walkit.home import Home
from walkit.restore.snapshot import SnapshotInfo, load_snapshot
from walkit.wal.format import FORMAT as WAL_FORMAT
from walkit.wal.format import FrameError, Record, Segment, list_segments, summarize

__all__ = [
    "Bundle",
    "Position",
    "build_bundle",
    "read_manifest",
    "unpack_bundle",
    "verify_bundle",
    "parse_recipients",
    "load_identities",
    "AGE_MAGIC",
]

FORMAT = "walkit-bundle"
VERSION = 1
MANIFEST = "MANIFEST.json"
AGE_MAGIC = b"age-encryption.org/v1\n"
LEVEL = 3
CHUNK = 1 << 20
MAX_MANIFEST = 64 * 1024 * 1024
_MEMBER_RE = re.compile(r"^(wal/seg-\d{8}\.wal\.zst|snapshot/[^\x00]+\.zst)$")


# -- where a bundle starts ---------------------------------------------------------------


@dataclass(frozen=True)
class Position:
    """Where the previous successful bundle ended (the default: nothing uploaded yet)."""

    index: int = 0  # that bundle's index
    last_seq: int = 0  # its last event or gap
    last_ct: Timestamp | None = None  # the clusterTime of its last record (checkpoints included)
    seal: str = ""  # its WAL segment's seal hash: the next bundle's ``prev``

    @classmethod
    def after(cls, manifest: dict[str, Any]) -> Position:
        """After the bundle with this manifest."""
        wal = manifest["wal"]
        return cls(int(manifest["index"]), int(wal["last_seq"]), _ts(wal.get("last_ct")), str(wal["seal"]))

    @classmethod
    def after_upload(cls, metadata: dict[str, Any]) -> Position:
        """After the bundle with this provider metadata (:meth:`Bundle.metadata`)."""
        return cls(int(metadata["index"]), int(metadata["last_seq"]), _ts(metadata.get("last_ct")), str(metadata["seal"]))


def _ts(value: Any) -> Timestamp | None:
    return Timestamp(int(value["t"]), int(value["i"])) if isinstance(value, dict) else None


def _tsjson(value: Timestamp | None) -> dict[str, int] | None:
    return None if value is None else {"t": value.time, "i": value.inc}


@dataclass
class Bundle:
    """A bundle file and its manifest."""

    path: Path
    manifest: dict[str, Any]
    size: int = 0
    sha256: str = ""  # of the file as stored (encrypted or not)
    encrypted: bool = False

    @property
    def index(self) -> int:
        return int(self.manifest["index"])

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @property
    def position(self) -> Position:
        """Where the next bundle starts if this one is uploaded."""
        return Position.after(self.manifest)

    @property
    def empty(self) -> bool:
        """Nothing new: no WAL record and no snapshot."""
        return not self.manifest["wal"]["records"] and self.manifest.get("snapshot") is None

    def metadata(self) -> dict[str, Any]:
        """What the provider stores beside the file: coverage only, never data or names."""
        wal, snap = self.manifest["wal"], self.manifest.get("snapshot")
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.path.name,
            "id": self.id,
            "index": self.index,
            "keep_from": self.manifest.get("keep_from"),
            "created": self.manifest["created"],
            "first_seq": wal["first_seq"],
            "last_seq": wal["last_seq"],
            "first_ct": wal["first_ct"],
            "last_ct": wal["last_ct"],
            "first_wall": wal["first_wall"],
            "last_wall": wal["last_wall"],
            "prev": wal["prev"],
            "seal": wal["seal"],
            "snapshot": None if snap is None else {k: snap[k] for k in ("id", "start", "end", "end_wall", "wal_seq_before")},
            "size": self.size,
            "sha256": self.sha256,
            "encrypted": self.encrypted,
            "walkit": self.manifest.get("walkit"),
        }


# -- age keys ---------------------------------------------------------------------------


def parse_recipients(text: str | Sequence[str] | None) -> list[Any]:
    """age X25519 recipients (``age1...``), separated by commas or white space."""
    import pyrage

    items = re.split(r"[,\s]+", text.strip()) if isinstance(text, str) else list(text or [])
    out = []
    for item in (i for i in items if i):
        try:
            out.append(pyrage.x25519.Recipient.from_str(item))
        except Exception:
            raise ConfigError(f"WALKIT_AGE_RECIPIENT: {item[:12]}... is not an age public key (age1...; make one with `age-keygen`)") from None
    return out


def load_identities(path: str | os.PathLike[str]) -> list[Any]:
    """The age identities (``AGE-SECRET-KEY-1...`` lines) of a key file, as ``age-keygen`` writes it."""
    import pyrage

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"WALKIT_AGE_IDENTITY: cannot read {path} ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
    out = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out.append(pyrage.x25519.Identity.from_str(line))
        except Exception:
            raise ConfigError(f"WALKIT_AGE_IDENTITY: {path} line {number} is not an age secret key (AGE-SECRET-KEY-1...)") from None
    if not out:
        raise ConfigError(f"WALKIT_AGE_IDENTITY: {path} holds no age secret key")
    return out


# -- writing ----------------------------------------------------------------------------


class HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what passes to ``out``."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.size, self.digest = out, 0, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.out.write(view)
        self.digest.update(view)
        self.size += len(view)
        return len(view)


class _TarOut:
    """A tar writer whose members are streamed, their size patched into the header after.

    GNU format: the header's length depends on the name only (sizes beyond 8 GiB use
    base-256 in the same field), so a header sized for 0 bytes fits the real size.
    """

    def __init__(self, f: BinaryIO, mtime: float) -> None:
        self.f, self.mtime = f, mtime

    def _info(self, name: str, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.type = size, int(self.mtime), 0o644, tarfile.REGTYPE
        info.uname = info.gname = "walkit"
        return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")

    @contextlib.contextmanager
    def member(self, name: str) -> Iterator[HashingWriter]:
        start = self.f.tell()
        header = self._info(name, 0)
        self.f.write(header)
        sink = HashingWriter(self.f)
        yield sink
        pad = -sink.size % tarfile.BLOCKSIZE
        self.f.write(b"\0" * pad)
        end = self.f.tell()
        final = self._info(name, sink.size)
        assert len(final) == len(header)
        self.f.seek(start)
        self.f.write(final)
        self.f.seek(end)

    def close(self) -> None:
        self.f.write(b"\0" * (tarfile.BLOCKSIZE * 2))


@dataclass
class _Member:
    sha256: str
    size: int
    raw_sha256: str
    raw_size: int

    def as_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "raw_sha256": self.raw_sha256, "raw_size": self.raw_size}


def _compressed(tar: _TarOut, name: str, chunks: Iterator[bytes | memoryview], level: int = LEVEL) -> _Member:
    raw_digest, raw_size = hashlib.sha256(), 0
    with tar.member(name) as sink:
        writer = zstandard.ZstdCompressor(level=level).stream_writer(cast(IO[bytes], sink), closefd=False)
        for chunk in chunks:
            raw_digest.update(chunk)
            raw_size += len(chunk)
            writer.write(chunk)
        writer.flush(zstandard.FLUSH_FRAME)
    return _Member(sink.digest.hexdigest(), sink.size, raw_digest.hexdigest(), raw_size)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


class _Slicer:
    """The WAL's frames after a position, as contiguous chunks of the segments' own bytes.

    Events and gaps with seq > ``after.last_seq`` are included, and the checkpoints after
    them (or, for ``after.last_seq`` itself, those newer than ``after.last_ct``).  Frames
    are parsed in place (kind and seq at the offsets the writer puts them; CRC checked),
    so a large slice costs little more than decompressing it.  Stops at the writer's
    unfinished tail; BundleError at damage, a seq jump, or a position the WAL no longer holds.
    """

    def __init__(self, wal_dir: Path, after: Position) -> None:
        self.wal_dir, self.after = wal_dir, after
        self.expected = after.last_seq + 1
        self.seen = 0  # the highest seq the WAL holds
        self.events = self.gaps = self.records = 0
        self.first: tuple[str, bytes] | None = None  # kind and body of the first frame included
        self.last: tuple[str, bytes] | None = None  # ... and of the last

    def chunks(self) -> Iterator[memoryview]:
        segments = list_segments(self.wal_dir).segments
        start = 0
        if self.after.last_seq:
            first: int | None = None
            for position in reversed(range(len(segments))):  # the newest segment that began at or before it
                first = _header_first_seq(segments[position])
                if first is not None and first <= self.after.last_seq:
                    start = position
                    break
            if not segments or (first or 0) > self.after.last_seq + 1:
                raise BundleError(
                    f"the local WAL no longer holds seq {self.after.last_seq + 1} (the first change after the last upload): "
                    "its segments were removed or lost, so no bundle can continue the chain; take a snapshot and see `walkit verify`"
                )
        for seg in segments[start:]:
            try:
                with seg.open() as f:
                    data = f.read()
            except (OSError, zstandard.ZstdError) as exc:
                raise BundleError(f"{seg.name}: cannot be read ({exc}); the local WAL is damaged there, run `walkit verify`") from None
            yield from self._scan(memoryview(data), seg, tail=not seg.sealed and seg is segments[-1])
        if self.seen < self.after.last_seq:
            raise BundleError(
                f"the local WAL ends at seq {self.seen}, but the last upload already reached seq {self.after.last_seq}: "
                "this home is not the one whose WAL was uploaded (or its newest segments were lost)"
            )

    def _scan(self, mv: memoryview, seg: Segment, tail: bool) -> Iterator[memoryview]:
        from walkit.wal.format import _I64, _KIND_AT, _SEQ_AT, FRAME, MAX_RECORD, _frame_follows

        pos, n, run, last = 0, len(mv), -1, None
        unpack, crc32, after = FRAME.unpack_from, zlib.crc32, self.after
        digest, sealed = hashlib.sha256(), False
        while pos < n:
            bad, end = "", n
            if n - pos < FRAME.size:
                bad = "frame header cut off"
            else:
                length, crc = unpack(mv, pos)
                end = pos + FRAME.size + length
                if length < 5 or length > MAX_RECORD:
                    bad = f"impossible record length {length}"
                elif end > n:
                    bad = "record cut off"
                elif crc32(mv[pos + FRAME.size : end]) != crc:
                    bad = "CRC mismatch"
            if bad:
                if run >= 0:
                    yield mv[run:pos]
                if tail and not _frame_follows(bytes(mv[pos:])):
                    break  # the writer's unfinished tail: not yet part of the WAL
                raise BundleError(f"{seg.name} at byte {pos}: {bad}; the local WAL is damaged there, run `walkit verify`")
            b = pos + FRAME.size
            body = mv[b:end]
            kind = chr(mv[b + 11]) if mv[b + 4 : b + 11] == _KIND_AT and mv[b + 12] == 0 else _kind_of(body)
            take = False
            if kind == "s":
                if Record("s", bytes(body), seg.name, pos, 0).get("sha256") != digest.hexdigest() or end != n:
                    raise BundleError(f"{seg.name} at byte {pos}: its seal does not match its records; the local WAL is damaged there, run `walkit verify`")
                sealed = True
            else:
                digest.update(mv[pos:end])
            if kind in ("e", "g"):
                seq = _I64.unpack_from(mv, b + 18)[0] if mv[b + 13 : b + 18] == _SEQ_AT else int(Record(kind, bytes(body), seg.name, pos, 0).seq or 0)
                self.seen = max(self.seen, seq)
                if seq > after.last_seq:
                    if seq != self.expected:
                        raise BundleError(
                            f"{seg.name}: the WAL jumps from seq {self.expected - 1} to {seq}, so the bundle would have a hole; "
                            "run `walkit verify` and put back the missing segments"
                        )
                    self.expected += 1
                    take = True
                    if kind == "e":
                        self.events += 1
                    else:
                        self.gaps += 1
            elif kind == "c":
                rec = Record("c", bytes(body), seg.name, pos, 0)
                after_seq, ct = int(rec.get("after_seq") or 0), rec.ct
                take = after_seq > after.last_seq or (
                    after_seq == after.last_seq and isinstance(ct, Timestamp) and (after.last_ct is None or ct > after.last_ct)
                )
            if take:
                self.records += 1
                if self.first is None:
                    self.first = (kind, bytes(body))
                last = (kind, b, end)
                if run < 0:
                    run = pos
            elif run >= 0:
                yield mv[run:pos]
                run = -1
            pos = end
        else:
            if run >= 0:
                yield mv[run:n]
        if seg.sealed and not sealed:
            raise BundleError(f"{seg.name}: a sealed segment without its seal (cut short); the local WAL is damaged there, run `walkit verify`")
        if last is not None:  # copied once per segment, not per record
            self.last = (last[0], bytes(mv[last[1] : last[2]]))

    @staticmethod
    def record(which: tuple[str, bytes] | None) -> Record | None:
        return None if which is None else Record(which[0], which[1], "", 0, 0)


def _kind_of(body: memoryview) -> str:
    from walkit.wal.format import _kind

    return _kind(bytes(body))


def slice_records(wal_dir: Path, after: Position) -> Iterator[Record]:
    """The WAL's events, gaps and checkpoints after ``after``, oldest first (see :class:`_Slicer`)."""
    from walkit.wal.format import iter_frames

    for chunk in _Slicer(wal_dir, after).chunks():
        yield from iter_frames(io.BytesIO(bytes(chunk)), "slice")


def _header_first_seq(seg: Segment) -> int | None:
    try:
        for rec in seg.records():
            return int(rec.get("first_seq")) if rec.kind == "h" and rec.get("first_seq") is not None else None
    except (FrameError, OSError, zstandard.ZstdError):
        return None  # reading it through says what is wrong
    return None


def _wal_member(tar: _TarOut, home: Home, after: Position, index: int, clock: Clock) -> dict[str, Any]:
    """Write the WAL slice as one sealed segment; return the manifest's ``wal`` entry."""
    from walkit.wal.format import frame

    slicer = _Slicer(home.wal_dir, after)
    digest = hashlib.sha256()

    def chunks() -> Iterator[bytes | memoryview]:
        header = frame(bson.encode({"k": "h", "segment": index, "first_seq": Int64(after.last_seq + 1), "prev": after.seal,
                                    "created": clock.now(), "format": WAL_FORMAT, "walkit": __version__}))
        digest.update(header)
        yield header
        for chunk in slicer.chunks():
            digest.update(chunk)
            yield chunk
        seal = {"k": "s", "segment": index, "last_seq": Int64(slicer.expected - 1), "records": slicer.events + slicer.gaps,
                "sha256": digest.hexdigest(), "sealed": clock.now()}
        yield frame(bson.encode(seal))

    name = f"wal/seg-{index:08d}.wal.zst"
    member = _compressed(tar, name, chunks(), level=LEVEL)
    first, last = slicer.record(slicer.first), slicer.record(slicer.last)

    def wall(rec: Record | None) -> str | None:
        value = rec.wt if rec is not None else None
        return value.isoformat() if isinstance(value, datetime) else None

    def ct(rec: Record | None) -> Timestamp | None:
        value = rec.ct if rec is not None else None
        return value if isinstance(value, Timestamp) else None

    return {
        "segment": index, "first_seq": after.last_seq + 1, "last_seq": slicer.expected - 1,
        "events": slicer.events, "gaps": slicer.gaps, "records": slicer.records,
        "first_ct": _tsjson(ct(first)), "last_ct": _tsjson(ct(last) if last is not None else after.last_ct),
        "first_wall": wall(first), "last_wall": wall(last), "prev": after.seal, "seal": digest.hexdigest(),
        "member": name, "_member": member,
    }


def _snapshot_files(snap: SnapshotInfo) -> list[str]:
    files = ["manifest.json"]
    for entry in snap.collections:
        files += [entry.file, entry.metadata_file]
    return files


def build_bundle(
    home: Home,
    out: str | os.PathLike[str],
    *,
    after: Position | None = None,
    snapshot: SnapshotInfo | None = None,
    recipients: Sequence[Any] = (),
    keep_from: int | None = None,
    clock: Clock | None = None,
    progress: bool | None = None,
    verify: bool = True,
) -> Bundle:
    """Write the bundle that follows ``after`` to ``out`` (a file, or a folder to name it in).

    ``snapshot`` is included as it is (its files are checked against its
    manifest while they are copied); ``recipients`` (age public keys, see
    :func:`parse_recipients`) encrypt it; ``keep_from`` is the oldest bundle
    index a restore from this bundle's chain needs (for chain-aware pruning
    by the provider).  Memory stays flat: members are streamed.  ``verify``
    reads the archive back before it is encrypted (:func:`check_contents`).
    """
    from tqdm import tqdm

    clock = clock or SystemClock()
    after = after or Position()
    index = after.index + 1
    now = clock.now()
    bundle_id = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{index:06d}-{secrets.token_hex(3)}"
    name = f"walkit-{bundle_id}.tar" + (".age" if recipients else "")
    out = Path(out)
    final = out / name if out.is_dir() else out
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{secrets.token_hex(4)}")
    plain = tmp.with_name(tmp.name + ".tar") if recipients else tmp
    members: dict[str, dict[str, Any]] = {}
    try:
        with plain.open("w+b") as f:
            tar = _TarOut(f, now.timestamp())
            wal = _wal_member(tar, home, after, index, clock)
            members[wal["member"]] = wal.pop("_member").as_dict()
            snap_entry = None
            if snapshot is not None:
                files = _snapshot_files(snapshot)
                bar = tqdm(total=len(files), desc="bundle snapshot", unit="file", disable=(None if progress is None else not progress), leave=False)
                for rel in files:
                    member = f"snapshot/{rel}.zst"
                    try:
                        got = _compressed(tar, member, _file_chunks(snapshot.path / rel))
                    except FileNotFoundError:
                        raise SnapshotError(f"{snapshot.path / rel}: missing from snapshot {snapshot.id}; take a new snapshot") from None
                    members[member] = got.as_dict()
                    bar.update(1)
                bar.close()
                _check_snapshot_hashes(snapshot, {m[len('snapshot/'):-len('.zst')]: v["raw_sha256"] for m, v in members.items() if m.startswith("snapshot/")})
                snap_entry = snapshot.as_dict() | {"end_wall": snapshot.end_wall.isoformat(), "root": "snapshot"}
            manifest = {
                "format": FORMAT,
                "version": VERSION,
                "walkit": __version__,
                "id": bundle_id,
                "index": index,
                "created": now.isoformat(),
                "keep_from": keep_from if keep_from is not None else index,
                "wal": wal,
                "snapshot": snap_entry,
                "members": members,
            }
            manifest["manifest_sha256"] = manifest_digest(manifest)
            text = json.dumps(manifest, indent=1, sort_keys=True).encode()
            with tar.member(MANIFEST) as sink:
                sink.write(text)
            tar.close()
            f.flush()
            os.fsync(f.fileno())
        if verify:
            try:
                with tempfile.TemporaryDirectory(prefix=".tmp-check-", dir=final.parent) as scratch:
                    check = unpack_bundle(plain, scratch)
                    check.path = final
                    check_contents(check, Path(scratch), after if after.index else None)
            except BundleError as exc:
                raise BundleError(f"the bundle just built does not read back: {str(exc).replace(str(plain), final.name)}") from None
        if recipients:
            _encrypt(plain, tmp, recipients)
            plain.unlink()
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        for leftover in (tmp, plain):
            with contextlib.suppress(OSError):
                leftover.unlink()
        raise
    return Bundle(final, manifest, final.stat().st_size, sha256_file(final), bool(recipients))


def _check_snapshot_hashes(snap: SnapshotInfo, got: dict[str, str]) -> None:
    for entry in snap.collections:
        if got.get(entry.file) != entry.sha256:
            raise SnapshotError(f"{snap.path / entry.file}: its SHA-256 does not match the snapshot's manifest; the snapshot is damaged, take a new one")
        if entry.metadata_sha256 and got.get(entry.metadata_file) != entry.metadata_sha256:
            raise SnapshotError(f"{snap.path / entry.metadata_file}: its SHA-256 does not match the snapshot's manifest; take a new snapshot")


def _encrypt(src: Path, dst: Path, recipients: Sequence[Any]) -> None:
    import pyrage

    with src.open("rb") as fin, dst.open("wb") as fout:
        try:
            pyrage.encrypt_io(fin, fout, list(recipients))
        except Exception as exc:
            raise BundleError(f"cannot encrypt the bundle: {exc}") from None
        fout.flush()
        os.fsync(fout.fileno())


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- reading ----------------------------------------------------------------------------


def is_encrypted(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(len(AGE_MAGIC)) == AGE_MAGIC


@contextlib.contextmanager
def _plain_tar(path: Path, identities: Sequence[Any] | None, scratch: Path) -> Iterator[tuple[Path, bool]]:
    """The bundle as a plain tar file (decrypted into ``scratch`` when it is encrypted)."""
    import pyrage

    try:
        encrypted = is_encrypted(path)
    except FileNotFoundError:
        raise BundleError(f"{path}: no such bundle file") from None
    except IsADirectoryError:
        raise BundleError(f"{path}: a folder, not a bundle file") from None
    if not encrypted:
        yield path, False
        return
    if not identities:
        raise BundleError(f"{path}: the bundle is encrypted (age); set WALKIT_AGE_IDENTITY to the key file that decrypts it")
    plain = scratch / "bundle.tar"
    try:
        with path.open("rb") as fin, plain.open("wb") as fout:
            pyrage.decrypt_io(fin, fout, list(identities))
    except pyrage.DecryptError as exc:
        if "no matching keys" in str(exc).lower():
            raise BundleError(f"{path}: cannot decrypt with the key in WALKIT_AGE_IDENTITY ({exc}); is it the identity of the bundle's recipient?") from None
        raise BundleError(f"{path}: cannot decrypt ({exc}): the file is truncated or altered") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot decrypt ({exc}): the file is truncated or altered") from None
    yield plain, True


def _open_tar(path: Path, shown: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{shown}: not a readable bundle ({exc}); the file is truncated, altered, or not a walkit bundle") from None


def _members(tar: tarfile.TarFile, shown: Path) -> list[tarfile.TarInfo]:
    try:
        return tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{shown}: the tar archive is damaged or cut short ({exc})") from None


def _load_manifest(tar: tarfile.TarFile, infos: list[tarfile.TarInfo], shown: Path) -> dict[str, Any]:
    found = [i for i in infos if i.name == MANIFEST]
    if not found:
        raise BundleError(f"{shown}: no {MANIFEST} (not a walkit bundle, or cut short before its end)")
    info = found[-1]
    if not info.isreg() or info.size > MAX_MANIFEST:
        raise BundleError(f"{shown}: {MANIFEST} is not a regular file of sane size")
    try:
        f = tar.extractfile(info)
        assert f is not None
        data = json.loads(f.read())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a walkit bundle manifest")
        if data.get("version") != VERSION:
            raise BundleError(f"{shown}: bundle version {data.get('version')!r} is not one this walkit reads ({VERSION}); upgrade walkit")
        _check_shape(data)
        if data.get("manifest_sha256") != manifest_digest(data):
            raise ValueError("its own checksum does not match (a field was altered)")
        return data
    except BundleError:
        raise
    except (ValueError, TypeError, KeyError, tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{shown}: {MANIFEST} is damaged ({type(exc).__name__}: {exc})") from None


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The SHA-256 of the manifest's canonical JSON without its own ``manifest_sha256``."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_shape(data: dict[str, Any]) -> None:
    """ValueError unless the manifest has every field, of the right type, that walkit relies on."""

    def need(obj: Any, key: str, kind: Any, where: str) -> Any:
        if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], kind) or isinstance(obj[key], bool) and kind is not bool:
            raise ValueError(f"{where}{key} is missing or not {getattr(kind, '__name__', kind)}")
        return obj[key]

    index = need(data, "index", int, "")
    need(data, "id", str, "")
    need(data, "created", str, "")
    members = need(data, "members", dict, "")
    wal = need(data, "wal", dict, "")
    for key in ("segment", "first_seq", "last_seq", "events", "gaps", "records"):
        need(wal, key, int, "wal.")
    for key in ("prev", "seal", "member"):
        need(wal, key, str, "wal.")
    if wal["member"] != f"wal/seg-{index:08d}.wal.zst" or wal["member"] not in members or wal["segment"] != index:
        raise ValueError(f"wal.member {wal['member']!r} is not this bundle's segment")
    for name, spec in members.items():
        if not _MEMBER_RE.match(name) or not _safe_name(name):
            raise ValueError(f"member name {name!r} is not allowed")
        for key in ("size", "raw_size"):
            need(spec, key, int, f"members[{name!r}].")
        for key in ("sha256", "raw_sha256"):
            need(spec, key, str, f"members[{name!r}].")
    snap = data.get("snapshot")
    if snap is not None:
        need(data, "snapshot", dict, "")
        need(snap, "id", str, "snapshot.")
        need(snap, "end_wall", str, "snapshot.")
        if "snapshot/manifest.json.zst" not in members:
            raise ValueError("the snapshot's manifest is not among the members")
    keep = data.get("keep_from")
    if not isinstance(keep, int) or not 1 <= keep <= index:
        raise ValueError(f"keep_from {keep!r} is not a bundle index from 1 to {index}")


def _safe_name(name: str) -> bool:
    parts = name.split("/")
    return not (name.startswith("/") or ".." in parts or "" in parts or "." in parts)


def _check_infos(infos: list[tarfile.TarInfo], manifest: dict[str, Any], shown: Path) -> None:
    declared = manifest["members"]
    seen = set()
    for info in infos:
        if not _safe_name(info.name):
            raise BundleError(f"{shown}: member {info.name!r} has an unsafe path (absolute, '..' or empty parts); refused, nothing extracted")
        if not info.isreg():
            raise BundleError(f"{shown}: member {info.name!r} is a link or special file; refused, nothing extracted")
        if info.name == MANIFEST:
            continue
        spec = declared.get(info.name)
        if spec is None:
            raise BundleError(f"{shown}: member {info.name!r} is not listed in the manifest; refused, nothing extracted")
        if info.size != int(spec["size"]):
            raise BundleError(f"{shown}: member {info.name!r} is {info.size} bytes, the manifest says {spec['size']}; refused")
        if info.name in seen:
            raise BundleError(f"{shown}: member {info.name!r} appears twice; refused")
        seen.add(info.name)
    missing = sorted(set(declared) - seen)
    if missing:
        raise BundleError(f"{shown}: member {missing[0]} is missing (the bundle is cut short or altered)")


def read_manifest(path: str | os.PathLike[str], identities: Sequence[Any] | None = None) -> Bundle:
    """The bundle's manifest (decrypting it when needed) without checking its members."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="walkit-bundle-", dir=path.parent if os.access(path.parent, os.W_OK) else None) as scratch:
        with _plain_tar(path, identities, Path(scratch)) as (plain, encrypted), _open_tar(plain, path) as tar:
            manifest = _load_manifest(tar, _members(tar, path), path)
    return Bundle(path, manifest, path.stat().st_size, sha256_file(path), encrypted)


def unpack_bundle(path: str | os.PathLike[str], dest: str | os.PathLike[str], identities: Sequence[Any] | None = None, *, snapshot: bool = True) -> Bundle:
    """Extract a bundle into ``dest``: ``wal/seg-N.wal.zst`` as stored (a sealed WAL segment)
    and ``snapshot/`` decompressed (a mongodump folder with walkit's manifest).

    Every member is checked (name, type, size, both hashes) into a scratch folder inside
    ``dest``; only when all passed are the files moved into place.  On any problem
    BundleError names it and ``dest`` is as it was.  ``snapshot=False`` leaves the
    snapshot's members in the archive (unread).
    """
    path, dest = Path(path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".walkit-unpack-", dir=dest) as scratch:
        work = Path(scratch) / "out"
        with _plain_tar(path, identities, Path(scratch)) as (plain, encrypted), _open_tar(plain, path) as tar:
            infos = _members(tar, path)
            manifest = _load_manifest(tar, infos, path)
            _check_infos(infos, manifest, path)
            for info in infos:
                if info.name == MANIFEST or (not snapshot and info.name.startswith("snapshot/")):
                    continue
                spec = manifest["members"][info.name]
                target = work / (info.name if info.name.startswith("wal/") else info.name[: -len(".zst")])
                target.parent.mkdir(parents=True, exist_ok=True)
                _extract(tar, info, spec, target, keep_compressed=info.name.startswith("wal/"), shown=path)
        for src in sorted(p for p in work.rglob("*") if p.is_file()):
            final = dest / src.relative_to(work)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, final)
    return Bundle(path, manifest, path.stat().st_size, sha256_file(path), encrypted)


def _extract(tar: tarfile.TarFile, info: tarfile.TarInfo, spec: dict[str, Any], target: Path, *, keep_compressed: bool, shown: Path) -> None:
    src = tar.extractfile(info)
    assert src is not None
    digest, raw_digest, raw_size = hashlib.sha256(), hashlib.sha256(), 0
    limit = int(spec["raw_size"])
    dctx = zstandard.ZstdDecompressor()
    try:
        with target.open("wb") as out:
            tee = _Tee(src, digest, out if keep_compressed else None)
            reader = dctx.stream_reader(cast(IO[bytes], tee), read_across_frames=False)
            while chunk := reader.read(CHUNK):
                raw_size += len(chunk)
                if raw_size > limit:
                    raise BundleError(f"{shown}: member {info.name!r} decompresses to more than the {limit} bytes its manifest says; refused")
                raw_digest.update(chunk)
                if not keep_compressed:
                    out.write(chunk)
            while tee.read(CHUNK):  # whatever follows the frame is hashed too (and then fails the check)
                pass
            out.flush()
            os.fsync(out.fileno())
    except zstandard.ZstdError as exc:
        raise BundleError(f"{shown}: member {info.name!r} is not a valid zstd frame ({exc}); the bundle is damaged") from None
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{shown}: member {info.name!r} is cut short ({exc})") from None
    if digest.hexdigest() != spec["sha256"]:
        raise BundleError(f"{shown}: member {info.name!r} does not match its SHA-256 in the manifest; the bundle was altered or damaged")
    if raw_digest.hexdigest() != spec["raw_sha256"] or raw_size != limit:
        raise BundleError(f"{shown}: member {info.name!r} decompresses to other bytes than the manifest says; the bundle was altered or damaged")


class _Tee(io.RawIOBase):
    """Reads from ``src``, hashing everything read and copying it to ``copy``."""

    def __init__(self, src: IO[bytes], digest: Any, copy: IO[bytes] | None) -> None:
        self.src, self.digest, self.copy = src, digest, copy

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.src.read(len(b))
        n = len(data)
        b[:n] = data
        self.digest.update(data)
        if self.copy is not None:
            self.copy.write(data)
        return n


def verify_bundle(path: str | os.PathLike[str], identities: Sequence[Any] | None = None, *, prev: Position | None = None) -> Bundle:
    """Check everything: decryption, every member's hashes, the WAL segment read through
    (CRCs, header, seal, seq continuity, matching the manifest), the snapshot's own hashes,
    and with ``prev`` that the bundle continues that chain.  BundleError at the first problem."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="walkit-verify-", dir=path.parent if os.access(path.parent, os.W_OK) else None) as scratch:
        bundle = unpack_bundle(path, scratch, identities)
        check_contents(bundle, Path(scratch), prev)
    return bundle


def check_contents(bundle: Bundle, folder: Path, prev: Position | None = None, *, snapshot: bool = True) -> None:
    """Check an unpacked bundle's WAL segment (and its snapshot, if unpacked) against its manifest."""
    from walkit.wal.format import Report

    m, wal = bundle.manifest, bundle.manifest["wal"]
    seg_path = folder / wal["member"]
    report = Report()
    summary = summarize(Segment(int(wal["segment"]), seg_path, True), report)
    shown = bundle.path.name
    if report.problems or report.torn_tail:
        problem = report.problems[0] if report.problems else report.torn_tail
        raise BundleError(f"{shown}: its WAL segment is damaged: {problem}")
    header = summary.header
    checks = [
        (report.events == wal["events"] and report.gaps == wal["gaps"], "event and gap counts"),
        (summary.records - 2 == wal["records"], "record count"),
        (header.get("segment") == int(wal["segment"]) == bundle.index, "segment number"),
        (header.get("prev") == wal["prev"], "chain hash (prev)"),
        (int(header.get("first_seq") or 0) == int(wal["first_seq"]), "first seq"),
        (summary.seal_hash == wal["seal"], "seal hash"),
        ((summary.last_seq if summary.last_seq is not None else int(wal["first_seq"]) - 1) == int(wal["last_seq"]), "last seq"),
        (summary.first_seq in (None, int(wal["first_seq"])), "first event's seq"),
    ]
    for ok, what in checks:
        if not ok:
            raise BundleError(f"{shown}: the WAL segment's {what} does not match the manifest; the bundle was altered")
    if prev is not None:
        if wal["prev"] != prev.seal or int(wal["first_seq"]) != prev.last_seq + 1:
            raise BundleError(
                f"{shown}: does not continue the chain after bundle {prev.index} (it starts at seq {wal['first_seq']}, "
                f"expected {prev.last_seq + 1}); a bundle in between is missing"
            )
    if snapshot and m.get("snapshot") is not None:
        try:
            snap = load_snapshot(folder / "snapshot")
        except SnapshotError as exc:
            raise BundleError(f"{shown}: its snapshot is unreadable: {exc}") from None
        told, held = m["snapshot"], snap.as_dict() | {"end_wall": snap.end_wall.isoformat()}
        for key in ("id", "start", "end", "end_wall", "wal_seq_before", "wal_seq_after", "documents"):
            if told.get(key) != held.get(key):
                raise BundleError(f"{shown}: the manifest's snapshot {key} ({told.get(key)!r}) is not the snapshot's ({held.get(key)!r})")
        got = {}
        for rel in _snapshot_files(snap)[1:]:
            got[rel] = sha256_file(folder / "snapshot" / rel) if (folder / "snapshot" / rel).exists() else ""
        try:
            _check_snapshot_hashes(snap, got)
        except SnapshotError as exc:
            raise BundleError(f"{shown}: {exc}") from None
