"""The worker's configuration: precedence, validation, sources, redaction; ``walkit config``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import one_error_line, walkit
from walkit.errors import ConfigError
from walkit.service.config import SETTINGS, load_config


def test_defaults_are_the_original_services() -> None:
    config = load_config(environ={})
    assert (config.backup_enabled, config.backup_hour, config.wal_retention_days, config.snapshot_retention_days) == (True, 2, 7.0, 30.0)
    assert config.walkit_api_host == "127.0.0.1" and config.walkit_api_token is None
    assert set(config.sources.values()) == {"default"}


def test_command_line_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    file = tmp_path / "walkit.toml"
    file.write_text('backup_hour = 3\nWAL_RETENTION_DAYS = 9\n[walkit]\nwalkit_quota_tz = "Europe/Zurich"\nbackup_enabled = false\n')
    config = load_config(environ={"BACKUP_HOUR": "4", "WALKIT_CONFIG": str(file)}, options={"WALKIT_API_PORT": 9999, "BACKUP_ENABLED": None})
    assert config.backup_hour == 4 and config.sources["BACKUP_HOUR"] == "environment"
    assert config.wal_retention_days == 9.0 and config.sources["WAL_RETENTION_DAYS"] == f"file {file}"
    assert config.walkit_quota_tz == "Europe/Zurich"
    assert config.backup_enabled is False  # a TOML boolean; the None option does not override it
    assert config.walkit_api_port == 9999 and config.sources["WALKIT_API_PORT"] == "command line"
    assert config.snapshot_retention_days == 30.0 and config.sources["SNAPSHOT_RETENTION_DAYS"] == "default"


def test_empty_environment_values_count_as_unset() -> None:
    assert load_config(environ={"BACKUP_HOUR": "  "}).backup_hour == 2


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("BACKUP_HOUR", "24", "from 0 to 23"),
        ("BACKUP_HOUR", "two", "whole number"),
        ("BACKUP_ENABLED", "maybe", "true or false"),
        ("WALKIT_PROVIDER", "s3", "mock, filesystem, objectstore"),
        ("WALKIT_QUOTA_TZ", "Mars/Olympus", "IANA time zone"),
        ("WALKIT_MOCK_FAILURE_RATE", "1.5", "from 0 to 1"),
        ("WAL_RETENTION_DAYS", "nan", "number"),
        ("MONGODB_URI", "http://x", "mongodb://"),
        ("WALKIT_LOG_FORMAT", "xml", "auto, json, text"),
        ("WAL_RETENTION_DAYS", "inf", "from 0 to 36500"),
        ("WALKIT_SNAPSHOT_INTERVAL_HOURS", "1e12", "from 0 to 8760"),
        ("WALKIT_MOCK_LATENCY_MS", "inf", "from 0"),
        ("WALKIT_API_PORT", "9" * 400, "from 0 to 65535"),
    ],
)
def test_an_invalid_value_is_one_line_naming_the_variable_and_the_allowed_values(name: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ={name: value})
    message = str(err.value)
    assert message.startswith(f"{name}=") and says in message and "\n" not in message


def test_a_bad_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("backup_hour = 30\n")
    with pytest.raises(ConfigError, match=rf"BACKUP_HOUR='30' \(in {file}\)"):
        load_config(environ={}, file=file)
    file.write_text("bakup_hour = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'bakup_hour'"):
        load_config(environ={}, file=file)
    file.write_text("backup_hour = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(environ={}, file=file)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(environ={}, file=tmp_path / "missing.toml")


def test_secrets_are_never_shown() -> None:
    config = load_config(environ={"MONGODB_URI": "mongodb://app:s3cret-pw@db1:27017/?replicaSet=rs0", "WALKIT_API_TOKEN": "tok-123456"})
    text = json.dumps(config.describe())
    assert "s3cret-pw" not in text and "tok-123456" not in text
    shown = {r["name"]: r["value"] for r in config.describe()}
    assert shown["WALKIT_API_TOKEN"] == "(set, hidden)" and "db1:27017" in shown["MONGODB_URI"]
    with pytest.raises(ConfigError) as err:
        load_config(environ={"WALKIT_API_TOKEN": "x", "MONGODB_URI": "http://user:pw@host"})
    assert "pw" not in str(err.value)


def test_environ_feeds_the_provider_settings() -> None:
    from walkit.service import settings

    config = load_config(environ={"BACKUP_USE_FILESYSTEM": "yes"})
    assert settings.provider_kind(None, config.environ()) == "filesystem"
    assert load_config(environ={}).environ()["BACKUP_USE_FILESYSTEM"] == "false"


def test_walkit_config_prints_every_setting_and_its_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_HOUR", "5")
    monkeypatch.setenv("WALKIT_API_TOKEN", "very-secret-token")
    result = walkit("config", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {s.name for s in SETTINGS}
    assert rows["BACKUP_HOUR"]["value"] == "5" and rows["BACKUP_HOUR"]["source"] == "environment"
    text = walkit("config").stdout
    assert "very-secret-token" not in text and "BACKUP_HOUR" in text and "environment" in text


def test_walkit_config_refuses_a_bad_value_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_HOUR", "99")
    line = one_error_line(walkit("config"), 2)
    assert "BACKUP_HOUR='99'" in line
