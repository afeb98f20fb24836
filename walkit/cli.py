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
from pathlib import Path

from . import __version__
from .errors import ConfigError, WalkitError

Command = Callable[[argparse.Namespace], int]


def default_home() -> Path:
    """``$WALKIT_HOME``, else ``./.walkit``."""
    return Path(os.environ.get("WALKIT_HOME") or ".walkit")


def add_home(parser: argparse.ArgumentParser) -> None:
    """Give a command the ``--home DIR`` option."""
    parser.add_argument("--home", type=Path, default=None, metavar="DIR", help="walkit's local state folder (default: $WALKIT_HOME, else ./.walkit)")


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
    from .sandbox import SANDBOX_NOTICE, Sandbox

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)  # before the URI is printed: a launcher may stop us at once
    box = Sandbox(args.port, oplog_size=args.oplog_size)
    print(box.uri, flush=True)
    if not args.quiet:
        print(f"{SANDBOX_NOTICE}.\nkeeping the last {args.oplog_size} oplog entries; Ctrl-C stops it.", file=sys.stderr, flush=True)
    try:
        box.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        box.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(uri=args.uri, out=sys.stdout)


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
    p.add_argument("--uri", default=os.environ.get("MONGODB_URI"), help="use this MongoDB replica set instead of a sandbox")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="walkit: %(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("walkit: interrupted", file=sys.stderr)
        return 130
    except WalkitError as exc:
        print(f"walkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # the last line of defence: one line, never a traceback
        if args.verbose:
            raise
        from .mongo import describe_error

        message = describe_error(exc)
        if message is None:
            message = f"unexpected {type(exc).__name__}: {exc} (run with -v for the traceback; this is a walkit bug, please report it)"
        print(f"walkit: error: {message}", file=sys.stderr)
        return 1


__all__ = ["main", "build_parser", "default_home", "add_home", "ConfigError"]
