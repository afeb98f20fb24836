"""Fault tests of the backup worker: ``kill -9`` in each phase, a crashed server, SIGTERM.

The worker runs as a real child process (``worker_child.py``: :class:`BackupService` on a
simulated clock the child advances, the mock service in a folder the test shares, hooks
that slow a step down so a kill lands inside it).  MongoDB is a sandbox in its own process
(``walkit sandbox``), written to by a thread of the test that remembers every write the
server acknowledged; each write is identifiable in a change event (a unique ``_id`` per
insert and delete, a unique ``u`` per update).  After each kill the worker is restarted on
the same home, the writes go on, and a SIGTERM stops it (exit status 0).  Then:

- every acknowledged write is in the WAL exactly once (after retention: in the WAL or in
  the bundles the service holds, exactly once by seq), and nothing else is but the
  ``create`` event of ``items`` (capture shows expanded events, as MongoDB 6.0+ does): once
  per server, just before the event of the first insert, which created the collection;
- ``walkit verify --home H`` exits 0;
- the quota ledger and the mock service's own call log show at most one spent call per
  24 h, a call whose result the kill left unknown counts as spent and is not repeated
  inside its window, and the service never refused a call as rate limited.

The kills: while capturing (three times, at random moments); during a scheduled local
snapshot (its half-written folder must never show as a snapshot, and goes at the next one);
while the daily call's bundle is built (nothing spent: the restart makes the call); during
the daily call itself (the ledger's intent is on disk, the service has logged the call:
spent, and the restart waits 24 h); during retention (after the day's call, between two
WAL segments).  The sandbox test kills the server instead, restarts it on the same port
(empty: it keeps nothing), and checks that capture records a gap marker, the worker is
healthy again and captures every write made after the restart.  SIGTERM: exit 0 within
seconds, every write acknowledged before the signal on disk.  Last, an in-process check of
``start()``'s promise that the stream is open when it returns.  Every wait polls with a
deadline.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import pymongo
import pytest
from pymongo import errors as pm

from tests.helpers import unique
from walkit.clock import SimulatedClock
from walkit.errors import WALCorruptError
from walkit.home import Home
from walkit.offsite.bundle import unpack_bundle
from walkit.offsite.quota import QuotaLedger
from walkit.offsite.upload import quota_dir
from walkit.providers.mock import MockExternalBackupProvider
from walkit.restore.local import state_at
from walkit.restore.plan import Target
from walkit.restore.snapshot import list_snapshots
from walkit.sandbox import SandboxProcess
from walkit.service.worker import BackupService
from walkit.wal.format import Record, list_segments, read_records

CHILD = Path(__file__).with_name("worker_child.py")
ROOT = Path(__file__).resolve().parents[2]
DAY = timedelta(hours=24)
PAD = "p" * 300
Op = tuple[str, Any]  # ("i", _id) insert, ("u", mark) update, ("d", _id) delete; (operationType, coll) any other event
DOC_OPS = ("i", "u", "d")  # the writer's writes; the other events are schema events (create, createIndexes, drop...)


# -- the worker process ---------------------------------------------------------------------


def next_at(hour: int, minute: int = 0) -> datetime:
    """The first ``hour:minute`` UTC at least an hour after now: the simulated clock never trails the
    real one (the sandbox stamps events with the real clock; retention compares them with the simulated)."""
    now = datetime.now(UTC) + timedelta(hours=1)
    at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return at if at > now else at + DAY


class Worker:
    """One ``worker_child.py`` process; its stdout lines are collected by a thread, stderr kept in a file."""

    def __init__(self, tmp: Path, uri: str, home: Path, mock: Path, start: datetime, db: str, **options: Any) -> None:
        logs = tmp / "logs"
        logs.mkdir(exist_ok=True)
        self.stderr_path = logs / f"worker-{len(list(logs.iterdir())):02d}.stderr"
        env = dict(os.environ, HOME=str(tmp / "user-home"), TMPDIR=str(tmp / "tmp"), PYTHONUNBUFFERED="1")
        for key in ("user-home", "tmp"):
            (tmp / key).mkdir(exist_ok=True)
        cmd = [sys.executable, str(CHILD), "--uri", uri, "--home", str(home), "--mock", str(mock), "--start", start.isoformat(), "--db", db]
        for key, value in options.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name=f"worker-stdout-{self.proc.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def why(self) -> str:
        return f"worker pid {self.proc.pid} (exit {self.proc.poll()}) said:\n" + "\n".join(self.lines[-20:]) + "\nstderr:\n" + self.stderr[-4000:]

    def wait_line(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with ``prefix`` (fails if the worker exits or time runs out)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                if line.startswith(prefix):
                    return line
            assert self.alive(), f"the worker exited while waiting for {prefix!r}; {self.why()}"
            assert time.monotonic() < deadline, f"no {prefix!r} within {timeout:g} s; {self.why()}"
            time.sleep(0.01)

    def kill(self) -> int:
        assert self.alive(), f"the worker died before the kill; {self.why()}"
        os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.alive(), f"the worker died before the SIGTERM; {self.why()}"
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"the worker did not stop within {timeout:g} s of SIGTERM; {self.why()}") from None
        self._reader.join(5)
        return code


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start worker processes; any still running at the end is killed (by pid)."""
    started: list[Worker] = []

    def start(*args: Any, **kw: Any) -> Worker:
        w = Worker(tmp_path, *args, **kw)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.alive():
            os.kill(w.proc.pid, signal.SIGKILL)
            w.proc.wait(10)


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxProcess]:
    """A sandbox in its own process, shared by the tests of this module (each writes its own database)."""
    with SandboxProcess(port=0) as proc:
        yield proc


