"""The worker's effective configuration: defaults < TOML file < environment < command line.

Every setting has one name, the environment variable's (the original
service's ``BACKUP_*`` names, ``MONGODB_URI``, and walkit's ``WALKIT_*``).
A TOML file (``--config FILE`` or ``$WALKIT_CONFIG``) holds the same names,
upper or lower case, at its top level or under a ``[walkit]`` table::

    backup_hour = 3
    walkit_provider = "filesystem"
    backup_dir = "/var/backups/orders"

:func:`load_config` checks every value and raises one :class:`ConfigError`
line naming the variable (and the file), what was given and what is
allowed.  :meth:`Config.describe` is what ``walkit config`` prints: each
value and where it came from, secrets (``WALKIT_API_TOKEN``, the password
in ``MONGODB_URI``) redacted.  :meth:`Config.environ` gives the values as an
environment mapping for the helpers in :mod:`walkit.service.settings`.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from walkit.errors import ConfigError
from walkit.mongo import redact

__all__ = ["Config", "Setting", "SETTINGS", "load_config"]

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _bool(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError("use true or false")


def _number(low: float, high: float | None = None, whole: bool = False) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value: float | int = int(text) if whole else float(text)
        except ValueError:
            raise ValueError(f"use a {'whole ' if whole else ''}number from {low:g}" + (f" to {high:g}" if high is not None else " up")) from None
        if (not whole and not math.isfinite(value)) or value < low or (high is not None and value > high):
            raise ValueError(f"use a number from {low:g}" + (f" to {high:g}" if high is not None else " up"))
        return value

    return parse


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"use one of {', '.join(allowed)}")
        return text

    return parse


def _zone(text: str) -> str:
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("use an IANA time zone such as UTC or Europe/Zurich") from None
    return text


def _uri(text: str) -> str:
    if not text.startswith(("mongodb://", "mongodb+srv://")):
        raise ValueError("use a mongodb:// or mongodb+srv:// URI")
    return text


def _text(text: str) -> str:
    return text


@dataclass(frozen=True)
class Setting:
    """One setting: its variable name, parser, default (None: unset) and meaning."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    secret: bool = False

    @property
    def key(self) -> str:
        return self.name.lower()


SETTINGS: tuple[Setting, ...] = (
    Setting("BACKUP_ENABLED", _bool, True, "run the worker at all (false: `walkit run` exits at once)"),
    Setting("BACKUP_HOUR", _number(0, 23, whole=True), 2, "hour of the day (0-23, in WALKIT_QUOTA_TZ) of the daily call; missed hours are caught up"),
    Setting("WAL_RETENTION_DAYS", _number(0, 36500), 7.0, "keep the local WAL of the last N days (never what is not off-site yet)"),
    Setting("SNAPSHOT_RETENTION_DAYS", _number(0, 36500), 30.0, "keep local snapshots of the last N days"),
    Setting("BACKUP_USE_FILESYSTEM", _bool, False, "true: the filesystem provider (the original's switch)"),
    Setting("BACKUP_DIR", _text, None, "the filesystem provider's folder, or the mock service's state folder (default: HOME-offsite)"),
    Setting("MONGODB_URI", _uri, None, "the MongoDB replica set to back up", secret=True),
    Setting("WALKIT_HOME", _text, ".walkit", "walkit's local state: WAL, snapshots, quota ledger, bundles"),
    Setting("WALKIT_SERVICE_NAME", _text, "walkit", "the service this worker backs up (in logs and bundle metadata)"),
    Setting("WALKIT_DATABASE", _text, None, "capture and snapshot one database (default: all but admin, config, local)"),
    Setting("WALKIT_PROVIDER", _choice("mock", "filesystem", "objectstore"), None, "the external service (wins over BACKUP_USE_FILESYSTEM; default mock)"),
    Setting("WALKIT_PROVIDER_URL", _text, None, "the object store's URL: s3://bucket/prefix, gs://..., az://..., file:///..."),
    Setting("WALKIT_MOCK_LATENCY_MS", _number(0, 3_600_000), 500.0, "the mock service's latency"),
    Setting("WALKIT_MOCK_FAILURE_RATE", _number(0, 1), 0.05, "the mock service's share of failed calls"),
    Setting("WALKIT_MOCK_STORAGE_LIMIT_BYTES", _number(0, 2**62, whole=True), 500 * 1024 * 1024, "the mock service's storage"),
    Setting("WALKIT_QUOTA_WINDOW", _choice("rolling", "calendar"), "rolling", "one call per rolling 24 h (as the service enforces) or per calendar day"),
    Setting("WALKIT_QUOTA_TZ", _zone, "UTC", "time zone of BACKUP_HOUR and of the calendar window"),
    Setting("WALKIT_SNAPSHOT_EVERY_DAYS", _number(0, 36500), 1.0, "put a snapshot in the day's bundle when the newest off-site one is N days old (0: only the first)"),
    Setting("WALKIT_SNAPSHOT_INTERVAL_HOURS", _number(0, 8760), 6.0, "take a local snapshot every N hours (0: never; no quota is used)"),
    Setting("WALKIT_AGE_RECIPIENT", _text, None, "age public key(s), comma separated: bundles are encrypted to them"),
    Setting("WALKIT_AGE_IDENTITY", _text, None, "the age key file that decrypts bundles (restores only)"),
    Setting("WALKIT_API_TOKEN", _text, None, "bearer token for the HTTP API's POST endpoints (unset: they are disabled)", secret=True),
    Setting("WALKIT_API_HOST", _text, "127.0.0.1", "address the HTTP API binds to"),
    Setting("WALKIT_API_PORT", _number(0, 65535, whole=True), 8080, "port of the HTTP API (0: any free port)"),
    Setting("WALKIT_LOG_FORMAT", _choice("auto", "json", "text"), "auto", "auto: text on a terminal, one JSON object per line otherwise"),
    Setting("WALKIT_LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info", "the least severe log level written"),
)
_BY_NAME = {s.name: s for s in SETTINGS}


