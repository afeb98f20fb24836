"""Fault tests of ``walkit capture``: crashes, server restarts, stops, misuse.

Capture runs as a real child process (``python -m walkit capture``) against
a sandbox server in its own process, so ``kill -9`` of either is a real
crash.  What must hold afterwards:

- ``kill -9`` of capture, any number of times, loses and doubles nothing:
  every change the workload made is in the WAL exactly once (and so is the
  ``create`` event of the collection its first insert made: MongoDB 6.0+
  ``showExpandedEvents``), seq runs gapless from 1, and ``walkit verify`` passes;
- a crashed and restarted server is a **gap** in the WAL (history lost),
  never a silent carry-on, and capture keeps running;
- a clean stop (SIGTERM or SIGINT) exits 0 with everything the server had
  acknowledged before the signal on disk, and a restart resumes exactly
  where the WAL ends, including what was written while capture was down;
- a second capture on a busy home, or a standalone server, is one clear
  line on stderr and exit status 2, never a traceback.

Every wait is bounded; every server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pymongo
import pytest
from bson.raw_bson import RawBSONDocument

from walkit import RestoreError, Target, list_snapshots, state_at
from walkit.errors import WALCorruptError
from walkit.home import Home
from walkit.sandbox import Sandbox, SandboxProcess
from walkit.wal.format import Record, read_records, verify

DB = "faults"
PAD = "p" * 2500  # big enough that a few thousand events span several 1 MiB segments


# -- helpers -------------------------------------------------------------------------


class Capture:
    """One ``walkit capture`` child process, its stderr kept in a file."""

    def __init__(self, uri: str, home: Path, logs: Path, *, db: str | None = DB, extra: tuple[str, ...] = ()) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.stderr_path = logs / f"capture-{len(list(logs.iterdir())):03d}.stderr"
        cmd = [sys.executable, "-m", "walkit", "capture", "--uri", uri, "--home", str(home), *extra]
        if db is not None:
            cmd += ["--db", db]
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        self.pid = self.proc.pid

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"capture pid {self.pid} did not exit within {timeout:g} s; stderr:\n{self.stderr}") from None

    def kill(self) -> int:
        """``kill -9``; returns the exit status (-9 when it was still running)."""
        self.signal(signal.SIGKILL)
        return self.proc.wait(10)


@pytest.fixture
def captures(tmp_path: Path) -> Iterator[Callable[..., Capture]]:
    """Start capture processes; any still running at the end is killed (by pid)."""
    started: list[Capture] = []

    def start(uri: str, home: Path, **kw: Any) -> Capture:
        cap = Capture(uri, home, tmp_path / "logs", **kw)
        started.append(cap)
        return cap

    yield start
    for cap in started:
        if cap.alive():
            cap.kill()


@pytest.fixture
def server() -> Iterator[SandboxProcess]:
    with SandboxProcess(port=0) as proc:
        yield proc


def records(home: Path, kinds: tuple[str, ...] = ("e", "g")) -> list[Record]:
    """The WAL's records now; retried while a live writer rotates a segment under us."""
    wal = home / "wal"
    for _ in range(50):
        if not wal.is_dir():
            return []
        try:
            return list(read_records(wal, kinds=kinds))
        except (FileNotFoundError, WALCorruptError):
            time.sleep(0.05)
    raise AssertionError(f"cannot read {wal}")


