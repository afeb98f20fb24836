"""Sealed segments are compressed in the background: appends go on, crashes at any step are safe."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from walkit.wal import writer as walwriter
from walkit.wal.format import read_records, verify

from .test_writer import data_records, make_event, names, segment_bytes, write_events, writer

ROOT = Path(__file__).resolve().parents[2]


def test_appends_go_on_while_a_sealed_segment_compresses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = tmp_path / "wal"
    release, started = threading.Event(), threading.Event()
    real = walwriter.compress_segment

    def held(wal_dir: Path, index: int, whole: bytearray | None = None) -> None:
        started.set()
        assert release.wait(30)
        real(wal_dir, index, whole)

    monkeypatch.setattr(walwriter, "compress_segment", held)
    w = writer(wal, segment_bytes=900)
    events = []
    while not (wal / "seg-00000002.wal").exists():
        events += write_events(w, len(events) + 1, 1, size=100)
    assert started.wait(10)
    events += write_events(w, len(events) + 1, 1, size=100)  # not blocked by the compression
    w.sync()
    assert names(wal) == ["seg-00000001.wal", "seg-00000002.wal"]  # 1 is sealed, not yet compressed
    report = verify(wal)
    assert report.ok and report.torn_tail is None and report.last_seq == len(events)
    assert [r.get("ev").raw for r in data_records(wal)] == [e.raw for e in events]
    release.set()
    w.close()  # waits for the compression
    assert names(wal) == ["seg-00000001.wal.zst", "seg-00000002.wal"]
    assert [r.get("ev").raw for r in data_records(wal)] == [e.raw for e in events]


def test_a_failed_compression_is_a_warning_and_the_next_open_finishes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = tmp_path / "wal"

    def full(wal_dir: Path, index: int, whole: bytearray | None = None) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(walwriter, "compress_segment", full)
    warnings: list[str] = []
    w = writer(wal, segment_bytes=900, warnings=warnings)
    events = []
    while not (wal / "seg-00000003.wal").exists():
        events += write_events(w, len(events) + 1, 1, size=100)
    w.close()
    assert len(warnings) == 2 and "seg-00000001.wal: sealed but not compressed" in warnings[0] and "No space" in warnings[0]
    assert names(wal) == ["seg-00000001.wal", "seg-00000002.wal", "seg-00000003.wal"]
    assert verify(wal).ok
    monkeypatch.undo()
    w = writer(wal)
    assert w.next_seq == len(events) + 1
    w.close()
    assert names(wal) == ["seg-00000001.wal.zst", "seg-00000002.wal.zst", "seg-00000003.wal"]
    assert [r.get("ev").raw for r in data_records(wal)] == [e.raw for e in events]


def test_crash_during_background_compression(tmp_path: Path) -> None:
    """seg-2 sealed but still a .wal, a half-written zstd copy, seg-3 already begun."""
    wal = tmp_path / "wal"
    w = writer(wal, segment_bytes=900)
    events = []
    while not (wal / "seg-00000004.wal").exists():
        events += write_events(w, len(events) + 1, 1, size=100)
    w.close()
    zst = wal / "seg-00000002.wal.zst"
    plain = segment_bytes(zst)
    (wal / "seg-00000002.wal").write_bytes(plain)
    (wal / "seg-00000002.wal.zst.tmp").write_bytes(zst.read_bytes()[:40])
    zst.unlink()
    report = verify(wal)
    assert report.ok and report.torn_tail is None and report.last_seq == len(events)
    assert [r.seq for r in data_records(wal)] == list(range(1, len(events) + 1))
    w = writer(wal)
    w.append_event(make_event(999))
    w.close()
    assert names(wal) == ["seg-00000001.wal.zst", "seg-00000002.wal.zst", "seg-00000003.wal.zst", "seg-00000004.wal"]
    assert segment_bytes(zst) == plain
    assert [r.get("ev").raw for r in data_records(wal)] == [e.raw for e in events] + [make_event(999).raw]


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from walkit.wal import writer as walwriter
    from tests.wal.test_writer import make_event

    real = walwriter.compress_segment
    def slow(wal_dir, index, whole=None):  # widen the window in which a kill finds a sealed segment uncompressed
        time.sleep(0.02)
        real(wal_dir, index, whole)
    walwriter.compress_segment = slow

    w = walwriter.WALWriter(Path(sys.argv[1]), segment_bytes=3000, fsync_interval=0.01).open()
    print(w.next_seq, flush=True)
    while True:
        seq = w.next_seq
        w.append_event(make_event(seq, size=120))
        w.commit()
    """
)


