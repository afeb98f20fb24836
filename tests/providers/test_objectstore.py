"""ObjectStoreBackupProvider: S3 through moto's server, unreachable endpoints, names, half-done uploads."""

from __future__ import annotations

import io
import json
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import fsspec
import pytest

from walkit.clock import SimulatedClock
from walkit.errors import ConfigError, ProviderError, ProviderUnavailableError
from walkit.providers import ObjectStoreBackupProvider

from .helpers import S3Endpoint


def s3_client(s3: S3Endpoint):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1")


def keys(s3: S3Endpoint, url: str) -> list[str]:
    prefix = url.split("/", 3)[3] + "/"
    listing = s3_client(s3).list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return sorted(o["Key"][len(prefix) :] for o in listing.get("Contents", []))


@pytest.fixture
def memory_url() -> Iterator[str]:
    root = f"walkit-os-{uuid.uuid4().hex[:10]}"
    yield f"memory://{root}"
    memory = fsspec.filesystem("memory")
    if memory.exists(f"/{root}"):
        memory.rm(f"/{root}", recursive=True)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_s3_objects_are_blob_then_description(s3: S3Endpoint) -> None:
    url = s3.url()
    p = ObjectStoreBackupProvider(url, storage_options=s3.options, clock=SimulatedClock())
    ref = p.upload(b"bundle bytes", {"name": "bundle-0001.walkit", "index": 1})
    assert ref == "bundle-0001.walkit"
    assert keys(s3, url) == ["bundle-0001.walkit", "bundle-0001.walkit.meta.json"]
    obj = s3_client(s3).get_object(Bucket=s3.bucket, Key=f"{url.split('/', 3)[3]}/bundle-0001.walkit")
    assert obj["Body"].read() == b"bundle bytes"
    description = json.loads(
        s3_client(s3).get_object(Bucket=s3.bucket, Key=f"{url.split('/', 3)[3]}/{ref}.meta.json")["Body"].read()
    )
    assert description["metadata"] == {"name": "bundle-0001.walkit", "index": 1}
    assert description["size"] == 12 and len(description["sha256"]) == 64
    # another process (a fresh handle, no shared cache) sees it
    again = ObjectStoreBackupProvider(url, storage_options={**s3.options, "skip_instance_cache": True})
    assert [(b.ref, b.size) for b in again.list()] == [(ref, 12)]
    assert again.health_check() is True


def test_unreachable_endpoint(tmp_path: Path) -> None:
    options = {
        "key": "k",
        "secret": "s",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{closed_port()}", "region_name": "us-east-1"},
        "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": 2},
        "skip_instance_cache": True,
    }
    p = ObjectStoreBackupProvider("s3://walkit-backups/nowhere", storage_options=options)
    started = time.monotonic()
    assert p.health_check() is False
    with pytest.raises(ProviderUnavailableError) as info:
        p.upload(b"x" * 1000, {})
    message = str(info.value)
    assert info.value.sent is False
    assert "could not reach the object store at s3://walkit-backups/nowhere" in message
    assert "nothing was uploaded" in message and "check the endpoint" in message
    assert "Traceback" not in message and "'k'" not in message and "secret" not in message
    with pytest.raises(ProviderUnavailableError, match="could not list"):
        p.list()
    with pytest.raises(ProviderError):
        p.download("backup-x")
    assert time.monotonic() - started < 15


def test_missing_bucket_is_not_healthy(s3: S3Endpoint) -> None:
    p = ObjectStoreBackupProvider("s3://no-such-bucket/prefix", storage_options=s3.options)
    assert p.health_check() is False
    with pytest.raises(ProviderError, match="s3://no-such-bucket/prefix does not exist"):
        p.list()  # not an empty list: a wrong bucket name must not look like "no backups"
    with pytest.raises(ProviderError, match="no-such-bucket.*bucket does not exist") as info:
        p.upload(b"x", {})
    assert info.value.sent is True


