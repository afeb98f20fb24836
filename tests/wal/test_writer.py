"""The WAL writer: round trips, rotation and sealing, recovery after a crash, the writer lock.

Helpers at the top (``make_event``, ``writer``, ``data_records``, ...) are shared
with ``test_verify.py``.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import pytest
import zstandard
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walkit.clock import SimulatedClock
from walkit.errors import WALLockedError
from walkit.home import Home
from walkit.wal.format import FRAME, Record, iter_frames, list_segments, read_records, verify
from walkit.wal.writer import WALWriter, raw_event

T0 = datetime(2026, 1, 1, tzinfo=UTC)


# -- helpers (also used by test_verify.py) ---------------------------------------------


def make_event(i: int, size: int = 0, op: str = "insert") -> RawBSONDocument:
    """A change event with a unique token; ``size`` pads its document."""
    return raw_event({
        "_id": {"_data": f"82{i:014X}"},
        "operationType": op,
        "clusterTime": Timestamp(1_767_225_600 + i, 1),
        "wallTime": T0 + timedelta(milliseconds=i),
        "ns": {"db": "shop", "coll": "orders"},
        "documentKey": {"_id": i},
        "fullDocument": {"_id": i, "pad": "x" * size, "n": bson.int64.Int64(i)},
    })


def writer(wal: Path, clock: SimulatedClock | None = None, warnings: list[str] | None = None, **kw: Any) -> WALWriter:
    """An opened writer; warnings go to ``warnings`` (an unexpected one fails the test)."""
    sink: list[str] = warnings if warnings is not None else []

    def warn(msg: str) -> None:
        if warnings is None:
            raise AssertionError(f"unexpected warning: {msg}")
        sink.append(msg)

    kw.setdefault("fsync_interval", 3600.0)
    return WALWriter(wal, clock=clock or SimulatedClock(T0), warn=warn, **kw).open()


def data_records(wal: Path) -> list[Record]:
    return list(read_records(wal))


def all_records(path: Path) -> list[Record]:
    """Every record of one segment file (sealed or open), header and seal included."""
    data = segment_bytes(path)
    return list(iter_frames(io.BytesIO(data), path.name))


def segment_bytes(path: Path) -> bytes:
    """The uncompressed bytes of a segment file."""
    data = path.read_bytes()
    if path.name.endswith(".zst"):
        obj = zstandard.ZstdDecompressor().decompressobj()
        out = obj.decompress(data)
        assert obj.eof and not obj.unused_data, f"{path.name} is not exactly one zstd frame"
        return out
    return data


def write_events(w: WALWriter, start: int, count: int, size: int = 0) -> list[RawBSONDocument]:
    events = [make_event(i, size) for i in range(start, start + count)]
    for ev in events:
        w.append_event(ev)
        w.commit()
    return events


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def norm(token: Any) -> bytes | None:
    """A token as comparable bytes (dicts and RawBSONDocuments alike)."""
    return None if token is None else bson.encode(token)


def names(wal: Path) -> list[str]:
    return sorted(p.name for p in wal.iterdir())


# -- round trips -----------------------------------------------------------------------


def test_round_trip_one_segment(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    w = writer(wal)
    events = write_events(w, 1, 20, size=30)
    assert w.next_seq == 21
    w.close()
    recs = data_records(wal)
    assert [r.get("ev").raw for r in recs] == [e.raw for e in events]
    assert [r.seq for r in recs] == list(range(1, 21))
    assert [r.get("ct") for r in recs] == [e["clusterTime"] for e in events]
    assert [norm(r.get("tok")) for r in recs] == [norm(e["_id"]) for e in events]
    assert names(wal) == ["seg-00000001.wal"]
    report = verify(wal)
    assert report.ok and report.torn_tail is None, report.problems
    assert (report.events, report.first_seq, report.last_seq) == (20, 1, 20)


def test_round_trip_across_rotations_and_reopenings(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    events: list[RawBSONDocument] = []
    for run in range(4):
        w = writer(wal, segment_bytes=700)
        assert w.next_seq == len(events) + 1
        if events:
            assert norm(w.last_token) == norm(events[-1]["_id"])
        events += write_events(w, len(events) + 1, 15, size=40 + run * 50)
        w.close()
    sealed = sorted(p.name for p in wal.glob("*.wal.zst"))
    assert len(sealed) >= 10
    opened = sorted(p.name for p in wal.glob("*.wal"))
    assert len(opened) == 1 and opened[0] > sealed[-1]
    recs = data_records(wal)
    assert [r.get("ev").raw for r in recs] == [e.raw for e in events]
    assert [r.seq for r in recs] == list(range(1, len(events) + 1))
    assert read_records(wal, 17, 23).__next__().seq == 17
    assert [r.seq for r in read_records(wal, 17, 23)] == list(range(17, 24))
    assert verify(wal).ok


def test_sealed_segments_are_single_zstd_frames_chained_by_hash(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    w = writer(wal, segment_bytes=600)
    before: dict[str, bytes] = {}
    for i in range(1, 30):
        open_seg = max(wal.glob("*.wal"))  # the newest: a sealed one may still await compression
        pre = open_seg.read_bytes()
        w.append_event(make_event(i, 50))
        w.commit()
        if max(wal.glob("*.wal")) != open_seg:  # just sealed: the zstd copy starts with exactly what the open file had
            before[open_seg.name + ".zst"] = pre
    w.close()
    zsts = sorted(wal.glob("*.wal.zst"))
    assert len(zsts) >= 3
    prev_hash, next_seq = "", 1
    for index, path in enumerate(zsts, start=1):
        data = path.read_bytes()
        assert data[:4] == b"\x28\xb5\x2f\xfd"  # the zstd frame magic
        assert zstandard.get_frame_parameters(data).window_size > 0
        plain = segment_bytes(path)
        if shutil.which("zstd"):  # the standard tool agrees, when the machine has it
            assert subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout == plain
        recs = list(iter_frames(io.BytesIO(plain), path.name))
        assert recs[0].kind == "h" and recs[-1].kind == "s"
        assert sum(r.size for r in recs) == len(plain)
        header, seal = recs[0], recs[-1]
        assert header.get("segment") == index
        assert header.get("prev") == prev_hash
        assert header.get("first_seq") == next_seq
        assert seal.get("sha256") == hashlib.sha256(plain[: seal.offset]).hexdigest()
        assert seal.get("records") == len([r for r in recs if r.kind in ("e", "g")])
        if path.name in before:
            assert plain[: len(before[path.name])] == before[path.name]
        prev_hash, next_seq = seal.get("sha256"), seal.get("last_seq") + 1
    open_seg = next(wal.glob("*.wal"))
    header = all_records(open_seg)[0]
    assert (header.get("prev"), header.get("first_seq"), header.get("segment")) == (prev_hash, next_seq, len(zsts) + 1)
    assert before, "no seal was observed"


def test_time_based_rotation(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    clock = SimulatedClock(T0)
    w = writer(wal, clock=clock, segment_seconds=60)
    write_events(w, 1, 3)
    clock.advance(59)
    write_events(w, 4, 1)
    assert not list(wal.glob("*.zst")), "rotated before segment_seconds"
    clock.advance(1)
    write_events(w, 5, 1)
    w.wait_for_seal()
    assert names(wal) == ["seg-00000001.wal.zst", "seg-00000002.wal"]
    clock.advance(3600)
    w.commit()  # an empty segment is never sealed, however old
    assert names(wal) == ["seg-00000001.wal.zst", "seg-00000002.wal"]
    write_events(w, 6, 2)  # segment 2 is an hour old: sealed with event 6; event 7 opens segment 3
    w.wait_for_seal()
    assert names(wal) == ["seg-00000001.wal.zst", "seg-00000002.wal.zst", "seg-00000003.wal"]
    w.close()
    clock.advance(61)
    # a reopened writer measures the segment's age from its header, not from the reopening
    w2 = writer(wal, clock=clock, segment_seconds=60)
    write_events(w2, 8, 1)
    w2.wait_for_seal()
    assert names(wal)[-2:] == ["seg-00000003.wal.zst", "seg-00000004.wal"]
    w2.close()
    assert [len([r for r in all_records(wal / n) if r.kind == "e"]) for n in names(wal)] == [5, 1, 2, 0]
    assert [r.seq for r in data_records(wal)] == list(range(1, 9))
    created = [all_records(wal / n)[0].get("created") for n in names(wal)]
    assert created == sorted(created) and created[0] == T0


def test_buffered_records_reach_disk_only_on_commit(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    w = writer(wal)
    w.append_event(make_event(1))
    assert data_records(wal) == []
    w.commit(flush=True)  # a plain commit may wait for more while records arrive quickly
    assert [r.seq for r in data_records(wal)] == [1]
    durable: list[int] = []
    w.on_durable = durable.append
    w.append_event(make_event(2))
    w.sync()
    assert durable == [2] and w.durable_seq == 2
    w.close()


# -- the property test -----------------------------------------------------------------

OPS = st.one_of(
    st.tuples(st.just("event"), st.integers(0, 400)),
    st.tuples(st.just("gap"), st.booleans()),
    st.tuples(st.just("checkpoint"), st.just(0)),
    st.tuples(st.just("commit"), st.just(0)),
    st.tuples(st.just("sync"), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0)),
    st.tuples(st.just("advance"), st.integers(1, 120)),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(OPS, max_size=40), segment_bytes=st.sampled_from([150, 400, 1500, 1 << 20]))
def test_any_sequence_of_operations_reads_back_exactly(tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]], segment_bytes: int) -> None:
    wal = tmp_path_factory.mktemp("prop") / "wal"
    clock = SimulatedClock(T0)
    w = writer(wal, clock=clock, segment_bytes=segment_bytes, segment_seconds=300)
    expected: list[tuple[str, bytes]] = []  # (kind, event bytes or gap reason)
    token: bytes | None = None
    n = 0
    for op, arg in ops:
        n += 1
        if op == "event":
            ev = make_event(n, arg)
            assert w.append_event(ev) == len(expected) + 1
            expected.append(("e", ev.raw))
            token = norm(ev["_id"])
        elif op == "gap":
            resume = {"_data": f"gap{n}"} if arg else None
            assert w.append_gap(f"lost {n}", resume, Timestamp(1, n) if arg else None) == len(expected) + 1
            expected.append(("g", f"lost {n}".encode()))
            token = norm(resume) if resume is not None else token
        elif op == "checkpoint":
            cp = {"_data": f"cp{n}"}
            w.checkpoint(cp, Timestamp(2, n))
            token = norm(cp)
        elif op == "commit":
            w.commit()
        elif op == "sync":
            w.sync()
        elif op == "advance":
            clock.advance(arg)
        else:
            w.close()
            w = writer(wal, clock=clock, segment_bytes=segment_bytes, segment_seconds=300)
        assert w.next_seq == len(expected) + 1
        assert norm(w.last_token) == token, (op, arg)
    w.close()
    recs = data_records(wal)
    got = [(r.kind, r.get("ev").raw if r.kind == "e" else r.get("reason").encode()) for r in recs]
    assert got == expected
    assert [r.seq for r in recs] == list(range(1, len(expected) + 1))
    report = verify(wal)
    assert report.ok and report.torn_tail is None, report.problems
    assert (report.events, report.gaps) == (sum(k == "e" for k, _ in expected), sum(k == "g" for k, _ in expected))
    w2 = writer(wal, clock=clock, segment_bytes=segment_bytes, segment_seconds=300)
    assert w2.next_seq == len(expected) + 1
    assert norm(w2.last_token) == token
    w2.close()


def test_gap_token_rules(tmp_path: Path) -> None:
    """After a gap the writer resumes from the gap's resume token; a gap without one keeps the older token."""
    wal = tmp_path / "wal"
    w = writer(wal)
    write_events(w, 1, 2)
    w.append_gap("lost", None, None)
    assert norm(w.last_token) == norm(make_event(2)["_id"]) and w.last_gap
    w.close()
    w = writer(wal)
    assert norm(w.last_token) == norm(make_event(2)["_id"]) and w.last_gap and w.next_seq == 4
    w.append_gap("lost again", {"_data": "new"}, Timestamp(5, 5))
    assert norm(w.last_token) == norm({"_data": "new"}) and w.last_ct == Timestamp(5, 5)
    w.close()
    w = writer(wal)
    assert norm(w.last_token) == norm({"_data": "new"}) and w.last_ct == Timestamp(5, 5) and w.last_gap
    w.checkpoint({"_data": "cp"}, None)
    assert not w.last_gap
    w.close()
    w = writer(wal)
    assert norm(w.last_token) == norm({"_data": "cp"}) and not w.last_gap
    w.append_event(make_event(9, op="invalidate"))
    w.close()
    w = writer(wal)
    assert w.last_invalidate and norm(w.last_token) == norm(make_event(9)["_id"]) and w.next_seq == 6
    w.close()


