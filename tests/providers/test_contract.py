"""The provider contract, run against every provider (the Litestream habit: one suite, all back ends).

Rate-limited providers get a SimulatedClock and a day passes between uploads.
"""

from __future__ import annotations

import io
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from walkit.clock import SimulatedClock
from walkit.errors import ConfigError, ProviderError
from walkit.providers import (
    ExternalBackupProvider,
    FileSystemBackupProvider,
    Limits,
    MockExternalBackupProvider,
    ObjectStoreBackupProvider,
    StoredBackup,
)

from .helpers import BigFile, sha256_of

KINDS = [
    "mock-memory",
    "mock-dir",
    "filesystem-zstd",
    "filesystem-plain",
    "objectstore-file",
    "objectstore-memory",
    "objectstore-s3",
]
#: Providers that keep uploads in this process's memory by design (no streaming bound to check).
IN_MEMORY = {"mock-memory", "objectstore-memory"}


@dataclass
class Env:
    kind: str
    make: Callable[[], ExternalBackupProvider]  # a fresh handle on the same storage
    clock: SimulatedClock

    def next_day(self) -> None:
        self.clock.advance(hours=24, seconds=1)


@pytest.fixture(params=KINDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    kind: str = request.param
    clock = SimulatedClock()
    if kind == "mock-memory":
        mock = MockExternalBackupProvider(latency_ms=0, failure_rate=0, clock=clock)
        yield Env(kind, lambda: mock, clock)
    elif kind == "mock-dir":
        yield Env(
            kind, lambda: MockExternalBackupProvider(latency_ms=0, failure_rate=0, state_dir=tmp_path / "svc", clock=clock), clock
        )
    elif kind.startswith("filesystem"):
        compress = kind.endswith("zstd")
        yield Env(kind, lambda: FileSystemBackupProvider(tmp_path / "backups", compress=compress, clock=clock), clock)
    elif kind == "objectstore-file":
        url = (tmp_path / "store").as_uri()
        yield Env(kind, lambda: ObjectStoreBackupProvider(url, clock=clock), clock)
    elif kind == "objectstore-memory":
        import fsspec

        root = f"walkit-test-{uuid.uuid4().hex[:10]}"
        yield Env(kind, lambda: ObjectStoreBackupProvider(f"memory://{root}", clock=clock), clock)
        memory = fsspec.filesystem("memory")
        if memory.exists(f"/{root}"):
            memory.rm(f"/{root}", recursive=True)
    else:
        s3 = request.getfixturevalue("s3")
        url = s3.url()
        yield Env(kind, lambda: ObjectStoreBackupProvider(url, storage_options=s3.options, clock=clock), clock)


def test_uploads_of_bytes_file_and_path_round_trip(env: Env, tmp_path: Path) -> None:
    provider = env.make()
    as_bytes = bytes(range(256)) * 40
    as_file = b"file object \x00\xff" * 3000
    as_path = tmp_path / "payload.bin"
    as_path.write_bytes(b"a path\n" * 5000)

    refs = [provider.upload(as_bytes, {"from": "bytes"})]
    env.next_day()
    refs.append(provider.upload(io.BytesIO(as_file), {"from": "file"}))
    env.next_day()
    refs.append(provider.upload(as_path, {"from": "path"}))
    env.next_day()
    refs.append(provider.upload(str(as_path), {"from": "str path"}))

    assert len(set(refs)) == 4
    for ref, expected in zip(refs, [as_bytes, as_file, as_path.read_bytes(), as_path.read_bytes()], strict=True):
        assert provider.download(ref) == expected
        out = io.BytesIO()
        assert provider.download_to(ref, out) == len(expected)
        assert out.getvalue() == expected
    assert [b.size for b in provider.list()] == [len(as_bytes), len(as_file), 35000, 35000]


def test_a_file_object_uploads_from_its_position(env: Env) -> None:
    provider = env.make()
    stream = io.BytesIO(b"HEADER" + b"payload" * 100)
    stream.seek(6)
    ref = provider.upload(stream, {})
    assert provider.download(ref) == b"payload" * 100


def test_empty_upload_round_trips(env: Env) -> None:
    provider = env.make()
    ref = provider.upload(b"", {"empty": True})
    assert provider.download(ref) == b""
    assert [(b.ref, b.size) for b in provider.list()] == [(ref, 0)]


def test_metadata_round_trips_verbatim_and_list_is_oldest_first(env: Env) -> None:
    provider = env.make()
    metas = [
        {"index": 0, "keep_from": 0, "kind": "full", "nested": {"a": [1, 2.5, None, True, "ü✓"]}, "empty": {}},
        {"index": 1, "keep_from": 0, "kind": "incremental", "wal_end": "2026-01-02T00:00:00+00:00", "list": []},
        {"index": 2, "keep_from": 0, "unicode": "Zürich – 東京", "big": 2**53, "neg": -1.25e-7},
    ]
    refs = []
    times = []
    for i, meta in enumerate(metas):
        refs.append(provider.upload(f"bundle {i}".encode(), meta))
        times.append(env.clock.now())
        env.next_day()

    listed = provider.list()
    assert all(isinstance(b, StoredBackup) for b in listed)
    assert [b.ref for b in listed] == refs
    assert [b.metadata for b in listed] == metas
    assert [b.size for b in listed] == [len(b"bundle 0")] * 3
    for backup, at in zip(listed, times, strict=True):
        assert backup.uploaded_at.tzinfo is not None
        assert abs(backup.uploaded_at - at) < timedelta(seconds=5)
    # a fresh handle on the same storage sees the same thing
    assert [(b.ref, b.metadata) for b in env.make().list()] == [(b.ref, b.metadata) for b in listed]


def test_metadata_is_copied_not_referenced(env: Env) -> None:
    provider = env.make()
    meta = {"list": [1]}
    provider.upload(b"x", meta)
    meta["list"].append(2)
    assert provider.list()[0].metadata == {"list": [1]}


@pytest.mark.parametrize("ref", ["no-such-backup", "../../etc/passwd", "", "a/b", "x.meta.json"])
def test_unknown_ref_is_a_provider_error(env: Env, ref: str) -> None:
    provider = env.make()
    provider.upload(b"something", {})
    with pytest.raises(ProviderError) as info:
        provider.download(ref)
    assert "list()" in str(info.value)  # the message says where to find the refs that exist
    with pytest.raises(ProviderError):
        provider.download_to(ref, io.BytesIO())


def test_metadata_that_is_not_json_is_refused_before_anything_is_stored(env: Env) -> None:
    provider = env.make()
    with pytest.raises(ConfigError, match="JSON"):
        provider.upload(b"x", {"when": object()})
    assert provider.list() == []
    if isinstance(provider, MockExternalBackupProvider):
        assert provider.upload_calls == 0


def test_health_check_and_limits(env: Env) -> None:
    provider = env.make()
    assert provider.health_check() is True
    assert provider.healthCheck() is True
    limits = provider.limits()
    assert isinstance(limits, Limits)
    assert limits.refusal(0) is None


def test_a_20_mb_upload_streams_and_round_trips(
    env: Env, big_file: BigFile, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    provider = env.make()
    tracemalloc.start()
    try:
        ref = provider.upload(big_file.path, {"big": True})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if env.kind == "objectstore-s3":
        # moto runs in this process, so tracemalloc would count the server's copy too:
        # check instead that the blob went up in several parts (a multipart upload)
        s3 = request.getfixturevalue("s3")
        assert isinstance(provider, ObjectStoreBackupProvider)
        key = f"{provider.url.split('/', 3)[3]}/{ref}"
        import boto3

        head = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1").head_object(Bucket=s3.bucket, Key=key)
        assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # 20 MB in 8 MiB parts
    elif env.kind not in IN_MEMORY:
        assert peak < 8 << 20, f"peak {peak:,} bytes: the upload was not streamed"
    out = tmp_path / "restored.bin"
    with out.open("wb") as f:
        assert provider.download_to(ref, f) == big_file.size
    assert sha256_of(out) == big_file.sha256
    assert [(b.ref, b.size) for b in provider.list()] == [(ref, big_file.size)]
