"""``walkit demo``: watch a small workload through a change stream.

Starts a sandbox (unless given a URI), opens a database-level change stream,
writes a workload that exercises every kind of change walkit captures
(insert, update, replace, delete, a multi-document transaction, rename, drop,
dropDatabase), and prints each event the stream delivered.  Exit status 0
only if every expected event arrived, in order.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from bson.decimal128 import Decimal128
from pymongo.database import Database

from walkit.mongo import connect, require_replica_set

DEMO_DB = "walkit_demo"
EXPECTED = [
    "insert", "insert", "insert", "update", "replace", "delete",
    "insert", "update",  # one transaction
    "rename", "drop", "drop", "dropDatabase", "invalidate",
]


def workload(db: Database) -> None:
    """The demo's writes, in order (see EXPECTED)."""
    orders, stock = db.orders, db.inventory
    orders.insert_many([
        {"_id": 1, "item": "tea", "qty": 2, "price": Decimal128("3.50"), "tags": ["hot", "green"]},
        {"_id": 2, "item": "cake", "qty": 1, "price": Decimal128("4.25"), "at": datetime.datetime(2026, 11, 25, 9, 30)},
    ])
    stock.insert_one({"_id": "tea", "left": 40})
    orders.update_one({"_id": 1}, {"$inc": {"qty": 1}, "$unset": {"tags": ""}, "$set": {"note.by": "ana"}})
    orders.replace_one({"_id": 2}, {"item": "cake", "qty": 3})
    orders.delete_one({"_id": 2})
    with db.client.start_session() as session:
        session.with_transaction(
            lambda s: (
                orders.insert_one({"_id": 3, "item": "tea", "qty": 5}, session=s),
                stock.update_one({"_id": "tea"}, {"$inc": {"left": -5}}, session=s),
            )
        )
    orders.rename("orders_2026")
    stock.drop()
    db.client.drop_database(db.name)


def describe(ev: dict[str, Any]) -> str:
    """One line for one change event."""
    ts = ev["clusterTime"]
    ns = ev.get("ns", {})
    where = ".".join(p for p in (ns.get("db"), ns.get("coll")) if p)
    parts = [f"{ts.time}.{ts.inc:<3}", f"{ev['operationType']:<12}", f"{where:<24}"]
    if "documentKey" in ev:
        parts.append(f"_id={ev['documentKey']['_id']!r}")
    if "updateDescription" in ev:
        ud = ev["updateDescription"]
        parts.append(f"set={dict(ud['updatedFields'])} unset={ud['removedFields']}")
    elif ev.get("fullDocument") is not None:
        parts.append(f"doc={ {k: v for k, v in ev['fullDocument'].items() if k != '_id'} }")
    if "to" in ev:
        parts.append(f"-> {ev['to']['db']}.{ev['to']['coll']}")
    if "txnNumber" in ev:
        parts.append(f"[transaction {ev['txnNumber']}]")
    return "  ".join(parts)


@contextlib.contextmanager
def _server(uri: str | None, out: TextIO) -> Iterator[str]:
    if uri:
        print(f"using MongoDB at the given URI; writing to database {DEMO_DB!r}", file=out)
        yield uri
        return
    from walkit import sandbox

    with sandbox.start() as sandbox_uri:
        print(f"started the walkit sandbox at {sandbox_uri}\n({sandbox.SANDBOX_NOTICE})", file=out)
        yield sandbox_uri


def run_demo(uri: str | None = None, out: TextIO = sys.stdout, timeout_s: float = 10.0) -> int:
    """Run the demo; 0 when every expected event was seen in order."""
    with _server(uri, out) as server_uri:
        client = connect(server_uri)
        try:
            require_replica_set(client, server_uri)
            db = client[DEMO_DB]
            client.drop_database(DEMO_DB)
            seen: list[dict[str, Any]] = []
            with db.watch(max_await_time_ms=200) as stream:
                workload(db)
                print(f"\nwrote the workload; the change stream delivered:\n{'clusterTime':<14}{'operation':<14}{'namespace':<26}details", file=out)
                deadline = time.monotonic() + timeout_s
                while len(seen) < len(EXPECTED) and time.monotonic() < deadline:
                    ev = stream.try_next()
                    if ev is not None:
                        seen.append(ev)
                        print(describe(ev), file=out)
        finally:
            client.close()
    ops = [ev["operationType"] for ev in seen]
    if ops != EXPECTED:
        print(f"\nexpected {EXPECTED}\n     got {ops}", file=out)
        return 1
    print(f"\nall {len(seen)} changes arrived, in clusterTime order; the two transaction events share one clusterTime.", file=out)
    return 0