def wait_until(what: str, predicate: Callable[[], bool], timeout: float, cap: Capture | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if cap is not None and not cap.alive():
            raise AssertionError(f"capture exited ({cap.proc.returncode}) while waiting for {what}; stderr:\n{cap.stderr}")
        if time.monotonic() > deadline:
            extra = f"; capture stderr:\n{cap.stderr}" if cap is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{extra}")
        time.sleep(0.05)


def wait_ready(cap: Capture, home: Path, timeout: float = 20.0) -> None:
    """Until the capture's stream is open: a fresh WAL saves its start as a checkpoint first."""
    wait_until("the first checkpoint", lambda: bool(records(home, ("c",))), timeout, cap)


DOCUMENT_CHANGES = ("insert", "update", "replace", "delete")


def events(recs: list[Record]) -> list[Any]:
    return [r.get("ev") for r in recs if r.kind == "e"]


def changes(recs: list[Record]) -> list[Any]:
    """The document changes among the events (not create, drop, ...)."""
    return [ev for ev in events(recs) if ev["operationType"] in DOCUMENT_CHANGES]


def collection_uuid(client: pymongo.MongoClient, coll: str) -> Any:
    return next(client[DB].list_collections(filter={"name": coll}))["info"]["uuid"]


def assert_create(rec: Record, coll: str, uuid: Any) -> None:
    """``rec`` is the create event of ``DB.coll`` (MongoDB 6.0+), with the uuid listCollections gave."""
    assert rec.kind == "e", rec.kind
    ev = rec.get("ev")
    assert ev["operationType"] == "create", ev["operationType"]
    assert dict(ev["ns"]) == {"db": DB, "coll": coll}
    assert ev["collectionUUID"] == uuid


def inserted_ids(recs: list[Record]) -> list[Any]:
    return [ev["documentKey"]["_id"] for ev in events(recs) if ev["operationType"] == "insert"]


def update_marks(recs: list[Record]) -> list[Any]:
    return [ev["updateDescription"]["updatedFields"]["u"] for ev in events(recs) if ev["operationType"] == "update"]


def assert_gapless(recs: list[Record]) -> None:
    seqs = [r.seq for r in recs]
    assert seqs == list(range(1, len(recs) + 1)), f"seq not gapless from 1: {seqs[:5]}...{seqs[-5:]} ({len(seqs)} records)"


def assert_cluster_time_order(recs: list[Record]) -> None:
    cts = [r.get("ct") for r in recs if r.kind == "e"]
    bad = [(i, a, b) for i, (a, b) in enumerate(zip(cts, cts[1:], strict=False)) if b < a]
    assert not bad, f"events out of clusterTime order at {bad[:3]}"


def walkit_verify(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "walkit", "verify", "--home", str(home)], capture_output=True, text=True, timeout=60)


class Workload(threading.Thread):
    """Inserts, updates and small transactions with short pauses, until stopped.

    Remembers what it wrote: inserted ``_id``s, the unique ``u`` value of
    every update, the ``_id``s inserted inside transactions, and the
    collections its writes created (name and collectionUUID): its first
    insert creates ``items`` when that does not exist yet.
    """

    def __init__(self, uri: str, seed: int, pause: float = 0.004) -> None:
        super().__init__(name="fault-workload", daemon=True)
        self.uri = uri
        self.rng = random.Random(seed)
        self.pause = pause
        self.halt = threading.Event()
        self.ids: list[int] = []
        self.marks: list[int] = []
        self.txn_ids: list[int] = []
        self.created: list[tuple[str, Any]] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    @property
    def writes(self) -> int:
        with self._lock:
            return len(self.ids) + len(self.marks)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _run(self) -> None:
        client: pymongo.MongoClient = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=10_000)
        coll = client[DB].items
        next_id = next_mark = 0
        try:
            creates = coll.name not in client[DB].list_collection_names()  # nothing else writes to it meanwhile
            while not self.halt.is_set():
                roll = self.rng.random()
                if roll < 0.70 or not self.ids:
                    next_id += 1
                    coll.insert_one({"_id": next_id, "pad": PAD})
                    with self._lock:
                        self.ids.append(next_id)
                    if creates:
                        creates = False
                        self.created.append((coll.name, collection_uuid(client, coll.name)))
                elif roll < 0.93:
                    next_mark += 1
                    coll.update_one({"_id": self.rng.choice(self.ids)}, {"$set": {"u": next_mark}})
                    with self._lock:
                        self.marks.append(next_mark)
                else:
                    new = [next_id + 1, next_id + 2, next_id + 3]
                    next_id += 3
                    next_mark += 1
                    target = self.rng.choice(self.ids)
                    with client.start_session() as session, session.start_transaction():
                        coll.insert_many([{"_id": i, "pad": PAD} for i in new], session=session)
                        coll.update_one({"_id": target}, {"$set": {"u": next_mark}}, session=session)
                    with self._lock:
                        self.ids.extend(new)
                        self.txn_ids.extend(new)
                        self.marks.append(next_mark)
                time.sleep(self.rng.uniform(0, self.pause))
        finally:
            client.close()

    def finish(self, timeout: float = 30.0) -> None:
        self.halt.set()
        self.join(timeout)
        assert not self.is_alive(), "the workload did not stop"
        assert self.error is None, f"the workload failed: {self.error!r}"


