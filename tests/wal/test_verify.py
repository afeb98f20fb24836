"""verify() and `walkit verify` on damaged WALs, and a writer that refuses to touch them."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import bson
import pytest
import zstandard

from walkit.errors import WALCorruptError
from walkit.wal.format import FRAME, frame, iter_frames, verify
from walkit.wal.writer import WALWriter

from .test_writer import all_records, data_records, file_hashes, names, segment_bytes, write_events, writer

ROOT = Path(__file__).resolve().parents[2]
OPEN = "seg-00000005.wal"


def zst(index: int) -> str:
    return f"seg-{index:08d}.wal.zst"


def build(home: Path) -> Path:
    """Four sealed segments and an open one holding five events."""
    wal = home / "wal"
    w = writer(wal, segment_bytes=900)
    count = 0
    while not (wal / OPEN).exists():  # segment 4 is sealed (and compressed by close)
        count += len(write_events(w, count + 1, 1, size=150))
    w.close()
    w = writer(wal, segment_bytes=1 << 20)
    write_events(w, count + 1, 5, size=150)
    w.close()
    assert names(wal) == [zst(1), zst(2), zst(3), zst(4), OPEN]
    report = verify(wal)
    assert report.ok and report.torn_tail is None and report.last_seq == count + 5
    return wal


def run_cli(home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "walkit", "verify", "--home", str(home), *extra], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def recompress(path: Path, plain: bytes) -> None:
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(plain))


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1 :]


# -- the kinds of damage: each changes the WAL and returns (file, offset) verify must name, and the file open() names


Damage = Callable[[Path], tuple[str, int | None, str]]


def open_flip(wal: Path) -> tuple[str, int | None, str]:
    rec = [r for r in all_records(wal / OPEN) if r.kind == "e"][2]  # the middle of five events
    path = wal / OPEN
    path.write_bytes(flip(path.read_bytes(), rec.offset + FRAME.size + 40))
    return OPEN, rec.offset, OPEN


def open_length(wal: Path) -> tuple[str, int | None, str]:
    """A flipped bit in a middle record's length makes it reach past the end: damage, not a torn tail."""
    rec = [r for r in all_records(wal / OPEN) if r.kind == "e"][1]
    path = wal / OPEN
    path.write_bytes(flip(path.read_bytes(), rec.offset + 1))
    return OPEN, rec.offset, OPEN


def _sealed_flip(index: int) -> Damage:
    def damage(wal: Path) -> tuple[str, int | None, str]:
        path = wal / zst(index)
        plain = segment_bytes(path)
        rec = [r for r in iter_frames(io.BytesIO(plain), path.name) if r.kind == "e"][1]
        recompress(path, flip(plain, rec.offset + FRAME.size + 30))
        return path.name, rec.offset, path.name

    return damage


def _sealed_forged(index: int) -> Damage:
    """An event altered with its CRC fixed: the seal's hash catches it; with the seal re-hashed too, the chain does."""

    def damage(wal: Path) -> tuple[str, int | None, str]:
        path = wal / zst(index)
        recs = list(iter_frames(io.BytesIO(segment_bytes(path)), path.name))
        out = b""
        forged = False
        for rec in recs:
            body = dict(bson.decode(rec.body.raw))
            if rec.kind == "e" and not forged:
                body["ev"] = dict(body["ev"], operationType="delete")
                forged = True
            if rec.kind == "s" and index == 4:
                body["sha256"] = hashlib.sha256(out).hexdigest()
            out += frame(bson.encode(body))
        recompress(path, out)
        if index == 4:  # the seal agrees with the forged segment: only the next header's ``prev`` disagrees
            return OPEN, 0, OPEN
        return path.name, recs[-1].offset, path.name

    return damage


