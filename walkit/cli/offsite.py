"""The commands that deal with the external service: ``bundle``, ``upload``, ``status``,
``verify --bundle`` and ``restore --from external`` (registered by :mod:`walkit.cli`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from walkit.errors import ConfigError
from walkit.home import Home
from walkit.offsite.quota import WINDOWS, QuotaLedger
from walkit.service import settings

__all__ = ["register", "cmd_verify_bundles", "restore_external", "add_provider", "add_age_identity"]


def add_provider(parser: argparse.ArgumentParser) -> None:
    """``--provider``, ``--backup-dir``, ``--backup-url``: which external service."""
    g = parser.add_argument_group("external service (default: $WALKIT_PROVIDER, else filesystem if $BACKUP_USE_FILESYSTEM, else the mock)")
    g.add_argument("--provider", choices=settings.PROVIDERS, help="mock (the Valerix simulation), filesystem, or objectstore (fsspec)")
    g.add_argument("--backup-dir", metavar="DIR", help="the mock's state or the filesystem provider's folder (default: $BACKUP_DIR, else HOME-offsite beside the home)")
    g.add_argument("--backup-url", metavar="URL", help="the object store: s3://bucket/prefix, gs://..., az://..., file:///... (default: $WALKIT_PROVIDER_URL)")


def add_quota(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", choices=WINDOWS, help="quota window: rolling 24 h (default, as the service enforces) or calendar day (default: $WALKIT_QUOTA_WINDOW)")
    parser.add_argument("--tz", metavar="ZONE", help="the calendar window's time zone, e.g. Europe/Zurich (default: $WALKIT_QUOTA_TZ, else UTC)")


def add_age_identity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--identity", type=Path, metavar="KEYFILE", help="age key file that decrypts encrypted bundles (default: $WALKIT_AGE_IDENTITY)")


def add_policy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uri", help="MongoDB, to take the snapshot the policy asks for (default: $MONGODB_URI; without: the newest local one)")
    parser.add_argument(
        "--snapshot-every", type=float, metavar="DAYS",
        help="put a snapshot in the bundle when the newest off-site one is this many days old: 1 daily (default, $WALKIT_SNAPSHOT_EVERY_DAYS), 7 weekly, 0 only the first",
    )
    parser.add_argument("--recipient", metavar="AGE1...", help="encrypt to this age public key (default: $WALKIT_AGE_RECIPIENT; unset: not encrypted)")


def _provider(args: argparse.Namespace, home: Home, ledger: QuotaLedger | None = None) -> Any:
    kind = settings.provider_kind(args.provider)
    location = args.backup_url if kind == "objectstore" else args.backup_dir
    return settings.configured_provider(home, clock=ledger.clock if ledger else None, kind=kind, location=location)


def _ledger(args: argparse.Namespace, home: Home) -> QuotaLedger:
    from walkit.offsite.upload import quota_dir

    window = args.window or os.environ.get("WALKIT_QUOTA_WINDOW") or "rolling"
    tz = args.tz or os.environ.get("WALKIT_QUOTA_TZ") or "UTC"
    return QuotaLedger(quota_dir(home), window=window, tz=tz)


def _policy(args: argparse.Namespace) -> Any:
    from walkit.offsite.upload import Policy

    every = args.snapshot_every if args.snapshot_every is not None else settings.env_float("WALKIT_SNAPSHOT_EVERY_DAYS", 1.0)
    if every < 0:
        raise ConfigError(f"--snapshot-every must be >= 0 days, got {every}")
    return Policy(snapshot_every_days=every)


def _home(args: argparse.Namespace) -> Home:
    home = Home(args.home)
    if not home.wal_dir.is_dir():
        raise ConfigError(f"no WAL at {home.wal_dir}: run `walkit capture` first, or give the right --home")
    return home


def cmd_bundle(args: argparse.Namespace) -> int:
    from walkit.offsite.upload import prepare_bundle

    home = _home(args)
    ledger = _ledger(args, home)
    notes: list[str] = []
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} already exists; name a new file or a folder")
    folder = out if out.is_dir() else out.parent
    folder.mkdir(parents=True, exist_ok=True)
    bundle = prepare_bundle(
        home, ledger, None, policy=_policy(args), recipients=settings.recipients(args.recipient),
        uri=args.uri or os.environ.get("MONGODB_URI"), out=folder, notes=notes,
    )
    if not out.is_dir():
        os.replace(bundle.path, out)
        bundle.path = out
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(bundle.metadata(), indent=2))
    else:
        print(_describe_bundle(bundle.metadata()))
        print(f"written to {bundle.path} ({bundle.size:,} bytes); nothing was sent")
    return 0


def _describe_bundle(meta: dict[str, Any]) -> str:
    snap = f"snapshot {meta['snapshot']['id']} (consistent from {meta['snapshot']['end_wall']})" if meta.get("snapshot") else "no snapshot"
    seqs = f"seq {meta['first_seq']}..{meta['last_seq']}" if meta["last_seq"] >= meta["first_seq"] else "no new events"
    return (
        f"bundle {meta['index']} ({meta['id']}): WAL {seqs}, changes {meta.get('first_wall') or '-'} .. {meta.get('last_wall') or '-'}; "
        f"{snap}; {'encrypted (age)' if meta['encrypted'] else 'not encrypted'}"
    )


def cmd_upload(args: argparse.Namespace) -> int:
    from walkit.offsite.upload import upload

    home = _home(args)
    ledger = _ledger(args, home)
    provider = _provider(args, home, ledger)
    result = upload(
        home, provider, ledger, policy=_policy(args), recipients=settings.recipients(args.recipient),
        uri=args.uri or os.environ.get("MONGODB_URI"),
    )
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
    elif result.skipped:
        print(f"nothing sent: {result.skipped}")
    else:
        assert result.bundle is not None
        print(_describe_bundle(result.bundle.metadata()))
        print(f"uploaded to {provider.name} as {result.ref} ({result.bundle.size:,} bytes); the next call is allowed at {ledger.next_allowed()}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from walkit.offsite.status import describe, status

    home = Home(args.home).existing()
    ledger = _ledger(args, home)
    provider = _provider(args, home, ledger) if args.check_provider else None
    report = status(home, ledger, provider)
    if home.worker_state.exists():
        from walkit.service.worker import worker_state

        report["worker"] = worker_state(home)
    print(json.dumps(report, indent=2, default=str) if args.json else describe(report))
    return 0


def cmd_verify_bundles(args: argparse.Namespace) -> int:
    """``walkit verify --bundle FILE [FILE ...]``: each checked; several in a row must form a chain."""
    from walkit.offsite.bundle import verify_bundle

    keys = settings.identities(args.identity)
    prev = None
    for path in args.bundle:
        bundle = verify_bundle(path, keys, prev=prev)
        meta = bundle.manifest
        print(f"OK  {path}: bundle {bundle.index}, {len(meta['members'])} members, seq {meta['wal']['first_seq']}..{meta['wal']['last_seq']}"
              + (", snapshot " + meta["snapshot"]["id"] if meta.get("snapshot") else "") + (", encrypted" if bundle.encrypted else ""))
        prev = bundle.position
    return 0


def restore_external(args: argparse.Namespace, target: Any) -> int:
    """``walkit restore --from external ...``."""
    from walkit.offsite.external import plan_external, restore_from_external

    home = Home(args.home)
    provider = _provider(args, home)
    if args.dry_run:
        print(plan_external(provider, target).describe())
        return 0
    result = restore_from_external(
        provider, target, identities=settings.identities(args.identity), workdir=args.workdir,
        to_uri=args.to_uri, to_db=args.to_db, to_dump=args.to_dump, database=args.db, collections=[c for c in (args.collections or "").split(",") if c], drop=args.drop,
    )
    print(result.offsite.describe())
    print(result.plan.describe())
    docs = ", ".join(f"{ns} {n}" for ns, n in sorted(result.documents.items())) or "no collections"
    print(f"restored into {result.destination}: {result.events} events replayed; {docs}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from walkit.offsite.retention import prune

    home = _home(args)
    ledger = _ledger(args, home)
    wal_days = args.wal_days if args.wal_days is not None else settings.env_float("WAL_RETENTION_DAYS", 7)
    snap_days = args.snapshot_days if args.snapshot_days is not None else settings.env_float("SNAPSHOT_RETENTION_DAYS", 30)
    for flag, value in (("--wal-days", wal_days), ("--snapshot-days", snap_days)):
        if value < 0:
            raise ConfigError(f"{flag} must be >= 0 days, got {value:g}")
    report = prune(home, ledger, wal_days=wal_days, snapshot_days=snap_days, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(report.snapshots)} snapshot(s) and {len(report.segments)} WAL segment(s), {report.bytes:,} bytes")
    for name in report.snapshots + report.segments:
        print(f"  {name}")
    for reason in report.kept:
        print(f"kept {reason}")
    return 0


def register(sub: Any, add_home: Any) -> None:
    p = sub.add_parser(
        "bundle",
        help="build the next upload's bundle without sending it",
        description=(
            "Build the bundle the next `walkit upload` would send: the WAL since the last successful upload, plus a "
            "snapshot when the policy asks for one, as one tar of zstd members with a manifest (encrypted with age "
            "when a recipient is set). Verified after it is written. Sends nothing and spends no quota."
        ),
    )
    p.add_argument("--out", required=True, metavar="FILE|DIR", help="the bundle file to write (or a folder to name it in)")
    p.add_argument("--json", action="store_true", help="print the bundle's metadata as JSON")
    add_policy(p)
    add_quota(p)
    add_home(p)
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser(
        "upload",
        help="make the day's one call to the external service",
        description=(
            "Build and verify the bundle (everything since the last successful upload), check it fits the service's "
            "limits, record the intent in the quota ledger, upload it, record the result. Refused with exit code 3, "
            "sending nothing, when the window's call is spent (it says when the next is allowed); a crash during the "
            "call counts as spent. A failed call is covered by the next day's bundle."
        ),
    )
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    add_policy(p)
    add_quota(p)
    add_provider(p)
    add_home(p)
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser(
        "status",
        help="quota, last upload, what waits, restorable windows",
        description=(
            "Show the quota (used or not, when the next call is allowed), the last successful upload and what it "
            "covers, what waits for the next upload, the instants restorable locally and off-site, and how old the "
            "newest WAL record is. Reads local state; --check-provider also lists the external service."
        ),
    )
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.add_argument("--check-provider", action="store_true", help="take the off-site part from the service's listing, not the ledger")
    add_quota(p)
    add_provider(p)
    add_home(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "prune",
        help="remove old local WAL segments and snapshots (never what is not off-site)",
        description=(
            "Apply local retention: remove snapshots older than --snapshot-days and WAL segments older than "
            "--wal-days, but never anything not yet inside a successful upload, never the newest snapshot, and "
            "never what a local restore inside the WAL window needs."
        ),
    )
    p.add_argument("--wal-days", type=float, metavar="N", help="keep the WAL of the last N days (default: $WAL_RETENTION_DAYS, else 7)")
    p.add_argument("--snapshot-days", type=float, metavar="N", help="keep snapshots of the last N days (default: $SNAPSHOT_RETENTION_DAYS, else 30)")
    p.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_quota(p)
    add_home(p)
    p.set_defaults(func=cmd_prune)
