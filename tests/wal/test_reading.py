"""Reading frames in chunks: any chunk size gives the same records, and Record.event() decodes the event."""

from __future__ import annotations

import io
from pathlib import Path

import bson
import pytest

from walkit.wal import format as wal_module
from walkit.wal.format import PLAIN, FrameError, iter_frames, read_records, verify
from walkit.wal.writer import WALWriter

from .test_writer import make_event, write_events, writer


class Trickle(io.RawIOBase):
    """A stream that returns at most ``step`` bytes per read, as some decompressors do."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.pos, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = self.step if size < 0 else min(size, self.step)
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


@pytest.fixture(scope="module")
def wal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small and large events (one bigger than the default read chunk) across sealed segments."""
    folder = tmp_path_factory.mktemp("reading") / "wal"
    w = writer(folder, segment_bytes=3 * 1024 * 1024)
    seq = 1
    for size in (0, 10, 5000, 70_000, 1_500_000, 3, 2_100_000, 0, 64):
        write_events(w, seq, 2, size=size)
        seq += 2
    w.close()
    return folder


def snapshot(folder: Path) -> list[tuple[str, int | None, int, bytes]]:
    return [(r.kind, r.seq, r.offset, r.raw) for r in read_records(folder, kinds=("h", "e", "g", "c", "s"))]


@pytest.mark.parametrize("chunk", [1, 7, 100, 4096, 1 << 20])
def test_any_read_chunk_gives_the_same_records(wal: Path, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = snapshot(wal)
    assert [r[1] for r in expected if r[0] == "e"] == list(range(1, 19))
    assert len(list(wal.glob("*.zst"))) >= 2
    monkeypatch.setattr(wal_module, "READ_CHUNK", chunk)
    assert snapshot(wal) == expected
    assert verify(wal).ok


def test_short_reads_and_a_cut_off_record(wal: Path) -> None:
    plain = (wal / "seg-00000001.wal.zst").read_bytes()
    import zstandard

    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(plain)).read()
    whole = [(r.kind, r.offset, r.raw) for r in iter_frames(io.BytesIO(data), "x")]
    for step in (5, 8, 9, 4096):
        assert [(r.kind, r.offset, r.raw) for r in iter_frames(Trickle(data, step), "x")] == whole
    last = whole[-1]
    cut = data[: last[1] + 20]
    with pytest.raises(FrameError) as info:
        list(iter_frames(Trickle(cut, 3), "x"))
    assert info.value.torn and info.value.offset == last[1]


def test_record_event_is_the_event_as_plain_dicts(tmp_path: Path) -> None:
    folder = tmp_path / "wal"
    with WALWriter(folder, fsync_interval=0) as w:
        for i in range(1, 4):
            w.append_event(make_event(i, size=i * 10))
    for rec in read_records(folder):
        event = rec.event()
        assert type(event) is dict and type(event["fullDocument"]) is dict
        assert event == bson.decode(rec.get("ev").raw, PLAIN)
        assert bson.encode(event) == rec.get("ev").raw  # nothing lost for these types
        assert event["documentKey"] == {"_id": rec.seq}