def _compressed_flip(wal: Path) -> tuple[str, int | None, str]:
    path = wal / zst(3)
    data = path.read_bytes()
    path.write_bytes(flip(data, len(data) // 2))
    return path.name, None, path.name


def _truncated(index: int) -> Damage:
    def damage(wal: Path) -> tuple[str, int | None, str]:
        path = wal / zst(index)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path.name, None, path.name

    return damage


def deleted_middle(wal: Path) -> tuple[str, int | None, str]:
    (wal / zst(3)).unlink()
    return zst(4), None, zst(3)


def swapped(wal: Path) -> tuple[str, int | None, str]:
    a, b = wal / zst(2), wal / zst(3)
    tmp = wal / "swap"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    return zst(2), 0, zst(2)


def stranger(wal: Path) -> tuple[str, int | None, str]:
    (wal / "notes.txt").write_text("remember to rotate the keys\n")
    return "notes.txt", None, "notes.txt"


def two_open(wal: Path) -> tuple[str, int | None, str]:
    """The last sealed segment decompressed and its seal record cut off: an unsealed segment followed by others."""
    path = wal / zst(4)
    plain = segment_bytes(path)
    seal = list(iter_frames(io.BytesIO(plain), path.name))[-1]
    assert seal.kind == "s"
    (wal / "seg-00000004.wal").write_bytes(plain[: seal.offset])
    path.unlink()
    return "seg-00000004.wal", None, "seg-00000004.wal"


def _awaiting_compression(wal: Path, index: int) -> Path:
    """Segment ``index`` as a crash during background compression leaves it: sealed, still a .wal."""
    path = wal / zst(index)
    plain = wal / f"seg-{index:08d}.wal"
    plain.write_bytes(segment_bytes(path))
    path.unlink()
    return plain


def pending_flip(wal: Path) -> tuple[str, int | None, str]:
    """A flipped byte in a sealed segment still awaiting compression."""
    path = _awaiting_compression(wal, 3)
    rec = [r for r in all_records(path) if r.kind == "e"][1]
    path.write_bytes(flip(path.read_bytes(), rec.offset + FRAME.size + 30))
    return path.name, rec.offset, path.name


def pending_cut(wal: Path) -> tuple[str, int | None, str]:
    """A segment awaiting compression cut mid-record: damage, never a torn tail, since others follow it."""
    path = _awaiting_compression(wal, 4)
    rec = [r for r in all_records(path) if r.kind == "e"][1]
    path.write_bytes(path.read_bytes()[: rec.offset + 10])
    return path.name, rec.offset, path.name


DAMAGES: dict[str, Damage] = {
    "open-segment-flipped-byte": open_flip,
    "open-segment-flipped-length": open_length,
    "sealed-middle-flipped-byte": _sealed_flip(2),
    "sealed-last-flipped-byte": _sealed_flip(4),
    "sealed-middle-forged-record": _sealed_forged(2),
    "sealed-last-forged-and-resealed": _sealed_forged(4),
    "sealed-compressed-flipped-byte": _compressed_flip,
    "sealed-middle-truncated": _truncated(2),
    "sealed-last-truncated": _truncated(4),
    "middle-segment-deleted": deleted_middle,
    "sealed-segments-swapped": swapped,
    "garbage-file": stranger,
    "unsealed-segment-followed-by-others": two_open,
    "awaiting-compression-flipped-byte": pending_flip,
    "awaiting-compression-cut-short": pending_cut,
}


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_damage_is_reported_and_the_writer_refuses(tmp_path: Path, kind: str) -> None:
    home = tmp_path / "home"
    wal = build(home)
    file, offset, open_file = DAMAGES[kind](wal)

    report = verify(wal)
    assert not report.ok
    named = [p for p in report.problems if p.file == file]
    assert named, report.problems
    if offset is not None:
        assert offset in [p.offset for p in named], report.problems
    first = named[0] if offset is None else next(p for p in named if p.offset == offset)

    text, js = run_cli(home), run_cli(home, "--json")
    assert text.returncode == 1, text
    assert f"DAMAGED  {first}" in text.stdout.splitlines()
    assert "Traceback" not in text.stdout + text.stderr and text.stderr == ""
    assert "problem(s)" in text.stdout.splitlines()[-1]
    assert js.returncode == 1 and "Traceback" not in js.stderr
    parsed = json.loads(js.stdout)
    assert parsed["ok"] is False
    assert {"file": first.file, "offset": first.offset, "reason": first.reason} in parsed["problems"]

    before = file_hashes(wal)
    with pytest.raises(WALCorruptError) as info:
        WALWriter(wal, fsync_interval=0).open()
    message = str(info.value)
    assert info.value.file == open_file and message.startswith(open_file)
    assert "nothing was written" in message and "move" in message
    assert file_hashes(wal) == before  # not a byte changed, no file added or removed


@pytest.mark.parametrize("kind", ["open-segment-flipped-byte", "open-segment-flipped-length"])
def test_damage_in_the_open_segment_is_not_mistaken_for_a_torn_tail(tmp_path: Path, kind: str) -> None:
    wal = build(tmp_path / "home")
    DAMAGES[kind](wal)
    report = verify(wal)
    assert report.torn_tail is None
    # readers refuse too, rather than stop quietly before the damage
    with pytest.raises(WALCorruptError):
        data_records(wal)


def test_cli_on_an_intact_wal_and_on_a_torn_tail(tmp_path: Path) -> None:
    home = tmp_path / "home"
    wal = build(home)
    result = run_cli(home)
    assert result.returncode == 0 and result.stderr == ""
    last = verify(wal).last_seq
    assert result.stdout.splitlines() == [f"WAL intact: 5 segments, {last} events, 0 gaps, seq 1..{last}"]
    size = (wal / OPEN).stat().st_size
    with (wal / OPEN).open("r+b") as f:
        f.truncate(size - 3)
    result = run_cli(home)
    assert result.returncode == 0, result
    note = [line for line in result.stdout.splitlines() if line.startswith("note")]
    assert len(note) == 1 and OPEN in note[0] and "unfinished write" in note[0]
    parsed = json.loads(run_cli(home, "--json").stdout)
    assert parsed["ok"] is True and OPEN in parsed["torn_tail"] and parsed["last_seq"] == last - 1


def test_cli_without_a_wal_says_so(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "nowhere")
    assert result.returncode == 2 and "no WAL at" in result.stderr and "Traceback" not in result.stderr


def test_a_gap_is_counted_and_keeps_the_chain(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    w = writer(wal, segment_bytes=600)
    write_events(w, 1, 3, size=100)
    w.append_gap("history lost (286)", {"_data": "fresh"}, None)
    write_events(w, 10, 3, size=100)
    w.close()
    report = verify(wal)
    assert report.ok and (report.events, report.gaps, report.first_seq, report.last_seq) == (6, 1, 1, 7)
    kinds = [r.kind for r in data_records(wal)]
    assert kinds == ["e", "e", "e", "g", "e", "e", "e"]


def test_seq_that_skips_is_damage(tmp_path: Path) -> None:
    """A record whose seq skips one (well framed, CRC right) is reported, and the writer refuses."""
    wal = tmp_path / "wal"
    w = writer(wal)
    write_events(w, 1, 4)
    w.close()
    path = wal / "seg-00000001.wal"
    recs = all_records(path)
    out = b""
    for rec in recs:
        body = dict(bson.decode(rec.body.raw))
        if rec.kind == "e" and body["seq"] >= 3:
            body["seq"] = bson.int64.Int64(body["seq"] + 1)
        out += frame(bson.encode(body))
    path.write_bytes(out)
    report = verify(wal)
    skip = recs[3]
    assert [(p.file, p.offset) for p in report.problems] == [(path.name, skip.offset)]
    assert "seq 4 follows seq 2" in report.problems[0].reason
    before = file_hashes(wal)
    with pytest.raises(WALCorruptError, match="seq 4 follows seq 2"):
        WALWriter(wal, fsync_interval=0).open()
    assert file_hashes(wal) == before


def test_frame_helper_matches_the_documented_layout() -> None:
    body = bson.encode({"k": "c"})
    data = frame(body)
    assert data[:4] == len(body).to_bytes(4, "little")
    assert data[4:8] == zlib.crc32(body).to_bytes(4, "little")
    assert data[8:] == body
