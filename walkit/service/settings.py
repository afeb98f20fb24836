"""Settings from the environment, as the original service named them, plus walkit's own.

==========================  ===============================================================
``BACKUP_USE_FILESYSTEM``   true: the filesystem provider (the original's switch)
``BACKUP_DIR``              its folder; also the mock service's state folder
``WALKIT_PROVIDER``         mock | filesystem | objectstore (wins over BACKUP_USE_FILESYSTEM)
``WALKIT_PROVIDER_URL``     the object store's URL (s3://bucket/prefix, gs://, az://, file://)
``WALKIT_MOCK_LATENCY_MS``  the mock service's latency (default 500, as the original)
``WALKIT_MOCK_FAILURE_RATE``  its share of failed calls (default 0.05, as the original)
``WALKIT_MOCK_STORAGE_LIMIT_BYTES``  its storage (default 500 MiB, as the original)
``WALKIT_QUOTA_WINDOW``     rolling (default) | calendar
``WALKIT_QUOTA_TZ``         the calendar window's time zone (default UTC)
``WALKIT_SNAPSHOT_EVERY_DAYS``  how often a bundle carries a snapshot (default 1)
``WALKIT_AGE_RECIPIENT``    age public key(s): bundles are encrypted to them
``WALKIT_AGE_IDENTITY``     the age key file that decrypts bundles
==========================  ===============================================================

A bad value is a ConfigError naming the variable and the values allowed.
Command-line options win over the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from walkit.clock import Clock
from walkit.errors import ConfigError
from walkit.home import Home

__all__ = ["env_bool", "env_float", "provider_kind", "provider_location", "make_configured_provider", "configured_provider", "recipients", "identities"]

PROVIDERS = ("mock", "filesystem", "objectstore")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def env_bool(name: str, environ: Mapping[str, str] | None = None) -> bool:
    value = (environ if environ is not None else os.environ).get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean; use true or false")


def env_float(name: str, default: float, environ: Mapping[str, str] | None = None, minimum: float = 0.0, maximum: float | None = None) -> float:
    text = (environ if environ is not None else os.environ).get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a number") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise ConfigError(f"{name}={text!r} is out of range; it must be {bounds}")
    return value


def provider_kind(option: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    env = environ if environ is not None else os.environ
    kind = option or env.get("WALKIT_PROVIDER") or ("filesystem" if env_bool("BACKUP_USE_FILESYSTEM", env) else "mock")
    if kind not in PROVIDERS:
        source = "--provider" if option else "WALKIT_PROVIDER"
        raise ConfigError(f"{source}={kind!r} is not a provider; use one of {', '.join(PROVIDERS)}")
    return kind


def provider_location(kind: str, option: str | None, home: Home, environ: Mapping[str, str] | None = None) -> str:
    """The provider's folder or URL: the option, else the environment, else ``<home>-offsite`` beside the home."""
    env = environ if environ is not None else os.environ
    if option:
        return option
    if kind == "objectstore":
        url = env.get("WALKIT_PROVIDER_URL")
        if not url:
            raise ConfigError("the objectstore provider needs a URL: --backup-url s3://bucket/prefix or WALKIT_PROVIDER_URL")
        return url
    if env.get("BACKUP_DIR"):
        return env["BACKUP_DIR"]
    path = home.path.resolve()
    return str(path.with_name(path.name + "-offsite"))


def make_configured_provider(kind: str, location: str, clock: Clock | None = None, environ: Mapping[str, str] | None = None) -> Any:
    from walkit.providers import make_provider

    env = environ if environ is not None else os.environ
    options: dict[str, Any] = {}
    if kind == "mock":
        options = {
            "latency_ms": env_float("WALKIT_MOCK_LATENCY_MS", 500, env),
            "failure_rate": env_float("WALKIT_MOCK_FAILURE_RATE", 0.05, env, maximum=1.0),
            "storage_limit_bytes": int(env_float("WALKIT_MOCK_STORAGE_LIMIT_BYTES", 500 * 1024 * 1024, env)),
        }
    return make_provider(kind, location, clock=clock, **options)


def configured_provider(
    home: Home, environ: Mapping[str, str] | None = None, clock: Clock | None = None, kind: str | None = None, location: str | None = None
) -> Any:
    """The provider the options/environment name (:func:`provider_kind`, :func:`provider_location`)."""
    kind = provider_kind(kind, environ)
    return make_configured_provider(kind, provider_location(kind, location, home, environ), clock=clock, environ=environ)


def recipients(option: str | None = None, environ: Mapping[str, str] | None = None) -> list[Any]:
    from walkit.offsite.bundle import parse_recipients

    text = option or (environ if environ is not None else os.environ).get("WALKIT_AGE_RECIPIENT", "")
    return parse_recipients(text) if text.strip() else []


def identities(option: str | Path | None = None, environ: Mapping[str, str] | None = None) -> list[Any] | None:
    from walkit.offsite.bundle import load_identities

    path = option or (environ if environ is not None else os.environ).get("WALKIT_AGE_IDENTITY")
    return load_identities(path) if path else None