def state(home: Path) -> dict[str, Any]:
    """What the worker last wrote to HOME/worker.json."""
    for _ in range(50):
        try:
            return json.loads((home / "worker.json").read_text())
        except (OSError, ValueError):
            time.sleep(0.02)
    raise AssertionError(f"cannot read {home / 'worker.json'}")


def wait_streaming(worker: Worker, home: Path, timeout: float = 30.0) -> None:
    """Until the worker's capture has its change stream open (``ready`` comes a little earlier, when
    the WAL is open; a fresh WAL saves the stream's start as a checkpoint once it is open)."""
    worker.wait_line("ready", timeout)
    deadline = time.monotonic() + timeout
    while not records(home, ("c",)):
        assert worker.alive(), worker.why()
        assert time.monotonic() < deadline, f"the change stream did not open within {timeout:g} s; {worker.why()}"
        time.sleep(0.02)


def sim_time(line: str) -> datetime:
    return datetime.fromisoformat(line.split()[-1])


def restart_at(home: Path) -> datetime:
    """A minute after the last simulated instant the (killed) worker wrote down."""
    return datetime.fromisoformat(state(home)["updated_at"]) + timedelta(minutes=1)


# -- the workload ------------------------------------------------------------------------------


class Writer(threading.Thread):
    """Inserts, updates and deletes into ``db.items`` until stopped; ``acked`` lists, in order, each
    write the server acknowledged.  A failed write (the server died) ends the thread (``failed``)."""

    def __init__(self, uri: str, db: str, tag: str, pause: float = 0.006, seed: int = 0) -> None:
        super().__init__(name=f"writer-{tag}", daemon=True)
        self.uri, self.db, self.tag, self.pause = uri, db, tag, pause
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.acked: list[Op] = []
        self.attempted: list[Op] = []
        self.failed: BaseException | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        client: pymongo.MongoClient = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=3000, socketTimeoutMS=5000)
        coll = client[self.db].items
        live: list[str] = []
        n = 0
        try:
            while not self.halt.is_set():
                n += 1
                roll = self.rng.random()
                if roll < 0.6 or len(live) < 10:
                    op: Op = ("i", f"{self.tag}-{n}")
                    self.attempted.append(op)
                    coll.insert_one({"_id": op[1], "pad": PAD, "n": n})
                    live.append(op[1])
                elif roll < 0.9:
                    op = ("u", f"{self.tag}-u{n}")
                    self.attempted.append(op)
                    assert coll.update_one({"_id": self.rng.choice(live)}, {"$set": {"u": op[1]}}).modified_count == 1
                else:
                    victim = live.pop(self.rng.randrange(len(live)))
                    op = ("d", victim)
                    self.attempted.append(op)
                    assert coll.delete_one({"_id": victim}).deleted_count == 1
                self.acked.append(op)
                time.sleep(self.rng.uniform(0, 2 * self.pause))
        except pm.PyMongoError as exc:
            self.failed = exc
        except BaseException as exc:  # reported by finish()
            self.error = exc
        finally:
            client.close()

    def finish(self, timeout: float = 30.0) -> list[Op]:
        self.halt.set()
        self.join(timeout)
        assert not self.is_alive(), "the writer did not stop"
        assert self.error is None, f"the writer failed: {self.error!r}"
        return list(self.acked)

    def wait_for(self, n: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < n:
            assert self.is_alive(), f"the writer stopped: {self.failed or self.error!r}"
            assert time.monotonic() < deadline, f"only {len(self.acked)} of {n} writes within {timeout:g} s"
            time.sleep(0.01)


# -- reading back -------------------------------------------------------------------------------


def records(home: Path, kinds: tuple[str, ...] = ("e", "g")) -> list[Record]:
    """The WAL's records now; retried while a live writer rotates or retention removes a segment under us."""
    wal = home / "wal"
    for _ in range(100):
        if not wal.is_dir():
            return []
        try:
            return list(read_records(wal, kinds=kinds))
        except (FileNotFoundError, WALCorruptError):
            time.sleep(0.02)
    raise AssertionError(f"cannot read {wal}")


def op_of(rec: Record, db: str) -> Op | None:
    """The writer's op this event record stands for (None: another database); ``(operationType, coll)``
    for an event that is not a document change (``("create", "items")``: the collection was created)."""
    ev = rec.event()
    if ev.get("ns", {}).get("db") != db:
        return None
    kind = ev["operationType"]
    if kind == "insert":
        return ("i", ev["documentKey"]["_id"])
    if kind == "update":
        return ("u", ev["updateDescription"]["updatedFields"]["u"])
    if kind == "delete":
        return ("d", ev["documentKey"]["_id"])
    return (kind, ev["ns"].get("coll"))


def ops_in(recs: list[Record], db: str) -> list[Op]:
    return [op for op in (op_of(r, db) for r in recs if r.kind == "e") if op is not None]


def wait_captured(home: Path, db: str, want: list[Op], worker: Worker, timeout: float = 30.0) -> None:
    """Until the last op of ``want`` is in the WAL (capture is in order: so are the others, unless lost,
    which the exactly-once check that follows tells)."""
    deadline = time.monotonic() + timeout
    while want[-1] not in ops_in(records(home)[-500:], db):
        assert worker.alive(), f"the worker exited before capturing {want[-1]}; {worker.why()}"
        assert time.monotonic() < deadline, f"{want[-1]} not captured within {timeout:g} s"
        time.sleep(0.1)


def assert_exactly_once(got: list[Op], acked: list[Op], allowed: list[Op] | None = None) -> None:
    """Each acknowledged op once; nothing doubled; nothing that was not written (``allowed``: attempted too).

    The writer's first insert creates ``items`` (on a fresh server): MongoDB 6.0+ streams with
    ``showExpandedEvents`` show a ``create`` event just before that insert's.  ``got`` must hold
    exactly that one schema event, right before the event of the first acknowledged write."""
    schema = [op for op in got if op[0] not in DOC_OPS]
    assert schema == [("create", "items")], f"schema events {schema}: expected one create of items, at its first write"
    assert got[:2] == [("create", "items"), acked[0]], f"the create of items is not just before the first write {acked[0]}: {got[:3]}"
    got = [op for op in got if op[0] in DOC_OPS]
    counts = Counter(got)
    doubled = [op for op, n in counts.items() if n > 1]
    assert not doubled, f"{len(doubled)} writes captured twice, e.g. {doubled[:5]}"
    missing = [op for op in acked if op not in counts]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged writes not captured, e.g. {missing[:5]}"
    strangers = set(counts) - set(allowed if allowed is not None else acked)
    assert not strangers, f"events for writes never made: {sorted(strangers)[:5]}"


def assert_gapless(seqs: list[int]) -> None:
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"seq not contiguous: {seqs[:3]}...{seqs[-3:]}"


def walkit_verify(home: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "walkit", "verify", "--home", str(home)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WAL intact" in result.stdout, result.stdout


def mock_of(folder: Path) -> MockExternalBackupProvider:
    """The shared mock service, read from the test (its clock is only used for latency, 0 here)."""
    return MockExternalBackupProvider(latency_ms=0, failure_rate=0, state_dir=folder, clock=SimulatedClock())


def ledger_of(home: Path) -> QuotaLedger:
    return QuotaLedger(quota_dir(Home(home)))


def assert_one_call_per_window(home: Path, mock: Path) -> None:
    """Spent calls (the ledger's, and the service's own log) at least 24 h apart; none refused as rate limited."""
    spent = sorted(c.at for c in ledger_of(home).calls() if c.spent)
    too_close = [(a, b) for a, b in zip(spent, spent[1:], strict=False) if b - a < DAY]
    assert not too_close, f"two spent calls in one window (ledger): {too_close}"
    calls = mock_of(mock).calls
    assert [c for c in calls if c["outcome"] == "rate_limited"] == [], f"the service refused a call as rate limited: {calls}"
    at = [datetime.fromisoformat(c["at"]) if isinstance(c["at"], str) else c["at"] for c in calls]
    close = [(a, b) for a, b in zip(at, at[1:], strict=False) if b - a < DAY]
    assert not close, f"the service saw two calls within 24 h: {close}"
    assert len(calls) <= len(spent), f"the service saw {len(calls)} calls, the ledger spent {len(spent)}"


def stop_cleanly(worker: Worker) -> None:
    code = worker.terminate()
    assert code == 0, f"SIGTERM: exit {code}; {worker.why()}"
    assert worker.lines and worker.lines[-1].startswith("stopped"), worker.why()
    assert "Traceback" not in worker.stderr, worker.stderr


def finish_and_stop(worker: Worker, writer: Writer, home: Path, db: str, before: list[Op]) -> list[Op]:
    """Writes go on for a moment after the restart, then stop; all captured; SIGTERM; exit 0.
    Returns every op acknowledged (``before`` plus the writer's)."""
    writer.wait_for(len(writer.acked) + 50)
    acked = before + writer.finish()
    wait_captured(home, db, acked, worker)
    stop_cleanly(worker)
    assert state(home)["phase"] == "stopped"
    return acked


def unique_db() -> str:
    return unique("wf")


# -- 1. kill -9 while capturing --------------------------------------------------------------------


def test_kill_9_while_capturing_under_writes_loses_and_doubles_nothing(server: SandboxProcess, workers: Callable[..., Worker], tmp_path: Path) -> None:
    home, mock, db = tmp_path / "home", tmp_path / "valerix", unique_db()
    rng = random.Random(1)
    start = next_at(8)  # the daily call is at 02:00: not during this test
    writer = Writer(server.uri, db, "cap", seed=1)
    worker = workers(server.uri, home, mock, start, db, speed=1)
    wait_streaming(worker, home)
    writer.start()
    for _ in range(3):
        writer.wait_for(len(writer.acked) + 60)
        time.sleep(rng.uniform(0.1, 0.6))
        seen = len(records(home))
        assert state(home)["phase"] == "capturing", state(home)
        assert worker.kill() == -signal.SIGKILL
        assert seen > 0
        worker = workers(server.uri, home, mock, restart_at(home), db, speed=1)
        worker.wait_line("ready", 30)
    acked = finish_and_stop(worker, writer, home, db, [])

    recs = records(home)
    assert [r.kind for r in recs].count("g") == 0, "a gap, though the server kept its history"
    assert_gapless([r.seq for r in recs])
    assert recs[0].seq == 1
    assert_exactly_once(ops_in(recs, db), acked)
    assert len(acked) > 200
    walkit_verify(home)
    assert ledger_of(home).calls() == [] and mock_of(mock).calls == []


# -- 2. kill -9 during a local snapshot --------------------------------------------------------------


def test_kill_9_during_a_scheduled_snapshot_leaves_no_broken_snapshot(server: SandboxProcess, workers: Callable[..., Worker], tmp_path: Path) -> None:
    home, mock, db = tmp_path / "home", tmp_path / "valerix", unique_db()
    start = next_at(3)  # the next daily call is 23 simulated hours away
    writer = Writer(server.uri, db, "snap", seed=2)
    # one simulated hour per second, a snapshot every hour, each slowed to 30 s
    worker = workers(server.uri, home, mock, start, db, speed=3600, snapshot_interval=1, slow_snapshot=30)
    wait_streaming(worker, home)
    writer.start()
    worker.wait_line("in snapshot", 30)
    snaps = home / "snapshots"
    assert state(home)["phase"] == "snapshot", state(home)
    assert [p for p in snaps.iterdir() if p.name.startswith(".tmp-")], "the snapshot is not being written"
    complete = {s.id for s in list_snapshots(Home(home))}
    assert len(complete) == 1, complete  # capture's first one
    assert worker.kill() == -signal.SIGKILL
    assert {s.id for s in list_snapshots(Home(home))} == complete, "a half-written snapshot shows as complete"

    worker = workers(server.uri, home, mock, restart_at(home), db, speed=3600, snapshot_interval=1)
    worker.wait_line("ready", 30)
    deadline = time.monotonic() + 30
    while len(list_snapshots(Home(home))) < 2 or [p for p in snaps.iterdir() if p.name.startswith(".tmp-")]:
        assert worker.alive(), worker.why()
        assert time.monotonic() < deadline, f"no new snapshot after the restart, or the killed one's folder is left: {sorted(p.name for p in snaps.iterdir())}"
        time.sleep(0.05)
    acked = finish_and_stop(worker, writer, home, db, [])

    recs = records(home)
    assert_gapless([r.seq for r in recs])
    assert_exactly_once(ops_in(recs, db), acked)
    assert not [p for p in snaps.iterdir() if p.name.startswith((".tmp-", ".lock-"))]
    walkit_verify(home)
    # the newest state, rebuilt from a snapshot and the WAL, is the database's
    restored = state_at(Home(home), Target("seq", recs[-1].seq), database=db)
    with pymongo.MongoClient(server.uri) as client:
        expected = sorted(client[db].items.find({}, {"_id": 1, "u": 1}), key=lambda d: d["_id"])
    got = sorted(({k: v for k, v in bson.decode(raw).items() if k in ("_id", "u")} for raw in restored.get(f"{db}.items", [])), key=lambda d: d["_id"])
    assert got == expected
    assert_one_call_per_window(home, mock)


# -- 3. kill -9 during the daily call ------------------------------------------------------------------


def test_kill_9_during_the_daily_call_spends_it_and_the_restart_waits_for_the_next_window(server: SandboxProcess, workers: Callable[..., Worker], tmp_path: Path) -> None:
    home, mock, db = tmp_path / "home", tmp_path / "valerix", unique_db()
    start = next_at(1, 58)  # BACKUP_HOUR 2 is two simulated minutes (real seconds) away
    writer = Writer(server.uri, db, "call", seed=3)
    worker = workers(server.uri, home, mock, start, db, speed=60, call_seconds=60)
    wait_streaming(worker, home)
    writer.start()
    line = worker.wait_line("in upload call", 30)
    assert state(home)["phase"] == "upload", state(home)
    (call,) = ledger_of(home).calls()
    assert call.ok is None and call.spent, call  # the intent is on disk before the call
    assert [c["outcome"] for c in mock_of(mock).calls] == ["failed"]  # logged, no result: still running
    assert worker.kill() == -signal.SIGKILL
    called_at = call.at
    assert abs(sim_time(line) - called_at) < timedelta(minutes=5)

    (after,) = ledger_of(home).calls()
    assert after.ok is None and after.spent and after.at == called_at, "the kill left a call whose result is unknown: spent"
    # Restarted a minute later, at four simulated hours per second: it must wait out the window.
    worker = workers(server.uri, home, mock, called_at + timedelta(minutes=1), db, speed=4 * 3600)
    worker.wait_line("ready", 30)
    deadline = time.monotonic() + 40
    while len(mock_of(mock).calls) < 2 or mock_of(mock).calls[1]["outcome"] != "stored":
        assert worker.alive(), worker.why()
        assert time.monotonic() < deadline, f"no second call: {mock_of(mock).calls}; worker: {state(home)}"
        time.sleep(0.1)
    acked = finish_and_stop(worker, writer, home, db, [])

    calls = ledger_of(home).calls()
    assert [c.ok for c in calls] == [None, True], calls
    assert called_at + DAY <= calls[1].at < called_at + DAY + timedelta(hours=1), (called_at, calls[1].at)
    assert calls[1].what["first_seq"] == 1, "the interrupted call's bundle is not known to be off-site: the next one starts at 1"
    assert [c["outcome"] for c in mock_of(mock).calls] == ["failed", "stored"]
    assert_one_call_per_window(home, mock)
    recs = records(home)
    assert_gapless([r.seq for r in recs])
    assert_exactly_once(ops_in(recs, db), acked)
    walkit_verify(home)


def test_kill_9_while_the_bundle_is_built_spends_nothing_and_the_restart_makes_the_call(server: SandboxProcess, workers: Callable[..., Worker], tmp_path: Path) -> None:
    home, mock, db = tmp_path / "home", tmp_path / "valerix", unique_db()
    writer = Writer(server.uri, db, "bundle", seed=8)
    worker = workers(server.uri, home, mock, next_at(1, 58), db, speed=60, slow_bundle=60)
    wait_streaming(worker, home)
    writer.start()
    line = worker.wait_line("in bundle", 30)
    assert state(home)["phase"] == "upload", state(home)
    assert [p.name for p in (home / "bundles").iterdir()], "no bundle being built"
    assert worker.kill() == -signal.SIGKILL
    assert ledger_of(home).calls() == [] and mock_of(mock).calls == [], "a call was recorded before the intent"

    # Restarted in the same hour: nothing was spent, so the day's call is made now.
    worker = workers(server.uri, home, mock, restart_at(home), db, speed=60)
    deadline = time.monotonic() + 30
    while not ledger_of(home).calls() or ledger_of(home).calls()[0].ok is None:
        assert worker.alive(), worker.why()
        assert time.monotonic() < deadline, f"the restarted worker made no call: {state(home)}"
        time.sleep(0.05)
    acked = finish_and_stop(worker, writer, home, db, [])

    (call,) = ledger_of(home).calls()
    assert call.ok and call.what["first_seq"] == 1
    assert call.at - sim_time(line) < timedelta(hours=1), (sim_time(line), call.at)
    assert [c["outcome"] for c in mock_of(mock).calls] == ["stored"]
    assert list((home / "bundles").iterdir()) == [], "the killed call's bundle was left behind"
    assert_one_call_per_window(home, mock)
    recs = records(home)
    assert_gapless([r.seq for r in recs])
    assert_exactly_once(ops_in(recs, db), acked)
    walkit_verify(home)


# -- 4. kill -9 during retention -------------------------------------------------------------------------


def offsite_records(mock: Path, scratch: Path) -> list[Record]:
    """The WAL records of every bundle the service holds, oldest first."""
    out: list[Record] = []
    scratch.mkdir(exist_ok=True)
    service = mock_of(mock)
    for i, stored in enumerate(service.list()):
        path = scratch / f"bundle-{i}"
        with path.open("wb") as f:
            service.download_to(stored.ref, f)
        dest = scratch / f"unpacked-{i}"
        unpack_bundle(path, dest, snapshot=False)
        out += list(read_records(dest / "wal"))
    return out


def test_kill_9_during_retention_loses_nothing_that_is_not_off_site(server: SandboxProcess, workers: Callable[..., Worker], tmp_path: Path) -> None:
    home, mock, db = tmp_path / "home", tmp_path / "valerix", unique_db()
    start = next_at(1, 59)
    writer = Writer(server.uri, db, "prune", seed=4, pause=0.004)
    # A simulated day in six seconds; 32 KiB WAL segments; short retention: by the second daily call
    # the first segments are off-site and old, and retention (after the call) removes them.
    options = dict(speed=4 * 3600, snapshot_interval=4, wal_days=0.25, snapshot_days=0.5, segment_kb=32)
    worker = workers(server.uri, home, mock, start, db, slow_prune=60, **options)
    wait_streaming(worker, home)
    writer.start()
    worker.wait_line("in prune", 40)
    assert state(home)["phase"] == "prune", state(home)
    segments_at_kill = [s.name for s in list_segments(home / "wal").segments]
    assert worker.kill() == -signal.SIGKILL
    print("segments at the kill:", segments_at_kill)
    assert [c.ok for c in ledger_of(home).calls()] == [True, True]

    worker = workers(server.uri, home, mock, restart_at(home), db, **options)  # retention runs again at start
    worker.wait_line("ready", 30)
    deadline = time.monotonic() + 20
    while state(home).get("last_prune_at") is None:
        assert worker.alive(), worker.why()
        assert time.monotonic() < deadline, f"retention did not run at start: {state(home)}"
        time.sleep(0.05)
    acked = finish_and_stop(worker, writer, home, db, [])

    local = records(home)
    print("segments at the end:", [s.name for s in list_segments(home / "wal").segments], "first seq", local[0].seq, "of", local[-1].seq)
    assert local[0].seq > 1, f"retention removed nothing: {segments_at_kill}"
    assert "seg-00000001.wal.zst" not in {s.name for s in list_segments(home / "wal").segments}
    offsite = offsite_records(mock, tmp_path / "scratch")
    uploaded_to = max(c.what["last_seq"] for c in ledger_of(home).calls() if c.ok)
    assert local[0].seq <= uploaded_to + 1, f"WAL from seq {local[0].seq} kept, but only up to {uploaded_to} is off-site"
    by_seq: dict[int, Record] = {}
    for rec in offsite + local:
        seq = rec.seq
        assert seq is not None
        if seq in by_seq:
            assert by_seq[seq].raw == rec.raw, f"seq {seq} differs between the WAL and the bundles"
        by_seq[seq] = rec
    seqs = sorted(by_seq)
    assert seqs[0] == 1
    assert_gapless(seqs)
    assert_exactly_once(ops_in([by_seq[s] for s in seqs], db), acked)
    walkit_verify(home)
    assert_one_call_per_window(home, mock)


# -- 5. the server dies mid-capture --------------------------------------------------------------------------


def test_kill_9_of_the_sandbox_mid_capture_is_a_gap_and_the_worker_recovers(workers: Callable[..., Worker], tmp_path: Path) -> None:
    home, mock, db = tmp_path / "home", tmp_path / "valerix", unique_db()
    first = SandboxProcess(port=0)
    second: SandboxProcess | None = None
    try:
        worker = workers(first.uri, home, mock, next_at(8), db, speed=1)
        wait_streaming(worker, home)
        before = Writer(first.uri, db, "before", seed=5)
        before.start()
        before.wait_for(150)
        settled = list(before.acked[:100])
        wait_captured(home, db, settled, worker)
        first.kill()  # while the writer still writes
        before.join(20)
        assert before.failed is not None and not before.is_alive(), "the writer did not notice the server die"
        second = SandboxProcess(port=first.port)
        assert second.uri == first.uri
        deadline = time.monotonic() + 45
        while not any(r.kind == "g" for r in records(home)):
            assert worker.alive(), worker.why()
            assert time.monotonic() < deadline, f"no gap marker after the server restarted: {state(home)}"
            time.sleep(0.1)
        after = Writer(second.uri, db, "after", seed=6)
        after.start()
        acked_after = finish_and_stop_checked(worker, after, home, db)
    finally:
        first.stop()
        if second is not None:
            second.stop()

    recs = records(home)
    assert_gapless([r.seq for r in recs])
    kinds = [r.kind for r in recs]
    assert kinds.count("g") == 1, kinds
    gap = kinds.index("g")
    assert "286" in recs[gap].get("reason"), recs[gap].get("reason")
    # before the gap: what the first server streamed before it died, each once (the rest died with it)
    assert_exactly_once(ops_in(recs[:gap], db), settled, allowed=before.attempted)
    # after it: every write to the restarted server, once
    assert_exactly_once(ops_in(recs[gap + 1 :], db), acked_after)
    walkit_verify(home)


def finish_and_stop_checked(worker: Worker, writer: Writer, home: Path, db: str) -> list[Op]:
    """After the restart: the worker reports itself healthy, captures everything, stops cleanly."""
    writer.wait_for(100)
    deadline = time.monotonic() + 20
    while not (s := state(home)).get("healthy") or s.get("capture_error"):
        assert time.monotonic() < deadline, f"the worker is not healthy again: {s}"
        time.sleep(0.05)
    assert s["gaps"] >= 1, s
    return finish_and_stop(worker, writer, home, db, [])


# -- 6. SIGTERM ----------------------------------------------------------------------------------------------


def test_sigterm_stops_cleanly_with_every_acknowledged_write_on_disk(server: SandboxProcess, workers: Callable[..., Worker], tmp_path: Path) -> None:
    home, mock, db = tmp_path / "home", tmp_path / "valerix", unique_db()
    writer = Writer(server.uri, db, "term", seed=7, pause=0.002)
    worker = workers(server.uri, home, mock, next_at(8), db, speed=1)
    wait_streaming(worker, home)
    writer.start()
    writer.wait_for(300)
    acked = list(writer.acked)  # acknowledged before the signal
    started = time.monotonic()
    stop_cleanly(worker)  # the writer goes on meanwhile
    took = time.monotonic() - started
    all_acked = writer.finish()
    assert state(home)["phase"] == "stopped"
    recs = records(home)
    assert_gapless([r.seq for r in recs])
    assert_exactly_once(ops_in(recs, db), acked, allowed=all_acked)
    assert took < 15, f"the stop took {took:.1f} s"
    walkit_verify(home)


# -- 7. start() ------------------------------------------------------------------------------------------------


def test_start_returns_once_the_stream_is_open_so_a_write_right_after_it_is_captured(sandbox_uri: str, tmp_path: Path) -> None:
    """BackupService.start() promises to return once capture's stream is open: a write made right
    after it returns is then in the WAL (in a fresh home too, where nothing resumes from a token)."""
    missed = []
    with pymongo.MongoClient(sandbox_uri) as client:
        for i in range(20):
            db = f"start_{i}"
            mock = MockExternalBackupProvider(latency_ms=0, failure_rate=0, state_dir=tmp_path / f"valerix-{i}")
            service = BackupService(sandbox_uri, tmp_path / f"home-{i}", database=db, provider=mock, tick=0.05)
            service.start()
            try:
                client[db].items.insert_one({"_id": i})
            finally:
                service.stop()
            if ops_in(records(tmp_path / f"home-{i}"), db) != [("create", "items"), ("i", i)]:  # the insert created items
                missed.append(i)
    assert not missed, f"{len(missed)} of 20 fresh workers missed the write made right after start() returned: {missed}"