class Config:
    """Checked settings; ``config.backup_hour`` or ``config["BACKUP_HOUR"]``."""

    def __init__(self, values: dict[str, Any], sources: dict[str, str]) -> None:
        self._values = values
        self.sources = sources  # name -> "default" | "environment" | "file FILE" | "command line"

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key.upper()]
        except KeyError:
            raise AttributeError(key) from None

    def environ(self) -> dict[str, str]:
        """The set values as an environment mapping (for :mod:`walkit.service.settings`)."""
        out: dict[str, str] = {}
        for name, value in self._values.items():
            if value is not None:
                out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out

    def shown(self, name: str) -> str:
        """The value as ``walkit config`` prints it, secrets redacted."""
        value = self._values[name]
        if value is None:
            return "(unset)"
        if name == "MONGODB_URI":
            return redact(value)
        if _BY_NAME[name].secret:
            return "(set, hidden)"
        return ("true" if value else "false") if isinstance(value, bool) else str(value)

    def describe(self) -> list[dict[str, str]]:
        """One row per setting: name, shown value, source, meaning."""
        return [{"name": s.name, "value": self.shown(s.name), "source": self.sources[s.name], "help": s.help} for s in SETTINGS]


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    table = data.pop("walkit", {}) if isinstance(data.get("walkit"), dict) else {}
    out: dict[str, Any] = {}
    for key, value in {**data, **table}.items():
        name = key.upper()
        if name not in _BY_NAME:
            raise ConfigError(f"config file {path}: unknown setting {key!r}; `walkit config` lists the settings")
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config file {path}: {key} must be a single value, not a {type(value).__name__}")
        out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def load_config(
    environ: Mapping[str, str] | None = None,
    file: str | os.PathLike[str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Config:
    """The effective settings: ``options`` (command line, None = not given) win over
    ``environ`` (default ``os.environ``; empty values count as unset), which wins over
    the TOML ``file`` (default ``$WALKIT_CONFIG``), which wins over the defaults."""
    env = os.environ if environ is None else environ
    file = file or env.get("WALKIT_CONFIG") or None
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if file:
        layers.append((f"file {file}", _read_file(Path(file))))
    layers.append(("environment", {k: v for k, v in env.items() if k in _BY_NAME and str(v).strip()}))
    layers.append(("command line", {k.upper(): v for k, v in (options or {}).items() if v is not None}))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        values[setting.name], sources[setting.name] = setting.default, "default"
        for source, layer in layers:
            if setting.name not in layer:
                continue
            raw = layer[setting.name]
            text = ("true" if raw else "false") if isinstance(raw, bool) else str(raw).strip()
            try:
                values[setting.name] = setting.parse(text)
            except ValueError as exc:
                where = "" if source in ("environment", "command line") else f" (in {source[5:]})"
                shown = "(hidden)" if setting.secret else repr(text)
                raise ConfigError(f"{setting.name}={shown}{where} is not valid: {exc}") from None
            sources[setting.name] = source
    return Config(values, sources)
