"""make_provider and the package's public names."""

from __future__ import annotations

from pathlib import Path

import pytest

import walkit.providers as providers
from walkit.clock import SimulatedClock
from walkit.errors import ConfigError
from walkit.providers import FileSystemBackupProvider, MockExternalBackupProvider, ObjectStoreBackupProvider, make_provider


def test_public_names() -> None:
    assert set(providers.__all__) >= {
        "ExternalBackupProvider",
        "Limits",
        "StoredBackup",
        "open_upload",
        "MockExternalBackupProvider",
        "FileSystemBackupProvider",
        "ObjectStoreBackupProvider",
        "make_provider",
    }
    for name in providers.__all__:
        assert hasattr(providers, name), name


def test_each_kind(tmp_path: Path) -> None:
    clock = SimulatedClock()
    in_memory = make_provider("mock", latency_ms=0, failure_rate=0, clock=clock)
    assert isinstance(in_memory, MockExternalBackupProvider) and in_memory.state_dir is None and in_memory.clock is clock
    in_dir = make_provider("mock", str(tmp_path / "svc"), latencyMs=0)
    assert isinstance(in_dir, MockExternalBackupProvider) and in_dir.state_dir == tmp_path / "svc" and in_dir.latency_ms == 0
    files = make_provider("filesystem", str(tmp_path / "b"), compress=False, max_backups=5, clock=clock)
    assert isinstance(files, FileSystemBackupProvider)
    assert (files.backup_dir, files.compress, files.max_backups, files.clock) == (tmp_path / "b", False, 5, clock)
    store = make_provider(" ObjectStore ", (tmp_path / "o").as_uri())
    assert isinstance(store, ObjectStoreBackupProvider)
    ref = store.upload(b"through the factory", {})
    assert store.download(ref) == b"through the factory"


@pytest.mark.parametrize("kind", ["valerix", "s3", "", None])
def test_unknown_kind_names_the_allowed_ones(kind: object) -> None:
    with pytest.raises(ConfigError) as info:
        make_provider(kind, "x")  # type: ignore[arg-type]
    assert "mock" in str(info.value) and "filesystem" in str(info.value) and "objectstore" in str(info.value)


@pytest.mark.parametrize("kind", ["filesystem", "objectstore"])
def test_missing_location(kind: str) -> None:
    with pytest.raises(ConfigError, match=f"the {kind} provider needs a location"):
        make_provider(kind)


def test_unknown_option_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bad options for the filesystem provider.*compress"):
        make_provider("filesystem", str(tmp_path), compression="zstd")


def test_the_location_is_not_an_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="as its location"):
        make_provider("mock", str(tmp_path / "a"), state_dir=str(tmp_path / "b"))