def assert_exactly_once(recs: list[Record], work: Workload) -> None:
    """Every insert and update of ``work`` in the WAL once, and the create of each collection it made; nothing else."""
    created = [(ev["ns"]["coll"], ev["collectionUUID"]) for ev in events(recs) if ev["operationType"] == "create"]
    assert created == work.created, f"create events {created} for the collections the workload created {work.created}"
    assert all(ev["ns"]["db"] == DB for ev in events(recs))
    for coll, uuid in work.created:  # the create comes before any other event about its collection, all with its uuid
        about = [ev for ev in events(recs) if ev["ns"]["coll"] == coll]
        assert about[0]["operationType"] == "create", about[0]["operationType"]
        assert all(ev["collectionUUID"] == uuid for ev in about)
    got_ids = inserted_ids(recs)
    assert len(got_ids) == len(work.ids), f"{len(got_ids)} insert events for {len(work.ids)} inserts"
    doubled = [i for i, n in Counter(got_ids).items() if n > 1]
    assert not doubled, f"inserts captured twice: {doubled[:10]}"
    assert set(got_ids) == set(work.ids), f"missing inserts: {sorted(set(work.ids) - set(got_ids))[:10]}"
    marks = update_marks(recs)
    assert len(marks) == len(work.marks), f"{len(marks)} update events for {len(work.marks)} updates"
    assert sorted(marks) == sorted(work.marks), "update events differ from the updates made"
    in_txn = sorted(ev["documentKey"]["_id"] for ev in events(recs) if ev["operationType"] == "insert" and ev.get("txnNumber") is not None)
    assert in_txn == sorted(work.txn_ids), "transaction inserts not captured as transaction events"
    assert {ev["operationType"] for ev in events(recs)} == {"insert", "update"} | ({"create"} if work.created else set())


def wait_all_captured(home: Path, work: Workload, cap: Capture, timeout: float = 30.0) -> None:
    """Until the WAL has as many document changes as the workload made, or stops growing for 3 s."""
    want = len(work.ids) + len(work.marks)
    deadline = time.monotonic() + timeout
    count, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        assert cap.alive(), f"capture exited ({cap.proc.returncode}); stderr:\n{cap.stderr}"
        now = len(changes(records(home)))
        if now >= want:
            return
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since > 3.0:
            return  # stuck: the assertions that follow say what is missing
        time.sleep(0.1)


# -- 1. kill -9 of capture ---------------------------------------------------------------


def test_kill_9_of_capture_at_random_moments_loses_and_doubles_nothing(server: SandboxProcess, captures: Callable[..., Capture], tmp_path: Path) -> None:
    home = tmp_path / "home"
    rng = random.Random(0xC0FFEE)
    want_kills, max_kills = 10, 30
    # 1 MiB segments: the workload crosses several, so some kills land in a seal or a rotation.
    cap = captures(server.uri, home, extra=("--segment-mb", "1"))
    wait_ready(cap, home)
    work = Workload(server.uri, seed=7)
    work.start()
    kills = working_kills = seen = 0
    # Kill at random moments; count the kills that cut into a capture that had written
    # something (a kill during start-up counts too, but proves less), until 10 of those.
    while working_kills < want_kills:
        assert kills < max_kills, f"only {working_kills} of {kills} kills hit a capture that was writing; is it that slow to start?"
        time.sleep(rng.uniform(0.15, 1.0))
        assert work.error is None and work.is_alive(), f"the workload stopped: {work.error!r}"
        status = cap.kill()
        kills += 1
        assert status == -signal.SIGKILL, f"capture had already exited ({status}) before the kill; stderr:\n{cap.stderr}"
        assert "Traceback" not in cap.stderr, cap.stderr
        now = len(records(home))
        working_kills += now > seen
        seen = now
        time.sleep(rng.uniform(0.0, 0.3))  # writes go on while capture is down
        cap = captures(server.uri, home, extra=("--segment-mb", "1"))
    work.finish()
    assert len(work.ids) > 500 and work.marks and work.txn_ids, "the workload was too small to mean anything"
    assert [coll for coll, _ in work.created] == ["items"], "on a fresh server the workload's first insert creates items"
    wait_all_captured(home, work, cap)
    cap.signal(signal.SIGTERM)
    assert cap.wait() == 0, cap.stderr
    assert "Traceback" not in cap.stderr

    recs = records(home)
    assert [r.kind for r in recs].count("g") == 0, "a gap, though the server never lost history"
    assert_gapless(recs)
    assert_exactly_once(recs, work)
    assert_cluster_time_order(recs)
    segments = sorted(p.name for p in (home / "wal").iterdir())
    assert len([s for s in segments if s.endswith(".zst")]) >= 2, f"expected several sealed segments: {segments}"
    report = verify(home / "wal")
    assert report.ok and report.torn_tail is None, [str(p) for p in report.problems]
    result = walkit_verify(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(recs)} events, 0 gaps, seq 1..{len(recs)}" in result.stdout


# -- 2. the server crashes and restarts -------------------------------------------------