# -- torn tails ------------------------------------------------------------------------


def _one_segment(wal: Path, count: int = 6) -> tuple[Path, list[Record]]:
    w = writer(wal)
    write_events(w, 1, count, size=25)
    w.close()
    seg = wal / "seg-00000001.wal"
    return seg, all_records(seg)


# cut points, relative to the start of the record that is cut (-1 = its last byte)
@pytest.mark.parametrize("victim,cut", [(-1, 1), (-1, 4), (-1, 7), (-1, 8), (-1, 9), (-1, 30), (-1, -1), (-3, 5), (-3, 40)])
def test_torn_tail_is_truncated_with_a_warning(tmp_path: Path, victim: int, cut: int) -> None:
    wal = tmp_path / "wal"
    seg, recs = _one_segment(wal)
    rec = recs[victim]
    at = rec.offset + (rec.size - 1 if cut == -1 else cut)
    assert rec.offset < at < rec.offset + rec.size
    with seg.open("r+b") as f:
        f.truncate(at)
    kept = [r for r in recs if r.offset + r.size <= rec.offset and r.kind == "e"]
    _check_torn(wal, seg, rec.offset, kept)


@pytest.mark.parametrize(
    "garbage",
    [b"\x00", b"\x00" * 7, b"\x00" * 8, b"\x00" * 9, b"\x00" * 4096, b"\xff" * 20, bytes(range(256)) * 3, b"\x10\x00\x00\x00\x12\x34\x56\x78abc"],
    ids=["zero1", "zero7", "zero8", "zero9", "zeropage", "ff20", "ramp", "shortframe"],
)
def test_garbage_after_the_last_record_is_a_torn_tail(tmp_path: Path, garbage: bytes) -> None:
    wal = tmp_path / "wal"
    seg, recs = _one_segment(wal)
    end = seg.stat().st_size
    with seg.open("ab") as f:
        f.write(garbage)
    _check_torn(wal, seg, end, [r for r in recs if r.kind == "e"])