def test_kill_9_of_a_writer_while_it_seals_and_compresses(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    rng = random.Random(7)
    caught_pending = 0
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(wal)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert proc.stdout is not None and int(proc.stdout.readline())
        time.sleep(rng.uniform(0.05, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        left = names(wal)
        caught_pending += len([n for n in left if n.endswith(".wal")]) > 1 or any(n.endswith(".tmp") for n in left)
        report = verify(wal)
        assert report.ok, report.problems
        recs = data_records(wal)
        assert [r.seq for r in recs] == list(range(1, len(recs) + 1))
        assert [r.get("ev").raw for r in recs] == [make_event(r.seq, size=120).raw for r in recs]
    w = writer(wal)
    w.close()
    left = names(wal)
    assert [n for n in left if not n.endswith(".zst")] == [left[-1]]
    assert caught_pending >= 1, "no kill found a sealed segment awaiting compression"
    assert verify(wal).ok and len(data_records(wal)) >= 100


def test_the_syncer_flushes_early_once_much_is_unsynced(tmp_path: Path) -> None:
    """With an hour's fsync interval, writing more than SYNC_BYTES still becomes durable soon."""
    durable: list[int] = []
    w = writer(tmp_path / "wal")  # fsync_interval=3600: the timer alone would not sync for an hour
    w.on_durable = durable.append
    written = write_events(w, 1, 40, size=1000)
    w.commit(flush=True)
    time.sleep(0.3)
    assert w.durable_seq == 0 and not durable  # little written: nothing synced yet
    count = 40
    while count * 1200 < walwriter.SYNC_BYTES + (1 << 20):
        written += write_events(w, count + 1, 100, size=1000)
        count += 100
    w.commit(flush=True)
    seg = tmp_path / "wal" / "seg-00000001.wal"

    def unsynced() -> int:  # bytes after the newest durable record
        ends = {r.seq: r.offset + r.size for r in read_records(tmp_path / "wal")}
        return seg.stat().st_size - ends.get(w.durable_seq, 0)

    deadline = time.monotonic() + 10
    while unsynced() >= walwriter.SYNC_BYTES and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.durable_seq > 0 and durable and durable[-1] == w.durable_seq
    assert unsynced() < walwriter.SYNC_BYTES
    w.close()
    assert len(data_records(tmp_path / "wal")) == len(written)


@pytest.mark.parametrize("whole", [1 << 30, 2500, 0])
def test_sealed_copies_hold_exactly_the_written_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole: int) -> None:
    """Compressed from the writer's memory, from the file, or streamed (segments over COMPRESS_WHOLE);
    and a segment resumed by a second writer is compressed from the file."""
    monkeypatch.setattr(walwriter, "COMPRESS_WHOLE", whole)
    wal = tmp_path / "wal"
    w = writer(wal, segment_bytes=4000)
    events = write_events(w, 1, 7, size=300)
    w.close()
    w = writer(wal, segment_bytes=4000)  # resumes the open segment
    events += write_events(w, 8, 30, size=300)
    w.close()
    zst = sorted(wal.glob("*.zst"))
    assert len(zst) >= 5
    report = verify(wal)  # every seal's hash is of the decompressed bytes
    assert report.ok and report.last_seq == 37
    plain = b"".join(segment_bytes(p) for p in zst) + (wal / names(wal)[-1]).read_bytes()
    assert all(e.raw in plain for e in events)
    assert [r.get("ev").raw for r in data_records(wal)] == [e.raw for e in events]
