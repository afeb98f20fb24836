"""FileSystemBackupProvider: compression, chain-aware pruning, its rate limit, crash leftovers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from walkit.clock import SimulatedClock
from walkit.errors import ConfigError, ProviderError, ProviderUnavailableError, RateLimitError
from walkit.providers import FileSystemBackupProvider

from .helpers import kill_mid_upload, python


def fs(path: Path, clock: SimulatedClock | None = None, **options: Any) -> FileSystemBackupProvider:
    return FileSystemBackupProvider(path, clock=clock or SimulatedClock(), **options)


def blob_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and not p.name.endswith(".meta.json"))


def test_seed_names_and_defaults(tmp_path: Path) -> None:
    p = FileSystemBackupProvider(backupDir=tmp_path / "b", maxBackups=3)
    assert (p.backup_dir, p.compress, p.max_backups, p.rate_limit_hours) == (tmp_path / "b", True, 3, 24)
    assert FileSystemBackupProvider(tmp_path).max_backups == 30
    with pytest.raises(ConfigError, match="backup_dir"):
        FileSystemBackupProvider()
    with pytest.raises(ConfigError, match="max_backups"):
        FileSystemBackupProvider(tmp_path, max_backups=0)


@pytest.mark.parametrize("compress", [True, False])
def test_compression_on_disk(tmp_path: Path, compress: bool) -> None:
    data = b"walkit change event {'op': 'insert', 'ns': 'shop.orders'}\n" * 50_000  # ~3 MB, compressible
    p = fs(tmp_path, compress=compress)
    ref = p.upload(data, {"kind": "full"})
    (blob,) = blob_files(tmp_path)
    if compress:
        assert blob.name == ref + ".zst"
        assert blob.stat().st_size < len(data) // 20
        assert blob.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    else:
        assert blob.name == ref
        assert blob.read_bytes() == data
    assert p.download(ref) == data
    sidecar = json.loads((tmp_path / f"{ref}.meta.json").read_text())
    assert sidecar["size"] == len(data) and sidecar["compressed"] is compress and sidecar["metadata"] == {"kind": "full"}
    assert len(sidecar["sha256"]) == 64 and sidecar["uploaded_at"].startswith("2026-01-01T00:00:00")
    # a provider opened with the other setting still reads it
    assert fs(tmp_path, compress=not compress).download(ref) == data


def test_rate_limit_like_the_seed(tmp_path: Path) -> None:
    clock = SimulatedClock()
    p = fs(tmp_path, clock)
    first = p.upload(b"one", {})
    clock.advance(hours=23)
    with pytest.raises(RateLimitError, match="next upload is allowed at 2026-01-02T00:00:00"):
        p.upload(b"two", {})
    assert [b.ref for b in p.list()] == [first]
    clock.advance(hours=1)
    p.upload(b"two", {})
    assert len(p.list()) == 2
    # another handle on the same folder sees the same window
    with pytest.raises(RateLimitError):
        fs(tmp_path, clock).upload(b"three", {})


def test_rate_limit_off(tmp_path: Path) -> None:
    p = fs(tmp_path, rate_limit_hours=0)
    for i in range(3):
        p.upload(bytes([i]), {})
    assert len(p.list()) == 3


def upload_all(p: FileSystemBackupProvider, clock: SimulatedClock, metas: list[dict[str, Any]]) -> list[str]:
    refs = []
    for meta in metas:
        refs.append(p.upload(json.dumps(meta).encode(), meta))
        clock.advance(hours=24)
    return refs


def names(p: FileSystemBackupProvider) -> list[str]:
    return [b.metadata["name"] for b in p.list()]


def test_max_backups_prunes_the_oldest(tmp_path: Path) -> None:
    clock = SimulatedClock()
    p = fs(tmp_path, clock, max_backups=3)
    upload_all(p, clock, [{"name": n} for n in "abcde"])
    assert names(p) == ["c", "d", "e"]
    assert len(blob_files(tmp_path)) == 3  # blobs went with their sidecars


def test_max_backups_is_chain_aware(tmp_path: Path) -> None:
    clock = SimulatedClock()
    p = fs(tmp_path, clock, max_backups=2)
    upload_all(
        p,
        clock,
        [{"name": "loose"}, {"name": "full", "index": 0}, {"name": "inc1", "index": 1}, {"name": "inc2", "index": 2}],
    )
    # the newest has no keep_from: nothing with an index is pruned, the loose one is
    assert names(p) == ["full", "inc1", "inc2"]

    upload_all(p, clock, [{"name": "inc3", "index": 3, "keep_from": 1}])
    # beyond the newest two: full (0 < 1, pruned) and inc1 (1 >= 1, kept for the chain)
    assert names(p) == ["inc1", "inc2", "inc3"]

    upload_all(p, clock, [{"name": "full2", "index": 4, "keep_from": 4}, {"name": "inc5", "index": 5, "keep_from": 4}])
    assert names(p) == ["full2", "inc5"]
    assert len(blob_files(tmp_path)) == 2


def test_max_backups_none_keeps_everything(tmp_path: Path) -> None:
    clock = SimulatedClock()
    p = fs(tmp_path, clock, max_backups=None)
    upload_all(p, clock, [{"name": str(i)} for i in range(4)])
    assert len(p.list()) == 4


def test_half_written_files_are_not_listed_and_are_swept(tmp_path: Path) -> None:
    clock = SimulatedClock()
    p = fs(tmp_path, clock)
    kept = p.upload(b"complete", {})
    clock.advance(hours=24)
    # what a crash leaves: a temp blob, a renamed blob whose sidecar was never written, a temp sidecar
    temp = tmp_path / ".backup-20260101T120000000000Z-0badf00d.zst.tmp-4242-abcdef"
    temp.write_bytes(b"half")
    orphan = tmp_path / "backup-20260101T120000000000Z-0badf00d.zst"
    orphan.write_bytes(b"no sidecar")
    temp_side = tmp_path / ".backup-20260101T120000000000Z-0badf00d.meta.json.tmp-4242-abcdef"
    temp_side.write_bytes(b'{"ref": "backup-2026')
    unrelated = tmp_path / "README.txt"
    unrelated.write_text("the operator's notes")

    assert [b.ref for b in p.list()] == [kept]
    with pytest.raises(ProviderError):
        p.download("backup-20260101T120000000000Z-0badf00d")
    p.upload(b"next", {})
    assert not temp.exists() and not orphan.exists() and not temp_side.exists()
    assert unrelated.exists()  # only walkit's own names are swept
    assert len(p.list()) == 2


KILLED = """
import sys
from walkit.providers.filesystem import FileSystemBackupProvider
FileSystemBackupProvider(sys.argv[1], compress=False).upload(sys.argv[2], {"who": "killed"})
"""


def test_kill_9_mid_upload_leaves_nothing_listed(tmp_path: Path) -> None:
    folder, fifo = tmp_path / "backups", tmp_path / "feed"
    folder.mkdir()
    os.mkfifo(fifo)
    kill_mid_upload(python(KILLED, str(folder), str(fifo)), fifo, folder)
    p = fs(folder)
    assert p.list() == []
    ref = p.upload(b"after", {})  # nothing was stored, so the window is not spent
    assert [b.ref for b in p.list()] == [ref]
    assert sorted(os.listdir(folder)) == sorted([".lock", ref + ".zst", ref + ".meta.json"])


def test_an_unreadable_sidecar_is_named(tmp_path: Path) -> None:
    p = fs(tmp_path)
    ref = p.upload(b"x", {})
    (tmp_path / f"{ref}.meta.json").write_text("{not json")
    with pytest.raises(ProviderError, match=f"{ref}.meta.json is unreadable"):
        p.list()


def test_a_damaged_blob_is_detected_on_download(tmp_path: Path) -> None:
    p = fs(tmp_path, compress=False)
    ref = p.upload(b"precious data", {})
    (tmp_path / ref).write_bytes(b"precious dat4")
    with pytest.raises(ProviderError, match="damaged"):
        p.download(ref)


def test_health_limits_and_unusable_folder(tmp_path: Path) -> None:
    p = fs(tmp_path / "new" / "folder")
    assert p.health_check() is True
    assert p.limits().free_bytes and p.limits().free_bytes > 0
    assert p.limits().max_upload_bytes is None
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    bad = fs(blocker / "backups")
    assert bad.health_check() is False
    with pytest.raises(ProviderUnavailableError, match="cannot create the backup folder") as info:
        bad.upload(b"x", {})
    assert info.value.sent is False
    with pytest.raises(ProviderUnavailableError, match="cannot read the folder"):
        bad.list()