def _check_torn(wal: Path, seg: Path, offset: int, kept: list[Record]) -> None:
    report = verify(wal)
    assert report.ok, report.problems
    assert report.torn_tail is not None
    assert (report.torn_tail.file, report.torn_tail.offset) == (seg.name, offset)
    assert [r.seq for r in data_records(wal)] == [r.seq for r in kept]  # readers stop before the torn tail
    warnings: list[str] = []
    w = writer(wal, warnings=warnings)
    assert len(warnings) == 1 and seg.name in warnings[0] and str(offset) in warnings[0] and "torn" in warnings[0]
    assert seg.stat().st_size == offset
    assert w.next_seq == len(kept) + 1
    if kept:
        assert norm(w.last_token) == norm(kept[-1].get("tok"))
    w.append_event(make_event(100))
    w.close()
    recs = data_records(wal)
    assert [r.get("ev").raw for r in recs] == [r.get("ev").raw for r in kept] + [make_event(100).raw]
    assert [r.seq for r in recs] == list(range(1, len(kept) + 2))
    report = verify(wal)
    assert report.ok and report.torn_tail is None


def test_torn_header_of_a_fresh_segment_starts_it_again(tmp_path: Path) -> None:
    """A crash while the next segment's header was being written: the segment begins afresh."""
    wal = tmp_path / "wal"
    w = writer(wal, segment_bytes=300)
    write_events(w, 1, 3, size=200)
    w.close()
    open_seg = next(wal.glob("*.wal"))
    assert open_seg.name == "seg-00000004.wal" and len(all_records(open_seg)) == 1
    header = open_seg.read_bytes()
    for cut in (0, 3, FRAME.size + 2, len(header) - 1):
        open_seg.write_bytes(header[:cut])
        warnings: list[str] = []
        w = writer(wal, warnings=warnings)
        assert len(warnings) == (1 if cut else 0)
        assert w.next_seq == 4
        w.close()
        assert all_records(open_seg)[0].get("prev") == all_records(wal / "seg-00000003.wal.zst")[-1].get("sha256")
        assert verify(wal).ok


