"""The long-running commands: ``walkit run`` (the worker), ``walkit serve`` (the HTTP API alone)
and ``walkit config`` (the effective settings); registered by :mod:`walkit.cli`."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any

from walkit.home import Home
from walkit.offsite.quota import QuotaLedger
from walkit.service import settings
from walkit.service.config import SETTINGS, Config, load_config
from walkit.service.logs import setup_logging

__all__ = ["register"]

log = logging.getLogger("walkit.service")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's settings (None: not given)."""
    given = {
        "MONGODB_URI": getattr(args, "uri", None),
        "WALKIT_HOME": str(args.home) if getattr(args, "home", None) else None,
        "WALKIT_API_HOST": getattr(args, "host", None),
        "WALKIT_API_PORT": getattr(args, "port", None),
        "BACKUP_HOUR": getattr(args, "backup_hour", None),
        "WALKIT_SNAPSHOT_INTERVAL_HOURS": getattr(args, "snapshot_interval", None),
        "WALKIT_PROVIDER": getattr(args, "provider", None),
        "WALKIT_DATABASE": getattr(args, "db", None),
        "WALKIT_LOG_FORMAT": getattr(args, "log_format", None),
    }
    return {k: v for k, v in given.items() if v is not None}


def _load(args: argparse.Namespace) -> Config:
    return load_config(file=args.config, options=_options(args))


def _logging(config: Config) -> None:
    from urllib.parse import unquote, urlsplit

    password = unquote(urlsplit(config.mongodb_uri).password or "") if config.mongodb_uri else ""
    setup_logging(config.walkit_log_format, config.walkit_log_level, secrets=[config.walkit_api_token or "", password])


