"""The ``walkit`` command.

Each sub-command has ``--help``.  Commands that touch local state take
``--home DIR`` after the command name (default: ``$WALKIT_HOME``, else
``./.walkit``).  Errors are one line on stderr and a non-zero exit code:
1 for a failure, 2 for bad usage or configuration, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC
from pathlib import Path

from walkit._version import __version__
from walkit.cli.offsite import add_age_identity, add_provider, register
from walkit.cli.service import register as register_service
from walkit.errors import ConfigError, WalkitError
from walkit.home import Home
from walkit.lab.story import register as register_story

Command = Callable[[argparse.Namespace], int]


def add_home(parser: argparse.ArgumentParser) -> None:
    """Give a command the ``--home DIR`` and ``--config FILE`` options."""
    parser.add_argument("--home", type=Path, default=None, metavar="DIR", help="walkit's local state folder (default: $WALKIT_HOME, else ./.walkit)")
    parser.add_argument(
        "--config", type=Path, metavar="FILE",
        help="a TOML file of settings (default: $WALKIT_CONFIG); the environment wins over it, options over both",
    )


def _config_into_environment(args: argparse.Namespace) -> None:
    """One configuration path for every command: defaults < the TOML file (``--config``, else
    ``$WALKIT_CONFIG``) < the environment < options.  The file's settings become environment
    variables where the environment has none; every command reads options first, then those."""
    file = getattr(args, "config", None) or os.environ.get("WALKIT_CONFIG")
    if not file:
        return
    from walkit.service.config import load_config

    config = load_config(environ={}, file=file)
    values = config.environ()
    for name, source in config.sources.items():
        if source.startswith("file") and not os.environ.get(name, "").strip() and name in values:
            os.environ[name] = values[name]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535 (0 = any free port), got {value}")
    return value


# -- commands ------------------------------------------------------------------


def cmd_sandbox(args: argparse.Namespace) -> int:
    from walkit.sandbox import SANDBOX_NOTICE, Sandbox

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)  # before the URI is printed: a launcher may stop us at once
    box = Sandbox(args.port, oplog_size=args.oplog_size)
    print(box.uri, flush=True)
    if not args.quiet:
        print(f"{SANDBOX_NOTICE}.\nkeeping the last {args.oplog_size} oplog entries; Ctrl-C stops it.", file=sys.stderr, flush=True)
    box.serve_until_interrupted()
    return 0


def add_scope(parser: argparse.ArgumentParser, verb: str) -> None:
    """``--uri``, ``--db``, ``--collections``, ``--exclude``: what a command reads from MongoDB."""
    parser.add_argument("--uri", help="the MongoDB replica set (default: $MONGODB_URI)")
    parser.add_argument("--db", metavar="NAME", help=f"{verb} one database (default: all but admin, config, local)")
    parser.add_argument("--collections", metavar="A,B", help=f"{verb} only these collections")
    parser.add_argument("--exclude", metavar="C,D", help=f"{verb} everything but these collections")


def _csv(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def cmd_capture(args: argparse.Namespace) -> int:
    from walkit.mongo import redact
    from walkit.wal.capture import ChangeCapture

    uri = _uri(args, "capture from")
    if args.collections and args.exclude:
        raise ConfigError("give --collections or --exclude, not both")
    capture = ChangeCapture(
        uri,
        Home(args.home),
        database=args.db,
        collections=_csv(args.collections),
        exclude_collections=_csv(args.exclude),
        fsync_interval=args.fsync_interval,
        segment_bytes=args.segment_mb * 1024 * 1024,
        initial_snapshot=not args.no_initial_snapshot,
    )

    def _stop(signum: int, frame: object) -> None:
        capture.stop()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    def _ready(cap: ChangeCapture) -> None:
        assert cap.writer is not None
        print(
            f"walkit capture: {cap.scope} from {redact(uri)} into {cap.home.wal_dir}, next seq {cap.writer.next_seq}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )

    capture.on_ready = _ready
    stats = capture.run()
    span = f" (seq {stats.first_seq}..{stats.last_seq})" if stats.first_seq else ""
    print(f"walkit capture: stopped; {stats.events} events{span}, {stats.gaps} gaps, {stats.reconnects} reconnects; everything is on disk", file=sys.stderr)
    return 0


def _wal_dir(args: argparse.Namespace) -> Path:
    home = Home(args.home)
    if not home.wal_dir.is_dir():
        raise ConfigError(f"no WAL at {home.wal_dir}: run `walkit capture` first, or give the right --home")
    return home.wal_dir


def cmd_wal_ls(args: argparse.Namespace) -> int:
    import json

    from walkit.wal.format import Report, list_segments, summarize

    report = Report()
    rows = [summarize(seg, report) for seg in list_segments(_wal_dir(args)).segments]
    if args.json:
        for r in rows:
            print(json.dumps({
                "segment": r.name, "sealed": r.sealed, "bytes": r.size, "first_seq": r.first_seq, "last_seq": r.last_seq,
                "first_time": r.first_time.isoformat() if r.first_time else None, "last_time": r.last_time.isoformat() if r.last_time else None,
            }))
    else:
        print(f"{'segment':<22}{'state':<8}{'seq':>22}  {'time (UTC)':<41}{'bytes':>12}")
        for r in rows:
            seq = f"{r.first_seq}..{r.last_seq}" if r.first_seq is not None else "-"
            span = f"{_iso(r.first_time)} .. {_iso(r.last_time)}" if r.first_time else "-"
            print(f"{r.name:<22}{'sealed' if r.sealed else 'open':<8}{seq:>22}  {span:<41}{r.size:>12}")
    for p in report.problems:
        print(f"walkit: warning: {p} (run `walkit verify`)", file=sys.stderr)
    return 0


def _iso(dt: object) -> str:
    from datetime import datetime

    return dt.strftime("%Y-%m-%d %H:%M:%S") if isinstance(dt, datetime) else "-"


def cmd_wal_show(args: argparse.Namespace) -> int:
    from walkit.wal.events import ChangeEvent
    from walkit.wal.format import read_records

    for rec in read_records(_wal_dir(args), args.from_seq, args.to_seq):
        event = ChangeEvent.from_record(rec)
        print(event.to_json() if args.json else event.describe())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import json

    from walkit.wal.format import verify

    if args.bundle:
        from walkit.cli.offsite import cmd_verify_bundles

        return cmd_verify_bundles(args)

    report = verify(_wal_dir(args))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for p in report.problems:
            print(f"DAMAGED  {p}")
        if report.torn_tail is not None:
            print(f"note     {report.torn_tail} (an unfinished write after a crash; capture truncates it when it next starts)")
        state = "intact" if report.ok else f"{len(report.problems)} problem(s)"
        seqs = f"seq {report.first_seq}..{report.last_seq}" if report.first_seq is not None else "no events yet"
        print(f"WAL {state}: {len(report.segments)} segments, {report.events} events, {report.gaps} gaps, {seqs}")
    return 0 if report.ok else 1


def _uri(args: argparse.Namespace, what: str) -> str:
    uri = args.uri or os.environ.get("MONGODB_URI")
    if not uri:
        raise ConfigError(f"no MongoDB to {what}: give --uri mongodb://... or set MONGODB_URI")
    return uri


def cmd_snapshot(args: argparse.Namespace) -> int:
    from walkit.restore.snapshot import take_snapshot

    if args.collections and args.exclude:
        raise ConfigError("give --collections or --exclude, not both")
    home = Home(args.home).create()
    snap = take_snapshot(
        _uri(args, "snapshot"), home, database=args.db, collections=_csv(args.collections), exclude_collections=_csv(args.exclude)
    )
    print(f"{snap.id}: {snap.documents} documents in {len(snap.collections)} collections, {snap.size} bytes; restorable from {snap.end_wall.isoformat()} with the WAL")
    return 0


def cmd_snapshots(args: argparse.Namespace) -> int:
    import json

    from walkit.restore.snapshot import list_snapshots

    snaps = list_snapshots(Home(args.home).existing())
    if args.json:
        print(json.dumps([s.as_dict() for s in snaps], indent=2))
        return 0
    if not snaps:
        print("no snapshots yet (take one with `walkit snapshot`)")
    for s in snaps:
        print(f"{s.id}  consistent from {s.end_wall.isoformat()}  {len(s.collections):>3} collections  {s.documents:>9} documents  {s.size:>12} bytes")
    return 0


def _instant(text: str) -> object:
    from datetime import datetime

    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time, e.g. 2026-11-25T10:31:06 (UTC) or 2026-11-25T11:31:06+01:00") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cmd_restore(args: argparse.Namespace) -> int:
    from walkit.restore.local import restore
    from walkit.restore.plan import Target

    if args.at is not None:
        target = Target("at", args.at)
    elif args.seq is not None:
        target = Target("seq", args.seq)
    else:
        target = Target("before_seq", args.before_seq)
    if not args.dry_run:
        if bool(args.to_uri) != bool(args.to_db):
            raise ConfigError("--to-uri and --to-db go together")
        if bool(args.to_db) == bool(args.to_dump):
            raise ConfigError("name one destination: --to-uri URI --to-db NAME, or --to-dump DIR (or --dry-run)")
    if args.source == "external":
        from walkit.cli.offsite import restore_external

        return restore_external(args, target)
    home = Home(args.home)
    if not home.wal_dir.is_dir():
        raise ConfigError(f"no WAL at {home.wal_dir}: run `walkit capture` first, or give the right --home")
    result = restore(
        home, target, to_uri=args.to_uri, to_db=args.to_db, to_dump=args.to_dump, database=args.db,
        collections=_csv(args.collections), drop=args.drop, dry_run=args.dry_run,
    )
    print(result.plan.describe())
    if not args.dry_run:
        docs = ", ".join(f"{ns} {n}" for ns, n in sorted(result.documents.items())) or "no collections"
        print(f"restored into {result.destination}: {result.events} events replayed; {docs}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from walkit.lab.demo import run_demo

    return run_demo(uri=args.uri or os.environ.get("MONGODB_URI"), out=sys.stdout)


# -- parser --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="walkit",
        description=(
            "Back up MongoDB when the off-site service allows one call per day: "
            "capture every change into a local write-ahead log, snapshot locally as often as "
            "you like, send one bundle a day, restore any point in time."
        ),
    )
    parser.add_argument("--version", action="version", version=f"walkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "sandbox",
        help="run the embedded MongoDB stand-in (development only)",
        description=(
            "Serve a MongoDB stand-in on 127.0.0.1 that any pymongo client can use: a "
            "single-node replica set with change streams, data in memory only. Prints its "
            "mongodb:// URI on the first line of stdout, then serves until Ctrl-C or SIGTERM."
        ),
    )
    p.add_argument("--port", type=_port, default=0, help="TCP port (default: any free port)")
    p.add_argument("--oplog-size", type=_positive, default=100_000, metavar="N", help="oplog entries kept (one per write, one per whole transaction); a change stream resuming from an older position gets error 286 (default: 100000)")
    p.add_argument("--quiet", action="store_true", help="print only the URI")
    p.set_defaults(func=cmd_sandbox)

    p = sub.add_parser(
        "demo",
        help="watch a small workload through a change stream",
        description=(
            "Start the sandbox (or use --uri / $MONGODB_URI), open a change stream, write a "
            "small workload (insert, update, replace, delete, a transaction, rename, drop) and "
            "print every change event the stream delivered."
        ),
    )
    p.add_argument("--uri", default=None, help="use this MongoDB replica set instead of a sandbox (default: $MONGODB_URI)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "capture",
        help="capture every change into the local write-ahead log",
        description=(
            "Watch MongoDB's change stream and append every change (insert, update, replace, delete, "
            "drop, rename, dropDatabase, transactions) to the WAL in HOME/wal, until Ctrl-C or SIGTERM "
            "(a clean stop: everything is fsynced). A restart resumes exactly where the WAL ends. If the "
            "server no longer has the changes since then (it restarted, or its oplog rolled over), a gap "
            "marker is recorded and capture goes on."
        ),
    )
    add_scope(p, "capture")
    add_home(p)
    p.add_argument("--fsync-interval", type=float, default=0.2, metavar="S", help="at most this many seconds between a write and its fsync (default: 0.2)")
    p.add_argument("--segment-mb", type=_positive, default=16, metavar="N", help="seal and compress a segment when it reaches N MiB (default: 16)")
    p.add_argument(
        "--no-initial-snapshot", action="store_true",
        help="on a fresh home, do not begin with a snapshot (restores need one taken after capture started)",
    )
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("wal", help="look inside the write-ahead log", description="List the WAL's segments, or print its events.")
    wal = p.add_subparsers(dest="wal_command", metavar="WHAT", required=True)
    q = wal.add_parser("ls", help="list segments", description="One line per segment: sealed or open, seq range, time range, size.")
    add_home(q)
    q.add_argument("--json", action="store_true", help="one JSON object per segment")
    q.set_defaults(func=cmd_wal_ls)
    q = wal.add_parser(
        "show",
        help="print events",
        description=(
            "Print events (and gap markers) in seq order: seq, time, operation, namespace, document key, and "
            "the full document or update description as captured. --json prints canonical Extended JSON, one per line."
        ),
    )
    add_home(q)
    q.add_argument("--from-seq", type=_positive, metavar="N", help="first seq to print")
    q.add_argument("--to-seq", type=_positive, metavar="M", help="last seq to print")
    q.add_argument("--json", action="store_true", help="canonical Extended JSON, one event per line")
    q.set_defaults(func=cmd_wal_show)

    p = sub.add_parser(
        "verify",
        help="prove the WAL (or bundles) intact",
        description=(
            "Check every record's CRC, every segment's seal, the hash chain between segments and seq "
            "continuity. Exit 0 when intact; 1 naming the file, byte offset and reason of each problem. "
            "With --bundle: check bundle files instead (decryption, every member's hashes, the WAL segment "
            "inside, the snapshot's hashes); several bundles in a row must also form a chain."
        ),
    )
    add_home(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--bundle", nargs="+", type=Path, metavar="FILE", help="verify these bundle files (oldest first)")
    add_age_identity(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "snapshot",
        help="take a local snapshot (no external call)",
        description=(
            "Scan the deployment (or --db, or some collections) into HOME/snapshots/<id>/, a mongodump "
            "folder plus a manifest with the cluster times before and after the scan. With the WAL captured "
            "meanwhile, it restores any instant after the scan ended."
        ),
    )
    add_scope(p, "snapshot")
    add_home(p)
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("snapshots", help="list local snapshots", description="One line per snapshot: id, the instant it is consistent from, collections, documents, bytes.")
    add_home(p)
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_snapshots)

    p = sub.add_parser(
        "restore",
        help="restore any point in time from local snapshots + WAL",
        description=(
            "Restore the state at one instant: --at TIME (ISO 8601, naive means UTC), --seq N (after event N) or "
            "--before-seq N (just before event N: undo it). Into a database (--to-uri URI --to-db NAME; refused if "
            "it is not empty, unless --drop) or a mongodump folder (--to-dump DIR). The newest snapshot before the "
            "instant is loaded and the WAL replayed onto it; a transaction is never split, a gap never crossed. "
            "Into a database, everything is written aside and renamed in only when complete."
        ),
    )
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--at", type=_instant, metavar="TIME", help="the instant, e.g. 2026-11-25T10:31:06")
    when.add_argument("--seq", type=_positive, metavar="N", help="the state after event N (see `walkit wal show`)")
    when.add_argument("--before-seq", type=_positive, metavar="N", help="the state just before event N")
    p.add_argument("--to-uri", metavar="URI", help="restore into this MongoDB ...")
    p.add_argument("--to-db", metavar="NAME", help="... into this database")
    p.add_argument("--drop", action="store_true", help="replace the target database's collections if it is not empty (with --collections: only those)")
    p.add_argument("--to-dump", type=Path, metavar="DIR", help="write a mongodump folder instead (needs no server)")
    p.add_argument("--db", metavar="NAME", help="the source database, when the snapshot holds several")
    p.add_argument("--collections", metavar="A,B", help="restore only these collections")
    p.add_argument("--dry-run", action="store_true", help="print the plan (with --from external: the bundles it would download) and change nothing")
    p.add_argument(
        "--from", dest="source", choices=("local", "external"), default="local",
        help="local: this home's snapshots and WAL (default); external: the bundles on the external service alone",
    )
    p.add_argument("--workdir", type=Path, metavar="DIR", help="with --from external: where downloaded bundles are unpacked (default: the system's temp folder)")
    add_age_identity(p)
    add_provider(p)
    add_home(p)
    p.set_defaults(func=cmd_restore)
    register(sub, add_home)
    register_service(sub, add_home)
    register_story(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="walkit: %(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if args.func.__module__ != "walkit.cli.service":  # run, serve and config read the file themselves
            _config_into_environment(args)
        return args.func(args)
    except BrokenPipeError:  # e.g. `walkit wal show | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("walkit: interrupted", file=sys.stderr)
        return 130
    except WalkitError as exc:
        print(f"walkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # the last line of defence: one line, never a traceback
        if args.verbose:
            raise
        from walkit.mongo import describe_error

        message = describe_error(exc)
        if message is None:
            message = f"unexpected {type(exc).__name__}: {exc} (run with -v for the traceback; this is a walkit bug, please report it)"
        print(f"walkit: error: {message}", file=sys.stderr)
        return 1


__all__ = ["main", "build_parser", "add_home"]