# -- a crash while sealing -------------------------------------------------------------


def _sealing_crash(wal: Path) -> tuple[Path, bytes, list[bytes]]:
    """A WAL whose segment 2 has just been sealed: returns seg 2's open name, its bytes and the events."""
    w = writer(wal, segment_bytes=900)
    events: list[RawBSONDocument] = []
    while not (wal / "seg-00000003.wal").exists():  # segment 2 sealed; close() waits for its zstd copy
        events += write_events(w, len(events) + 1, 1, size=100)
    w.close()
    assert names(wal) == ["seg-00000001.wal.zst", "seg-00000002.wal.zst", "seg-00000003.wal"]
    assert len(all_records(wal / "seg-00000003.wal")) == 1  # only its header: the seal was the last thing
    plain = segment_bytes(wal / "seg-00000002.wal.zst")
    return wal / "seg-00000002.wal", plain, [e.raw for e in events]


def _reopen_and_check(wal: Path, events: list[bytes]) -> None:
    w = writer(wal)
    assert w.next_seq == len(events) + 1
    w.append_event(make_event(50))
    w.close()
    recs = data_records(wal)
    assert [r.get("ev").raw for r in recs] == events + [make_event(50).raw]
    assert [r.seq for r in recs] == list(range(1, len(events) + 2))
    assert not [n for n in names(wal) if n.endswith(".tmp")]
    report = verify(wal)
    assert report.ok and report.torn_tail is None, report.problems
    assert [n for n in names(wal) if n.endswith(".wal")] == [names(wal)[-1]]