def test_server_kill_9_and_restart_is_a_gap_and_capture_goes_on(captures: Callable[..., Capture], tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = SandboxProcess(port=0)
    port = first.port
    second: SandboxProcess | None = None
    try:
        cap = captures(first.uri, home)
        wait_ready(cap, home)
        with pymongo.MongoClient(first.uri, serverSelectionTimeoutMS=10_000) as client:
            for i in range(1, 31):
                client[DB].items.insert_one({"_id": f"before-{i}"})  # the first creates items: a create event, then 30 inserts
            uuid_before = collection_uuid(client, "items")
        wait_until("the events before the crash", lambda: len(records(home)) == 1 + 30, 20, cap)
        first.kill()
        time.sleep(0.5)  # capture sees the connection drop while nothing listens
        assert cap.alive(), cap.stderr
        second = SandboxProcess(port=port)
        assert second.uri == first.uri
        wait_until("a gap record", lambda: any(r.kind == "g" for r in records(home)), 45, cap)
        with pymongo.MongoClient(second.uri, serverSelectionTimeoutMS=10_000) as client:
            for i in range(1, 21):
                client[DB].items.insert_one({"_id": f"after-{i}"})  # the restarted server lost items: created again
            uuid_after = collection_uuid(client, "items")
        wait_until("the events after the restart", lambda: len(records(home)) == 31 + 1 + 21, 20, cap)
        wait_until("the initial snapshot and one after the gap", lambda: len(list_snapshots(Home(home))) == 2, 20, cap)
        time.sleep(0.3)
        assert cap.alive(), f"capture stopped after the server restart; stderr:\n{cap.stderr}"
        cap.signal(signal.SIGTERM)
        assert cap.wait() == 0, cap.stderr
    finally:
        first.stop()
        if second is not None:
            second.stop()

    recs = records(home)
    assert_gapless(recs)
    kinds = [r.kind for r in recs]
    assert kinds == ["e"] * 31 + ["g"] + ["e"] * 21, kinds
    assert_create(recs[0], "items", uuid_before)
    assert_create(recs[32], "items", uuid_after)
    assert uuid_before != uuid_after
    assert [ev["operationType"] for ev in events(recs)] == ["create"] + ["insert"] * 30 + ["create"] + ["insert"] * 20
    assert all(ev["collectionUUID"] == uuid_before for ev in events(recs[:31]))
    assert all(ev["collectionUUID"] == uuid_after for ev in events(recs[32:]))
    ids = inserted_ids(recs)
    assert ids == [f"before-{i}" for i in range(1, 31)] + [f"after-{i}" for i in range(1, 21)]
    gap = recs[31]
    assert gap.seq == 32
    assert gap.get("after_tok") == recs[30].get("tok"), "the gap does not name the last event before it"
    assert gap.get("resume_tok") is not None, "the gap does not say where the new stream starts"
    assert "286" in gap.get("reason"), gap.get("reason")
    err = cap.stderr
    assert "Traceback" not in err, err
    assert "history lost" in err and "gap marker" in err, err
    assert "1 gaps" in err.splitlines()[-1], err
    # restorable on both sides of the gap, each from its own snapshot; never across it
    before, after = list_snapshots(Home(home))
    assert before.end <= recs[30].get("ct") and after.start >= gap.get("ct")
    ids_at = {seq: [RawBSONDocument(raw)["_id"] for raw in state_at(Home(home), Target("seq", seq)).get(f"{DB}.items", [])] for seq in (31, 53)}
    assert sorted(ids_at[31]) == sorted(f"before-{i}" for i in range(1, 31))
    assert sorted(ids_at[53]) == sorted(f"after-{i}" for i in range(1, 21))  # the restarted sandbox lost the rest
    with pytest.raises(RestoreError, match="gap"):  # an instant while the server was down
        state_at(Home(home), Target("at", recs[30].get("wt") + timedelta(milliseconds=250)))
    result = walkit_verify(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "52 events, 1 gaps" in result.stdout
    shown = subprocess.run([sys.executable, "-m", "walkit", "wal", "show", "--home", str(home)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert [line.split()[0] for line in shown.stdout.splitlines() if "GAP:" in line] == ["32"], shown.stdout


# -- 3. clean stop and restart while writes go on ----------------------------------------------


def test_restart_after_a_clean_stop_resumes_with_no_loss_or_doubling(server: SandboxProcess, captures: Callable[..., Capture], tmp_path: Path) -> None:
    home = tmp_path / "home"
    cap = captures(server.uri, home, db=None)  # the whole deployment this time
    wait_ready(cap, home)
    work = Workload(server.uri, seed=11, pause=0.01)
    work.start()
    written_while_down: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
        time.sleep(0.6)
        cap.signal(signum)
        assert cap.wait() == 0, cap.stderr
        assert "Traceback" not in cap.stderr
        before = work.writes
        time.sleep(0.5)  # capture is down; the workload is not
        written_while_down.append(work.writes - before)
        cap = captures(server.uri, home, db=None)
    time.sleep(0.6)
    work.finish()
    assert all(n > 0 for n in written_while_down), f"nothing was written while capture was down: {written_while_down}"
    assert [coll for coll, _ in work.created] == ["items"], "on a fresh server the workload's first insert creates items"
    wait_all_captured(home, work, cap)
    cap.signal(signal.SIGTERM)
    assert cap.wait() == 0, cap.stderr

    recs = records(home)
    assert all(r.kind == "e" for r in recs), "a gap after a clean stop"
    assert_gapless(recs)
    assert_exactly_once(recs, work)
    assert_cluster_time_order(recs)
    result = walkit_verify(home)
    assert result.returncode == 0, result.stdout + result.stderr


# -- 4. a second capture on the same home ----------------------------------------------


def test_a_second_capture_on_a_busy_home_exits_2_and_the_first_goes_on(server: SandboxProcess, captures: Callable[..., Capture], tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = captures(server.uri, home)
    wait_ready(first, home)
    second = captures(server.uri, home)
    assert second.wait() == 2, second.stderr
    err = second.stderr
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("walkit: error:")]
    assert len(errors) == 1, err
    assert str(home) in errors[0] and f"pid {first.pid}" in errors[0], errors[0]
    assert [line for line in err.splitlines() if line.strip() and not line.startswith("walkit capture:")] == errors, err

    assert first.alive(), first.stderr
    with pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=10_000) as client:
        client[DB].items.insert_many([{"_id": i} for i in range(25)])  # creates items: a create event, then 25 inserts
        uuid = collection_uuid(client, "items")
    wait_until("the first capture to go on", lambda: len(records(home)) == 1 + 25, 20, first)
    first.signal(signal.SIGTERM)
    assert first.wait() == 0, first.stderr
    recs = records(home)
    assert_gapless(recs)
    assert_create(recs[0], "items", uuid)
    assert [ev["operationType"] for ev in events(recs)] == ["create"] + ["insert"] * 25
    assert inserted_ids(recs) == list(range(25))
    assert walkit_verify(home).returncode == 0


# -- 5. a standalone server ------------------------------------------------------------------


def test_capture_from_a_standalone_server_exits_2_with_the_fix(captures: Callable[..., Capture], tmp_path: Path) -> None:
    with Sandbox(standalone=True) as box:
        assert "directConnection=true" in box.uri
        cap = captures(box.uri, tmp_path / "home")
        status = cap.wait()
    err = cap.stderr
    assert status == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("walkit: error:")]
    assert len(errors) == 1, err
    line = errors[0]
    assert "--replSet" in line and "rs.initiate()" in line, line
    assert "standalone" in line, line
    body = line.removeprefix("walkit: error:").strip()
    assert body.count(". ") == 0, f"more than one sentence: {body}"


# -- 6. a clean stop flushes everything -----------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_clean_stop_exits_0_with_the_last_writes_on_disk(signum: int, server: SandboxProcess, captures: Callable[..., Capture], tmp_path: Path) -> None:
    home = tmp_path / "home"
    cap = captures(server.uri, home)
    wait_ready(cap, home)
    with pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=10_000) as client:
        coll = client[DB].items
        coll.insert_many([{"_id": i, "pad": PAD} for i in range(300)])
        for i in range(300, 310):
            coll.insert_one({"_id": i})
        coll.update_one({"_id": 309}, {"$set": {"u": 1}})
        # No waiting: the signal follows the last acknowledged write at once.
        cap.signal(signum)
    assert cap.wait() == 0, cap.stderr
    err = cap.stderr
    assert "Traceback" not in err, err
    assert "everything is on disk" in err.splitlines()[-1], err
    recs = records(home)
    assert_gapless(recs)
    assert inserted_ids(recs) == list(range(310)), f"{len(inserted_ids(recs))} of 310 inserts on disk"
    assert update_marks(recs) == [1], "the last write before the signal is missing"
    ops = [ev["operationType"] for ev in events(recs)]
    assert ops == ["create"] + ["insert"] * 310 + ["update"], "the first insert creates items: its create event comes first"
    assert dict(recs[0].get("ev")["ns"]) == {"db": DB, "coll": "items"}
    report = verify(home / "wal")
    assert report.ok and report.torn_tail is None, [str(p) for p in report.problems]
