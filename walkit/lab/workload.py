"""The simulation's workload: what the application writes, and the connection it writes on.

:class:`Workload` draws a seeded random mix of inserts, updates and deletes over a
bounded key space; :func:`day_times` spreads a day's writes over fifteen-minute
buckets by :data:`DAILY_SHAPE`; :func:`commands` groups a bucket into ordered write
commands (what ``bulk_write`` sends); :class:`Pipe` sends a bucket's commands to the
sandbox together and reads the replies afterwards.  Deterministic for a given
random generator.  Only the simulation writes this way: walkit's capture, snapshots
and uploads talk to MongoDB through pymongo.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

__all__ = ["Workload", "Pipe", "draw", "commands", "day_times", "DAILY_SHAPE", "BUCKET", "PER_DAY", "DATABASE", "ORDER"]

#: Relative write rate per hour of the day (UTC): quiet nights, busy office hours.
DAILY_SHAPE = (1, 1, 1, 1, 1, 2, 3, 5, 8, 10, 10, 10, 9, 10, 10, 10, 9, 8, 6, 5, 4, 3, 2, 1)
BUCKET = timedelta(minutes=15)
PER_DAY = int(timedelta(days=1) / BUCKET)
DATABASE = "sim"
ORDER = {"insert": 0, "update": 1, "delete": 2}


class Workload:
    """A seeded stream of writes over a bounded key space."""

    def __init__(self, rng: random.Random, keyspace: int) -> None:
        self.rng, self.keyspace = rng, keyspace
        self.live: dict[str, list[int]] = {"orders": [], "customers": []}
        self.free: dict[str, list[int]] = {c: list(range(keyspace)) for c in self.live}
        self.freed: dict[str, list[int]] = {c: [] for c in self.live}  # deleted in this batch: reusable after it

    def end_batch(self) -> None:
        for coll, keys in self.freed.items():
            self.free[coll].extend(keys)
            keys.clear()

    def _take_live(self, coll: str) -> int:
        live = self.live[coll]
        pos = self.rng.randrange(len(live))
        key = live[pos]
        live[pos] = live[-1]  # swap-remove: O(1), the same draws
        live.pop()
        return key

    def _add_live(self, coll: str, key: int) -> None:
        self.live[coll].append(key)

    def next(self) -> tuple[str, str, int, dict[str, Any]]:
        """(op, collection, key, statement): the statement as an ``insert``, ``update`` or
        ``delete`` command carries it."""
        rng = self.rng
        coll = "orders" if rng.random() < 0.8 else "customers"
        live, free = self.live[coll], self.free[coll]
        roll = rng.random()
        op = "update" if roll < 0.45 else "insert" if roll < 0.75 else "delete"
        if op == "insert" and not free:
            op = "update"
        if op != "insert" and not live:
            op = "insert"
        if op == "insert":
            key = free.pop(rng.randrange(len(free)))
            self._add_live(coll, key)
            doc = {"_id": key, "n": 0, "status": "new", "amount": round(rng.random() * 100, 2), "tags": [coll[:-1]]}
            return op, coll, key, doc
        if op == "delete":
            key = self._take_live(coll)
            self.freed[coll].append(key)
            return op, coll, key, {"q": {"_id": key}, "limit": 1}
        key = live[rng.randrange(len(live))]
        status = rng.choice(("new", "paid", "shipped", "returned"))
        return op, coll, key, {"q": {"_id": key}, "u": {"$inc": {"n": 1}, "$set": {"status": status}}}


#: The write command for each op, and the field that holds its statements.
COMMANDS = {"insert": ("insert", "documents"), "update": ("update", "updates"), "delete": ("delete", "deletes")}
#: Statements per command at most (MongoDB takes up to 100,000 and 16 MiB).
MAX_STATEMENTS = 10_000


def draw(workload: Workload, count: int) -> list[tuple[str, str, int, dict[str, Any]]]:
    """One bucket's writes (a key deleted in it is reusable only after it)."""
    ops = [workload.next() for _ in range(count)]
    workload.end_batch()
    return ops


def commands(ops: list[tuple[str, str, int, dict[str, Any]]]) -> tuple[list[dict[str, Any]], list[tuple[str, str, int]]]:
    """A bucket's write commands and its changes in the order they are applied: inserts,
    then updates, then deletes, per collection (the same result as the drawn order, since
    a key deleted in a bucket is not reused in it), as ordered ``bulk_write`` calls send them."""
    groups: dict[tuple[str, str], list[tuple[str, str, int, dict[str, Any]]]] = {(c, op): [] for c in ("orders", "customers") for op in ORDER}
    for o in ops:
        groups[o[1], o[0]].append(o)
    commands: list[dict[str, Any]] = []
    applied: list[tuple[str, str, int]] = []
    for (coll, op), mine in groups.items():
        name, field = COMMANDS[op]
        for i in range(0, len(mine), MAX_STATEMENTS):
            commands.append({name: coll, "ordered": True, field: [o[3] for o in mine[i : i + MAX_STATEMENTS]]})
        applied.extend((op, c, key) for op, c, key, _ in mine)
    return commands, applied


class Pipe:
    """The workload's own connection to the sandbox.

    A bucket's write commands go out together (the wire protocol lets a client send
    before the replies come; the server answers in order) and the replies are read
    afterwards, so the simulation draws the next bucket while the sandbox works.
    :meth:`wait` raises on the first error, as ``bulk_write`` would (an error ends
    the simulation, so the writes sent after it do not matter).
    """

    def __init__(self, port: int) -> None:
        import socket

        from walkit.sandbox import HOST

        self.sock = socket.create_connection((HOST, port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ids = 0
        self.pending = 0

    def send(self, commands: list[dict[str, Any]]) -> None:
        import struct

        import bson

        from walkit.sandbox.wire import OP_MSG

        frames = []
        for body in commands:
            self.ids += 1
            payload = b"\x00\x00\x00\x00\x00" + bson.encode({**body, "$db": DATABASE})  # flags, then the body section
            frames.append(struct.pack("<iiii", 16 + len(payload), self.ids, 0, OP_MSG) + payload)
        self.sock.sendall(b"".join(frames))
        self.pending += len(commands)

    def wait(self, keep: int = 0) -> None:
        """Read the replies to all commands sent but the last ``keep``."""
        from pymongo.errors import BulkWriteError, OperationFailure

        from walkit.sandbox.wire import read_request

        failure: Exception | None = None
        while self.pending > keep:
            self.pending -= 1
            reply = read_request(self.sock).body  # an OP_MSG reply has a request's shape
            concern = reply.get("writeConcernError")
            if failure is not None:
                continue  # (read every reply: the connection stays in step)
            if reply.get("ok") != 1.0:
                failure = OperationFailure(reply.get("errmsg", "write failed"), reply.get("code"), reply)
            elif reply.get("writeErrors") or concern:
                failure = BulkWriteError({"writeErrors": reply.get("writeErrors", []), "writeConcernErrors": [concern] if concern else []})
        if failure is not None:
            raise failure

    def close(self) -> None:
        self.sock.close()


def day_times(rng: random.Random, writes: int) -> list[int]:
    """How many writes fall into each bucket of the day (a multinomial draw on DAILY_SHAPE)."""
    buckets = PER_DAY
    per_hour = int(timedelta(hours=1) / BUCKET)
    weights = [DAILY_SHAPE[b // per_hour] for b in range(buckets)]
    counts = [0] * buckets
    for b in rng.choices(range(buckets), weights=weights, k=writes):
        counts[b] += 1
    return counts