def test_crash_after_the_seal_record_before_the_zstd_copy(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    src, plain, events = _sealing_crash(wal)
    (wal / "seg-00000002.wal.zst").unlink()
    (wal / "seg-00000003.wal").unlink()
    src.write_bytes(plain)
    assert verify(wal).ok
    _reopen_and_check(wal, events)
    assert segment_bytes(wal / "seg-00000002.wal.zst") == plain
    assert names(wal)[:3] == ["seg-00000001.wal.zst", "seg-00000002.wal.zst", "seg-00000003.wal"]


def test_crash_during_the_zstd_copy_leaves_a_tmp_file(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    src, plain, events = _sealing_crash(wal)
    zst = wal / "seg-00000002.wal.zst"
    half = zst.read_bytes()[:40]
    zst.unlink()
    (wal / "seg-00000003.wal").unlink()
    src.write_bytes(plain)
    (wal / "seg-00000002.wal.zst.tmp").write_bytes(half)
    assert verify(wal).ok
    _reopen_and_check(wal, events)
    assert segment_bytes(zst) == plain


def test_crash_after_the_rename_before_the_unlink(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    src, plain, events = _sealing_crash(wal)
    (wal / "seg-00000003.wal").unlink()
    src.write_bytes(plain)  # both seg-2.wal and seg-2.wal.zst
    assert verify(wal).ok
    assert [r.seq for r in data_records(wal)] == list(range(1, len(events) + 1))  # not doubled
    _reopen_and_check(wal, events)
    assert not src.exists()


def test_crash_after_the_unlink_before_the_next_segment(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    _, _, events = _sealing_crash(wal)
    (wal / "seg-00000003.wal").write_bytes(b"")  # created, header never written
    assert verify(wal).ok
    _reopen_and_check(wal, events)
    (wal / "seg-00000004.wal").unlink(missing_ok=True)


def test_crash_with_both_copies_and_a_torn_tail_after_the_seal(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    src, plain, events = _sealing_crash(wal)
    (wal / "seg-00000002.wal.zst").unlink()
    (wal / "seg-00000003.wal").unlink()
    src.write_bytes(plain + b"\x00" * 5)
    warnings: list[str] = []
    w = writer(wal, warnings=warnings)
    assert len(warnings) == 1
    w.close()
    assert segment_bytes(wal / "seg-00000002.wal.zst") == plain
    _reopen_and_check(wal, events)


# -- the writer lock -------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from walkit.home import Home
    Home(sys.argv[1]).lock()
    print("locked", flush=True)
    time.sleep(60)
    """
)
CONTENDER = textwrap.dedent(
    """
    import sys
    from walkit.errors import WALLockedError
    from walkit.home import Home
    try:
        Home(sys.argv[1]).lock()
    except WALLockedError as exc:
        print(exc)
        sys.exit(3)
    print("got it")
    """
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "home")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_writer_lock_names_the_holder_and_dies_with_it(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    home = tmp_path / "home"
    with pytest.raises(WALLockedError) as info:
        Home(home).lock()
    assert f"pid {holder.pid}" in str(info.value) and str(home) in str(info.value)
    other = subprocess.run([sys.executable, "-c", CONTENDER, str(home)], capture_output=True, text=True, timeout=30)
    assert other.returncode == 3 and f"pid {holder.pid}" in other.stdout, other
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    deadline = time.monotonic() + 10
    while True:
        try:
            mine = Home(home).lock()
            break
        except WALLockedError:
            assert time.monotonic() < deadline, "the lock outlived its holder"
            time.sleep(0.05)
    assert (home / "writer.lock").read_text() == f"walkit pid {os.getpid()}\n"
    other = subprocess.run([sys.executable, "-c", CONTENDER, str(home)], capture_output=True, text=True, timeout=30)
    assert other.returncode == 3 and f"pid {os.getpid()}" in other.stdout
    mine.unlock()
    other = subprocess.run([sys.executable, "-c", CONTENDER, str(home)], capture_output=True, text=True, timeout=30)
    assert other.returncode == 0 and other.stdout.strip() == "got it"


def test_list_segments_prefers_the_sealed_copy(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    src, plain, _ = _sealing_crash(wal)
    src.write_bytes(plain)
    listing = list_segments(wal)
    assert [(s.index, s.sealed) for s in listing.segments] == [(1, True), (2, True), (3, False)]
    assert listing.strangers == []


def test_a_reader_follows_a_segment_sealed_under_it(tmp_path: Path) -> None:
    from walkit.wal.format import Report, Segment, list_segments, summarize

    wal = tmp_path / "wal"
    w = writer(wal, segment_bytes=10_000)
    events = write_events(w, 1, 3, size=100)
    listed = list_segments(wal).segments
    assert [s.name for s in listed] == ["seg-00000001.wal"]
    events += write_events(w, 4, 40, size=400)  # seals segment 1 (its .wal is removed)
    assert not (wal / "seg-00000001.wal").exists()
    first = [r.get("ev").raw for r in listed[0].records() if r.kind == "e"]
    assert first and first == [e.raw for e in events[: len(first)]]
    report = Report()
    summary = summarize(Segment(1, wal / "seg-00000001.wal", False), report)  # as listed before sealing
    assert summary.sealed and not report.problems
    w.close()
