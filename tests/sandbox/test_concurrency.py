"""Many writers and many change streams at once on one sandbox.

Threads and separate processes write concurrently while collection-,
database- and cluster-level change streams (each in its own thread) watch.
Every write must reach every stream that covers it exactly once, in strictly
increasing clusterTime order, all streams must agree on one order, nothing
may deadlock (every wait is bounded), and the data must end up as written.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

import pymongo
import pytest
from pymongo.change_stream import ChangeStream
from pymongo.client_session import ClientSession

from walkit.sandbox import Sandbox, SandboxProcess

DB = "conc"
DEADLINE = 45.0  # seconds for a whole test; far more than it needs

#: The workload every writer runs, as source so a child process can run it too.
WORKLOAD = '''
def workload(client, writer, n):
    db = client["conc"]
    for i in range(n):
        db["c" if i % 2 == 0 else "d"].insert_one({"_id": f"{writer}-{i}", "w": writer, "i": i, "v": 0})
    for i in range(0, n, 3):
        db["c" if i % 2 == 0 else "d"].update_one({"_id": f"{writer}-{i}"}, {"$inc": {"v": 1}})
    for i in range(0, n, 5):
        db["c" if i % 2 == 0 else "d"].delete_one({"_id": f"{writer}-{i}"})
    db["c"].insert_many([{"_id": f"{writer}-m{j}", "w": writer, "v": j} for j in range(5)])
'''
_ns: dict[str, Any] = {}
exec(WORKLOAD, _ns)
workload: Callable[[pymongo.MongoClient, str, int], None] = _ns["workload"]

CHILD = WORKLOAD + '''
import sys, pymongo
with pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=10000) as client:
    workload(client, sys.argv[2], int(sys.argv[3]))
'''

Key = tuple[str, str, str]  # (collection, operationType, _id)


def expected_events(writer: str, n: int) -> list[Key]:
    out: list[Key] = []
    for i in range(n):
        out.append(("c" if i % 2 == 0 else "d", "insert", f"{writer}-{i}"))
    for i in range(0, n, 3):
        out.append(("c" if i % 2 == 0 else "d", "update", f"{writer}-{i}"))
    for i in range(0, n, 5):
        out.append(("c" if i % 2 == 0 else "d", "delete", f"{writer}-{i}"))
    out += [("c", "insert", f"{writer}-m{j}") for j in range(5)]
    return out


def expected_docs(writer: str, n: int) -> dict[str, dict[str, Any]]:
    """The final documents a writer leaves, by collection and _id."""
    docs: dict[str, dict[str, Any]] = {}
    for i in range(n):
        if i % 5:
            docs[f"{'c' if i % 2 == 0 else 'd'}/{writer}-{i}"] = {"_id": f"{writer}-{i}", "w": writer, "i": i, "v": 1 if i % 3 == 0 else 0}
    for j in range(5):
        docs[f"c/{writer}-m{j}"] = {"_id": f"{writer}-m{j}", "w": writer, "v": j}
    return docs


class Watcher(threading.Thread):
    """Reads one change stream in its own thread until it has ``want`` events,
    then keeps reading a little longer so duplicates would show."""

    def __init__(self, name: str, stream: ChangeStream, want: int, deadline: float) -> None:
        super().__init__(name=f"watch-{name}", daemon=True)
        self.label = name
        self.stream = stream
        self.want = want
        self.deadline = deadline
        self.events: list[dict[str, Any]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            extra_until: float | None = None
            while time.monotonic() < self.deadline:
                if extra_until is None and len(self.events) >= self.want:
                    extra_until = time.monotonic() + 0.4
                if extra_until is not None and time.monotonic() > extra_until:
                    break
                event = self.stream.try_next()
                if event is not None:
                    self.events.append(event)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.stream.close()

    def keys(self) -> list[Key]:
        return [(e["ns"]["coll"], e["operationType"], e["documentKey"]["_id"]) for e in self.events]


def assert_stream_order(watcher: Watcher) -> None:
    times = [e["clusterTime"] for e in watcher.events]
    assert all(a < b for a, b in pairwise(times)), f"{watcher.label}: clusterTimes are not strictly increasing"
    tokens = [e["_id"]["_data"] for e in watcher.events]
    assert all(a < b for a, b in pairwise(tokens)), f"{watcher.label}: resume tokens are not increasing"


def join_all(threads: list[threading.Thread], deadline: float) -> None:
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"still running after the deadline (deadlock?): {stuck}"


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxProcess]:
    with SandboxProcess() as proc:
        yield proc


def test_threads_and_processes_write_while_streams_watch(server: SandboxProcess) -> None:
    n_threads, n_procs, n = 8, 3, 45
    writers = [f"t{k}" for k in range(n_threads)] + [f"p{k}" for k in range(n_procs)]
    everything: list[Key] = [k for w in writers for k in expected_events(w, n)]
    deadline = time.monotonic() + DEADLINE
    client: pymongo.MongoClient = pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=10_000, socketTimeoutMS=30_000)
    try:
        db = client[DB]
        watchers = [
            Watcher("coll-c-1", db.c.watch(max_await_time_ms=100), sum(k[0] == "c" for k in everything), deadline),
            Watcher("coll-c-2", db.c.watch(max_await_time_ms=100, batch_size=7), sum(k[0] == "c" for k in everything), deadline),
            Watcher("coll-d", db.d.watch(max_await_time_ms=100), sum(k[0] == "d" for k in everything), deadline),
            Watcher("database", db.watch(max_await_time_ms=100), len(everything), deadline),
            Watcher("cluster-1", client.watch(max_await_time_ms=100), len(everything), deadline),
            Watcher("cluster-2", client.watch(max_await_time_ms=100, batch_size=13), len(everything), deadline),
        ]
        for w in watchers:
            w.start()

        start = threading.Barrier(n_threads, timeout=10)
        errors: list[BaseException] = []

        def write(writer: str) -> None:
            try:
                start.wait()
                workload(client, writer, n)
            except BaseException as exc:
                errors.append(exc)

        procs = [
            subprocess.Popen([sys.executable, "-c", CHILD, server.uri, f"p{k}", str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for k in range(n_procs)
        ]
        threads = [threading.Thread(target=write, args=(f"t{k}",), daemon=True) for k in range(n_threads)]
        for t in threads:
            t.start()
        try:
            for p in procs:
                _out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
                assert p.returncode == 0, err
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(5)
        join_all(threads, deadline)
        assert not errors, errors
        join_all(list(watchers), deadline)

        for w in watchers:
            assert w.error is None, f"{w.label}: {w.error!r}"
            assert_stream_order(w)
        by = {w.label: w for w in watchers}
        # Exactly once: the multiset of events equals the multiset of writes.
        for label, coll in [("coll-c-1", "c"), ("coll-c-2", "c"), ("coll-d", "d")]:
            assert Counter(by[label].keys()) == Counter(k for k in everything if k[0] == coll), label
        for label in ("database", "cluster-1", "cluster-2"):
            assert Counter(by[label].keys()) == Counter(everything), label
        # One order for everybody: each stream is the cluster stream, filtered.
        reference = [(e["clusterTime"], k) for e, k in zip(by["cluster-1"].events, by["cluster-1"].keys(), strict=True)]
        for w in watchers:
            seen = [(e["clusterTime"], k) for e, k in zip(w.events, w.keys(), strict=True)]
            colls = {"coll-c-1": {"c"}, "coll-c-2": {"c"}, "coll-d": {"d"}}.get(w.label, {"c", "d"})
            assert seen == [r for r in reference if r[1][0] in colls], f"{w.label} disagrees with cluster-1 on the order"

        # The data is what the writers wrote.
        want: dict[str, dict[str, Any]] = {}
        for w in writers:
            want.update(expected_docs(w, n))
        got = {f"{coll}/{doc['_id']}": doc for coll in ("c", "d") for doc in db[coll].find()}
        assert got == want
    finally:
        client.drop_database(DB)
        client.close()


def test_transactions_interleaved_with_plain_writes_stay_atomic_in_the_stream() -> None:
    n_plain, n_txn, rounds = 4, 3, 8
    deadline = time.monotonic() + DEADLINE
    with Sandbox() as box, pymongo.MongoClient(box.uri, serverSelectionTimeoutMS=10_000) as client:
        db = client.tx
        db.c.insert_one({"_id": "seed"})  # collections exist before transactions use them
        db.d.insert_one({"_id": "seed"})
        want = n_plain * rounds * 2 + n_txn * rounds * 4
        watcher = Watcher("cluster", client.watch(max_await_time_ms=100), want, deadline)
        watcher.start()
        errors: list[BaseException] = []

        def plain(k: int) -> None:
            try:
                for r in range(rounds):
                    db.c.insert_one({"_id": f"p{k}-{r}"})
                    db.d.update_one({"_id": "seed"}, {"$inc": {f"p{k}": 1}})
            except BaseException as exc:
                errors.append(exc)

        def txn(k: int) -> None:
            try:
                with client.start_session() as session:
                    for r in range(rounds):

                        def body(s: ClientSession, r: int = r) -> None:
                            for j in range(3):
                                db.c.insert_one({"_id": f"x{k}-{r}-{j}"}, session=s)
                            db.d.insert_one({"_id": f"x{k}-{r}"}, session=s)

                        session.with_transaction(body)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=plain, args=(k,), daemon=True) for k in range(n_plain)]
        threads += [threading.Thread(target=txn, args=(k,), daemon=True) for k in range(n_txn)]
        for t in threads:
            t.start()
        join_all(threads, deadline)
        assert not errors, errors
        join_all([watcher], deadline)
        assert watcher.error is None, repr(watcher.error)
        events = watcher.events
        assert len(events) == want
        assert len({e["_id"]["_data"] for e in events}) == want, "an event arrived twice"

        # Group by transaction: each one's events are contiguous, share one
        # clusterTime, and no other event has that clusterTime.
        txn_of = [(e["lsid"]["id"], e["txnNumber"]) if "lsid" in e else None for e in events]
        groups: dict[Any, list[int]] = {}
        for pos, key in enumerate(txn_of):
            if key is not None:
                groups.setdefault(key, []).append(pos)
        assert len(groups) == n_txn * rounds
        for key, positions in groups.items():
            assert len(positions) == 4 and positions == list(range(positions[0], positions[0] + 4)), f"transaction {key} is interleaved"
            assert len({events[p]["clusterTime"] for p in positions}) == 1
        times = [e["clusterTime"] for e in events]
        for i in range(1, len(events)):
            if txn_of[i] is not None and txn_of[i] == txn_of[i - 1]:
                assert times[i] == times[i - 1]
            else:
                assert times[i] > times[i - 1], f"event {i} does not move clusterTime forward"
        assert db.c.count_documents({}) == 1 + n_plain * rounds + n_txn * rounds * 3
        assert db.d.find_one({"_id": "seed"}) == {"_id": "seed", **{f"p{k}": rounds for k in range(n_plain)}}


def test_stopping_a_busy_sandbox_never_hangs() -> None:
    box = Sandbox().start()
    client: pymongo.MongoClient = pymongo.MongoClient(box.uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500, socketTimeoutMS=5000, retryWrites=False, retryReads=False)
    stop_writing = threading.Event()
    ended: list[str] = []

    def watch(k: int) -> None:
        try:
            stream = client.busy.c.watch(max_await_time_ms=30_000) if k % 2 else client.watch(max_await_time_ms=30_000)
            with stream:
                for _ in range(100_000):
                    stream.try_next()
        except pymongo.errors.PyMongoError:
            ended.append(f"watch-{k}")

    def write(k: int) -> None:
        try:
            for i in range(100_000):
                if stop_writing.is_set():
                    break
                client.busy.c.insert_one({"k": k, "i": i})
        except pymongo.errors.PyMongoError:
            ended.append(f"write-{k}")

    try:
        threads = [threading.Thread(target=watch, args=(k,), daemon=True) for k in range(4)]
        threads += [threading.Thread(target=write, args=(k,), daemon=True) for k in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # streams are now waiting in getMore, writers are writing
        assert client.busy.c.count_documents({}) > 0
        began = time.monotonic()
        box.stop()
        assert time.monotonic() - began < 6.0, "stop() took too long"
        stop_writing.set()
        join_all(threads, time.monotonic() + 20)
        # Every stream saw the server go (an error, not a silent hang).
        assert {e for e in ended if e.startswith("watch-")} == {f"watch-{k}" for k in range(4)}
        assert box._server.connection_count() == 0
    finally:
        stop_writing.set()
        client.close()


def test_stop_ends_getmores_that_are_waiting_for_events() -> None:
    box = Sandbox().start()
    client: pymongo.MongoClient = pymongo.MongoClient(box.uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500)
    try:
        client.admin.command("ping")
        streams = [client.idle.c.watch(max_await_time_ms=30_000), client.watch(max_await_time_ms=30_000)]
        gone: list[BaseException] = []

        def wait_on(stream: ChangeStream) -> None:
            try:
                stream.try_next()
            except pymongo.errors.PyMongoError as exc:
                gone.append(exc)

        threads = [threading.Thread(target=wait_on, args=(s,), daemon=True) for s in streams]
        for t in threads:
            t.start()
        time.sleep(0.3)  # both getMores are now waiting inside the server, with nothing to wake them
        assert box._server.connection_count() >= 2
        box.stop()
        # No write will ever come: only stop() can end those waits, and it must.
        end = time.monotonic() + 3.0
        while box._server.connection_count() and time.monotonic() < end:
            time.sleep(0.02)
        assert box._server.connection_count() == 0, "a getMore kept waiting after stop()"
        join_all(threads, time.monotonic() + 10)
        assert len(gone) == 2
    finally:
        client.close()