def _stop_on_signals(stop: Any) -> None:
    """The first SIGTERM/SIGINT asks for a clean stop; a second one ends the process at once."""

    def handler(signum: int, frame: object) -> None:
        log.info("%s received: stopping cleanly (send it again to stop at once)", signal.Signals(signum).name)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_config(args: argparse.Namespace) -> int:
    config = _load(args)
    rows = config.describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    value_width = min(40, max(len(r["value"]) for r in rows))
    for r in rows:
        print(f"{r['name']:<{width}}  {r['value']:<{value_width}}  {r['source']}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from walkit.service.worker import BackupService

    config = _load(args)
    _logging(config)
    if not config.backup_enabled:
        log.info("BACKUP_ENABLED is false: the worker does not run")
        print("walkit run: BACKUP_ENABLED is false; nothing to do", file=sys.stderr)
        return 0
    service = BackupService.from_config(config, tick=args.tick)
    server = None
    if args.http:
        from walkit.service.api import ApiServer

        server = ApiServer(service_context(service, config), host=config.walkit_api_host, port=config.walkit_api_port)
    _stop_on_signals(service.stop_soon)
    service.start()
    try:
        if server is not None:
            server.start()
            log.info("HTTP API on %s", server.url)
            print(f"walkit run: HTTP API on {server.url}", file=sys.stderr, flush=True)
        print(f"walkit run: {service.service_name} backing up into {service.home.path}; the daily call after {config.backup_hour:02d}:00 "
              f"{config.walkit_quota_tz}; SIGTERM or Ctrl-C stops", file=sys.stderr, flush=True)
        service.wait()
    finally:
        if server is not None:
            server.stop()
        clean = service.stop()
    return 0 if clean else 1


def service_context(service: Any, config: Config) -> Any:
    """The HTTP API's view of a running worker."""
    from walkit.service.api import ApiContext

    return ApiContext(
        home=service.home, ledger=service.ledger, token=config.walkit_api_token, snapshot=service.snapshot, trigger=service.trigger,
        provider=lambda: service.provider, live=service.live, strategy=_strategy(config), clock=service.clock,
    )


def _strategy(config: Config) -> dict[str, Any]:
    return {
        "service": config.walkit_service_name, "backup_hour": config.backup_hour, "time_zone": config.walkit_quota_tz,
        "snapshot_interval_hours": config.walkit_snapshot_interval_hours, "wal_retention_days": config.wal_retention_days,
        "snapshot_retention_days": config.snapshot_retention_days, "quota_window": config.walkit_quota_window,
        "provider": settings.provider_kind(None, config.environ()), "snapshot_in_bundle_every_days": config.walkit_snapshot_every_days,
    }


def offline_context(config: Config) -> Any:
    """The HTTP API over a home with no worker in this process (``walkit serve``): the worker's
    counters come from ``HOME/worker.json`` when a worker writes it."""
    from walkit.offsite.upload import Policy, quota_dir, upload
    from walkit.restore.snapshot import take_snapshot
    from walkit.service.api import ApiContext
    from walkit.service.worker import worker_state

    env = config.environ()
    home = Home(config.walkit_home)
    ledger = QuotaLedger(quota_dir(home), window=config.walkit_quota_window, tz=config.walkit_quota_tz)
    uri = config.mongodb_uri

    def provider() -> Any:
        return settings.configured_provider(home, env, clock=ledger.clock)

    def trigger() -> Any:
        return upload(home, provider(), ledger, policy=Policy(snapshot_every_days=config.walkit_snapshot_every_days),
                      recipients=settings.recipients(None, env), uri=uri, progress=False)

    def snapshot() -> Any:
        return take_snapshot(uri, home, database=config.walkit_database, progress=False)

    return ApiContext(
        home=home, ledger=ledger, token=config.walkit_api_token, snapshot=snapshot if uri else None, trigger=trigger,
        provider=provider, live=lambda: worker_state(home), strategy=_strategy(config),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from walkit.service.api import serve

    config = _load(args)
    _logging(config)
    context = offline_context(config)

    def ready(url: str) -> None:
        print(f"walkit serve: HTTP API on {url} for {context.home.path}; Ctrl-C stops", file=sys.stderr, flush=True)

    serve(context, host=config.walkit_api_host, port=config.walkit_api_port, on_ready=ready)
    return 0


def register(sub: Any, add_home: Any) -> None:
    """Add ``run``, ``serve`` and ``config`` to the ``walkit`` command's sub-parsers."""
    table = "\n".join(f"  {s.name:<32} {s.help}" for s in SETTINGS)
    epilog = f"settings (environment variables, or the same names in the --config TOML file):\n{table}"

    def common(p: argparse.ArgumentParser) -> None:
        add_home(p)  # --home and --config

    def http(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", metavar="ADDR", help="address to bind (default: $WALKIT_API_HOST, else 127.0.0.1: loopback only)")
        p.add_argument("--port", type=int, metavar="N", help="port (default: $WALKIT_API_PORT, else 8080; 0: any free port)")

    p = sub.add_parser(
        "run", help="the backup worker: capture, snapshots, the daily call, retention",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog,
        description=(
            "Run until SIGTERM or Ctrl-C: capture every change into the WAL, take a local snapshot every\n"
            "WALKIT_SNAPSHOT_INTERVAL_HOURS, make the one daily call after BACKUP_HOUR (an hour missed while\n"
            "down is caught up as soon as the quota allows), prune by WAL_/SNAPSHOT_RETENTION_DAYS.\n"
            "A stop flushes everything; after kill -9 a restart resumes where the WAL ends.\n"
            "Logs: one JSON object per line unless stderr is a terminal (WALKIT_LOG_FORMAT)."
        ),
    )
    common(p)
    p.add_argument("--uri", help="the MongoDB replica set (default: $MONGODB_URI)")
    p.add_argument("--db", metavar="NAME", help="back up one database (default: $WALKIT_DATABASE, else all)")
    p.add_argument("--backup-hour", type=int, metavar="H", help="hour of the daily call, 0-23 (default: $BACKUP_HOUR, else 2)")
    p.add_argument("--snapshot-interval", type=float, metavar="HOURS", help="local snapshot every N hours (default: $WALKIT_SNAPSHOT_INTERVAL_HOURS, else 6)")
    p.add_argument("--provider", choices=settings.PROVIDERS, help="the external service (default: $WALKIT_PROVIDER ...)")
    p.add_argument("--log-format", choices=("auto", "json", "text"), help="log lines (default: $WALKIT_LOG_FORMAT, else auto)")
    p.add_argument("--http", action="store_true", help="also serve the HTTP API (see `walkit serve --help`)")
    p.add_argument("--tick", type=float, default=1.0, metavar="S", help=argparse.SUPPRESS)
    http(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "serve", help="the HTTP API: /backup/status, /backup/snapshots, /backup/snapshot, /backup/trigger, /backup/strategy",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog,
        description=(
            "Serve the backup API for a home (a worker may run in another process; its counters are read from\n"
            "HOME/worker.json). GET /backup/status, /backup/snapshots, /backup/strategy, /healthz, /metrics\n"
            "(Prometheus), /openapi.json; POST /backup/snapshot (local) and /backup/trigger (the day's one call;\n"
            "429 when spent) need 'Authorization: Bearer $WALKIT_API_TOKEN' and are disabled without a token.\n"
            "Binds 127.0.0.1 unless --host says otherwise."
        ),
    )
    common(p)
    p.add_argument("--uri", help="MongoDB, for POST /backup/snapshot (default: $MONGODB_URI)")
    http(p)
    p.add_argument("--log-format", choices=("auto", "json", "text"), help="log lines (default: $WALKIT_LOG_FORMAT, else auto)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "config", help="print the effective settings and where each came from",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog,
        description="Each setting, its value (secrets hidden, the URI's password redacted) and its source:\n"
                    "default, environment, the --config file, or the command line. An invalid value is an error (exit 2).",
    )
    common(p)
    p.add_argument("--json", action="store_true", help="a JSON list of {name, value, source, help}")
    p.set_defaults(func=cmd_config)