@pytest.mark.parametrize("store", ["memory", "s3", "file"])
def test_a_blob_without_description_is_not_listed(store: str, s3: S3Endpoint, memory_url: str, tmp_path: Path) -> None:
    url = {"memory": memory_url, "s3": s3.url(), "file": (tmp_path / "store").as_uri()}[store]
    options = s3.options if store == "s3" else {}
    p = ObjectStoreBackupProvider(url, storage_options=options, clock=SimulatedClock())
    done = p.upload(b"complete", {"name": "done"})
    fs, root = fsspec.core.url_to_fs(url, **options)
    fs.pipe_file(f"{root}/half-done", b"the blob of an upload that died before its description")
    fs.pipe_file(f"{root}/notes.txt", b"unrelated")
    assert [b.ref for b in p.list()] == [done]
    with pytest.raises(ProviderError, match="holds no backup 'half-done'"):
        p.download("half-done")
    # the name is free: the half-done upload can be redone
    assert p.upload(b"redone", {"name": "half-done"}) == "half-done"
    assert p.download("half-done") == b"redone"


@pytest.mark.parametrize(
    "name", ["a/b", "..", "x..y", "../escape", "", ".hidden", "a\\b", "x.meta.json", "tab\there", 42, "n" * 201]
)
def test_bad_names_are_config_errors(name: object, memory_url: str) -> None:
    p = ObjectStoreBackupProvider(memory_url)
    with pytest.raises(ConfigError, match="cannot be an object name"):
        p.upload(b"x", {"name": name})
    assert p.list() == []


def test_a_taken_name_is_refused_before_sending(memory_url: str) -> None:
    p = ObjectStoreBackupProvider(memory_url)
    p.upload(b"first", {"name": "daily"})
    with pytest.raises(ProviderError, match="already holds a backup named 'daily'") as info:
        p.upload(b"second", {"name": "daily"})
    assert info.value.sent is False
    assert p.download("daily") == b"first"


def test_a_failure_mid_upload_leaves_nothing_behind(s3: S3Endpoint) -> None:
    class Broken(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            if self.tell() >= 10 << 20:  # after one 8 MiB part has gone up
                raise OSError("the bundle file vanished")
            return super().read(n)

    url = s3.url()
    p = ObjectStoreBackupProvider(url, storage_options=s3.options)
    with pytest.raises(ProviderError, match="could not read the data to upload .*vanished") as info:
        p.upload(Broken(b"\0" * (12 << 20)), {"name": "broken"})
    assert info.value.sent is True
    assert p.list() == []
    assert keys(s3, url) == []
    uploads = s3_client(s3).list_multipart_uploads(Bucket=s3.bucket, Prefix=url.split("/", 3)[3])
    assert uploads.get("Uploads", []) == []  # the multipart upload was aborted


def test_a_damaged_blob_or_description_is_detected(tmp_path: Path) -> None:
    url = (tmp_path / "store").as_uri()
    p = ObjectStoreBackupProvider(url)
    ref = p.upload(b"precious", {})
    (tmp_path / "store" / ref).write_bytes(b"precioux")
    with pytest.raises(ProviderError, match="damaged"):
        p.download(ref)
    (tmp_path / "store" / f"{ref}.meta.json").write_text("{")
    with pytest.raises(ProviderError, match=f"{ref}.meta.json is unreadable"):
        p.list()


def test_file_urls_need_no_existing_folder(tmp_path: Path) -> None:
    url = (tmp_path / "deep" / "store").as_uri()
    p = ObjectStoreBackupProvider(url)
    assert p.health_check() is True
    assert p.list() == []
    ref = p.upload(b"x", {})
    assert (tmp_path / "deep" / "store" / ref).read_bytes() == b"x"


@pytest.mark.parametrize(
    ("url", "match"),
    [("not a url", "must look like"), ("nosuchproto://x", "cannot use the object store URL"), ("gs://bucket/x", "pip install")],
)
def test_unusable_urls_are_config_errors(url: str, match: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if gcsfs were not installed
    with pytest.raises(ConfigError, match=match):
        ObjectStoreBackupProvider(url)


def test_without_fsspec_the_message_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)  # import fsspec now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'walkit\[objectstore\]'"):
        ObjectStoreBackupProvider("s3://bucket/prefix")
