"""``walkit restore``: dry runs, dumps, restores into MongoDB, and every way to ask wrongly.

One capture (a single database) runs while a snapshot is taken and then a
known workload is written: an insert, an update, a delete, an insert into a
second collection, a transaction of two events, a replace.  The state after
every operation is read back from the server (raw BSON), so the restored
state can be compared byte for byte.  Capture is then stopped, and the
commands run as real processes (``python -m walkit restore --home H ...``).

- ``--dry-run`` prints the plan (snapshot, events, seq) and writes nothing;
- ``--seq N --to-dump DIR`` is the state after event N (a transaction whole),
  ``--before-seq N`` the state just before it, with the indexes in the metadata;
- ``--to-uri --to-db`` restores into a new database, indexes included; a
  non-empty database is refused (naming ``--drop``) and left as it was;
- mistakes are one ``walkit: error:`` line, exit 1 (2 for bad usage);
- a gap marker is never crossed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import pymongo
import pytest
from bson import Decimal128, Int64, Regex, json_util
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from tests.helpers import capturing, in_background, one_error_line, unique, walkit
from walkit.home import Home
from walkit.restore.snapshot import SnapshotInfo, take_snapshot
from walkit.wal.capture import ChangeCapture
from walkit.wal.format import read_records
from walkit.wal.writer import WALWriter

WAIT = 20.0
RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True)
State = dict[str, list[bytes]]  # collection name -> its documents' BSON, sorted

# operationType of each event the workload makes, in seq order (seq 5 and 6 are one transaction)
OPS = ["insert", "update", "delete", "insert", "insert", "delete", "replace"]



def read_state(db: Any, session: Any = None) -> State:
    out = {}
    for name in db.list_collection_names(session=session):
        docs = [d.raw for d in db.get_collection(name, codec_options=RAW).find({}, session=session)]
        if docs:
            out[name] = sorted(docs)
    return out


def dump_state(folder: Path) -> State:
    out = {}
    for path in folder.glob("*.bson"):
        with path.open("rb") as f:
            docs = [d.raw for d in bson.decode_file_iter(f, RAW)]
        if docs:
            out[path.name[: -len(".bson")]] = sorted(docs)
    return out


def index_specs(indexes: Any) -> dict[str, tuple[list[tuple[str, Any]], bool]]:
    return {ix["name"]: (list(ix["key"].items()), bool(ix.get("unique", False))) for ix in indexes}


def wait_for_events(home: Path, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while sum(1 for _ in read_records(home / "wal")) < count:
        assert time.monotonic() < deadline, f"fewer than {count} events reached the WAL in {WAIT} s"
        time.sleep(0.02)


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``path`` with its size and mtime (to prove nothing was written)."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()}


@dataclass
class Scenario:
    uri: str
    home: Path
    db: str
    snap: SnapshotInfo
    before_snapshot: datetime  # an instant the WAL covers but no snapshot does
    after: dict[int, State] = field(default_factory=dict)  # seq -> the state after it
    initial: State = field(default_factory=dict)
    indexes: dict[str, tuple[list[tuple[str, Any]], bool]] = field(default_factory=dict)

    def restore(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return walkit("restore", "--home", str(self.home), *argv)


ITEMS = [
    {"_id": 0, "sku": "A", "price": Decimal128("9.99"), "n": Int64(2**40), "at": datetime(1960, 1, 2, tzinfo=UTC), "tags": [["x"], []]},
    {"_id": 1, "sku": "B", "price": Decimal128("0.10"), "x": {"deep": [1, {"y": 2}]}, "re": Regex("^b", "i")},
    {"_id": 2, "sku": "C", "price": Decimal128("-1E+3"), "n": Int64(-1)},
    {"_id": 3, "sku": "D", "note": "Zoë"},
]


@pytest.fixture(scope="module")
def scenario(mongo_uri: str, client: pymongo.MongoClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    name = unique("rcli")
    home = tmp_path_factory.mktemp("restore-cli") / "home"
    db = client.get_database(name, codec_options=CodecOptions(tz_aware=True))
    db.items.insert_many(ITEMS)
    db.items.create_index([("sku", 1)], name="sku_1", unique=True)
    db.items.create_index([("price", -1), ("n", 1)], name="price_n")
    db.logs.insert_many([{"_id": "l0", "msg": "first"}, {"_id": "l1", "msg": "second"}])
    try:
        with capturing(mongo_uri, home, database=name):
            time.sleep(0.03)
            before_snapshot = datetime.now(UTC)
            time.sleep(0.03)
            snap = take_snapshot(mongo_uri, Home(home), database=name, progress=False)
            scenario = Scenario(mongo_uri, home, name, snap, before_snapshot)
            scenario.indexes = index_specs(db.items.list_indexes())
            with client.start_session(causal_consistency=True) as s:
                scenario.initial = read_state(db, s)
                db.items.insert_one({"_id": 10, "sku": "K", "price": Decimal128("5")}, session=s)
                scenario.after[1] = read_state(db, s)
                db.items.update_one({"_id": 1}, {"$set": {"price": Decimal128("0.20"), "x.deep.1.y": 3}, "$unset": {"re": ""}}, session=s)
                scenario.after[2] = read_state(db, s)
                db.items.delete_one({"_id": 2}, session=s)
                scenario.after[3] = read_state(db, s)
                db.logs.insert_one({"_id": "l2", "msg": "third"}, session=s)
                scenario.after[4] = read_state(db, s)

                def txn(t: Any) -> None:
                    db.items.insert_one({"_id": 11, "sku": "T"}, session=t)
                    db.logs.delete_one({"_id": "l0"}, session=t)

                s.with_transaction(txn)
                scenario.after[5] = scenario.after[6] = read_state(db, s)
                db.items.replace_one({"_id": 3}, {"sku": "D", "replaced": True}, session=s)
                scenario.after[7] = read_state(db, s)
            wait_for_events(home, len(OPS))
        events = [(r.seq, r.event()["operationType"]) for r in read_records(home / "wal")]
        assert events == list(enumerate(OPS, start=1)), events
        yield scenario
    finally:
        client.drop_database(name)  # after every test: a drop now would be an event for the gap test's resumed capture


# -- 5. --dry-run --------------------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_writes_nothing(scenario: Scenario, client: pymongo.MongoClient, tmp_path: Path) -> None:
    before = tree(scenario.home)
    dump, target = tmp_path / "dump", unique("dry")

    result = scenario.restore("--seq", "3", "--dry-run", "--to-dump", str(dump))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "the state after event 3" in out
    assert scenario.snap.id in out
    assert re.search(r"events\s+3 to replay", out), out
    assert "up to seq 3" in out
    assert f"database {scenario.db}" in out

    # the first event of a transaction: the plan takes the whole transaction
    result = scenario.restore("--seq", "5", "--dry-run", "--to-uri", scenario.uri, "--to-db", target)
    assert result.returncode == 0, result.stderr
    assert "up to seq 6" in result.stdout and re.search(r"events\s+6 to replay", result.stdout), result.stdout

    # just before an event
    result = scenario.restore("--before-seq", "3", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "the state just before event 3" in result.stdout and "up to seq 2" in result.stdout

    assert "restored into" not in out
    assert not dump.exists()
    assert target not in client.list_database_names()
    assert tree(scenario.home) == before


# -- 6. --to-dump ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [3, 5, 7])
def test_seq_to_dump_is_the_state_after_the_event(scenario: Scenario, seq: int, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    result = scenario.restore("--seq", str(seq), "--to-dump", str(dump))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert f"restored into {dump}" in result.stdout
    assert sorted(p.name for p in dump.iterdir()) == [scenario.db]  # nothing else in the dump folder
    assert not any(p.name.startswith(".dump") for p in tmp_path.iterdir())
    assert dump_state(dump / scenario.db) == scenario.after[seq]
    meta = json_util.loads((dump / scenario.db / "items.metadata.json").read_text(encoding="utf-8"))
    assert meta["collectionName"] == "items"
    assert index_specs(meta["indexes"]) == scenario.indexes
    assert {"sku_1", "price_n"} <= set(scenario.indexes)


def test_before_seq_of_a_delete_brings_the_document_back(scenario: Scenario, tmp_path: Path) -> None:
    assert OPS[3 - 1] == "delete"
    dump = tmp_path / "dump"
    result = scenario.restore("--before-seq", "3", "--to-dump", str(dump))
    assert result.returncode == 0, result.stderr
    state = dump_state(dump / scenario.db)
    assert state == scenario.after[2]
    assert 2 in [RawBSONDocument(raw)["_id"] for raw in state["items"]]
    assert 2 not in [RawBSONDocument(raw)["_id"] for raw in scenario.after[3]["items"]]


def test_to_dump_refuses_a_non_empty_folder(scenario: Scenario, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    (dump / "keep.txt").write_text("mine", encoding="utf-8")
    line = one_error_line(scenario.restore("--seq", "1", "--to-dump", str(dump)), 1)
    assert str(dump) in line and "not empty" in line
    assert sorted(p.name for p in dump.iterdir()) == ["keep.txt"]


# -- 7. --to-uri --to-db -----------------------------------------------------------------------------


def test_restore_into_a_database_then_refuse_then_drop(scenario: Scenario, client: pymongo.MongoClient) -> None:
    target = unique("into")
    db = client[target]
    try:
        result = scenario.restore("--seq", "7", "--to-uri", scenario.uri, "--to-db", target)
        assert result.returncode == 0, result.stderr
        assert f"restored into {target}" in result.stdout
        assert read_state(db) == scenario.after[7]
        assert sorted(db.list_collection_names()) == ["items", "logs"]  # no __walkit_restore.* left
        assert index_specs(db.items.list_indexes()) == scenario.indexes

        # again into the same, now non-empty, database: refused, nothing changed
        line = one_error_line(scenario.restore("--seq", "3", "--to-uri", scenario.uri, "--to-db", target), 1)
        assert "--drop" in line and target in line
        assert read_state(db) == scenario.after[7]
        assert sorted(db.list_collection_names()) == ["items", "logs"]
        assert index_specs(db.items.list_indexes()) == scenario.indexes

        # with --drop: replaced by the state after event 3
        result = scenario.restore("--seq", "3", "--to-uri", scenario.uri, "--to-db", target, "--drop")
        assert result.returncode == 0, result.stderr
        assert read_state(db) == scenario.after[3]
        assert sorted(db.list_collection_names()) == ["items", "logs"]
        assert index_specs(db.items.list_indexes()) == scenario.indexes
    finally:
        client.drop_database(target)


def test_restore_of_some_collections_into_a_database(scenario: Scenario, client: pymongo.MongoClient) -> None:
    target = unique("some")
    db = client[target]
    try:
        result = scenario.restore("--seq", "6", "--to-uri", scenario.uri, "--to-db", target, "--collections", "logs")
        assert result.returncode == 0, result.stderr
        assert db.list_collection_names() == ["logs"]
        assert read_state(db) == {"logs": scenario.after[6]["logs"]}
        # a subset replaces only its own collections: others in the target stay untouched
        db.keep.insert_one({"_id": "mine"})
        again = scenario.restore("--seq", "6", "--to-uri", scenario.uri, "--to-db", target, "--collections", "logs")
        assert "already has logs" in one_error_line(again, 1) and "--drop" in again.stderr
        dropped = scenario.restore("--seq", "6", "--to-uri", scenario.uri, "--to-db", target, "--collections", "logs", "--drop")
        assert dropped.returncode == 0, dropped.stderr
        assert sorted(db.list_collection_names()) == ["keep", "logs"] and db.keep.find_one() == {"_id": "mine"}
        assert read_state(db)["logs"] == scenario.after[6]["logs"]
    finally:
        client.drop_database(target)


# -- 8. bad input ------------------------------------------------------------------------------------


def _future() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat()


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        pytest.param(["--seq", "3", "--collections", "nosuch"], ["nosuch"], id="unknown-collection"),
        pytest.param(["--seq", "999999"], ["999999", "1..7"], id="seq-beyond-the-wal"),
        pytest.param(["--before-seq", "999999"], ["999999", "1..7"], id="before-seq-beyond-the-wal"),
        pytest.param(["--at", "FUTURE"], ["future"], id="at-in-the-future"),
        pytest.param(["--at", "BEFORE_SNAPSHOT"], ["restorable"], id="at-before-any-snapshot"),
        pytest.param(["--at", "2001-02-03T04:05:06"], ["restorable", "before the WAL begins"], id="at-before-the-wal"),
    ],
)
def test_a_restore_that_cannot_be_done_is_one_line_exit_1(
    scenario: Scenario, client: pymongo.MongoClient, argv: list[str], needles: list[str], tmp_path: Path
) -> None:
    argv = [{"FUTURE": _future(), "BEFORE_SNAPSHOT": scenario.before_snapshot.isoformat()}.get(a, a) for a in argv]
    dump, target = tmp_path / "dump", unique("bad")
    outcomes: dict[str, subprocess.CompletedProcess[str]] = {}

    def run(key: str, *more: str) -> None:
        outcomes[key] = scenario.restore(*argv, *more)

    threads = [
        threading.Thread(target=run, args=("dump", "--to-dump", str(dump))),
        threading.Thread(target=run, args=("mongo", "--to-uri", scenario.uri, "--to-db", target)),
        threading.Thread(target=run, args=("dry", "--dry-run")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    for key, result in outcomes.items():
        line = one_error_line(result, 1)
        for needle in needles:
            assert needle in line, (key, line)
        assert result.stdout == "", key
    assert len(outcomes) == 3
    assert not dump.exists()
    assert target not in client.list_database_names()


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        pytest.param(["--seq", "3"], ["--to-uri", "--to-dump"], id="no-destination"),
        pytest.param(["--seq", "3", "--to-db", "x"], ["--to-uri"], id="to-db-without-to-uri"),
        pytest.param(["--seq", "3", "--to-uri", "mongodb://127.0.0.1:1", "--to-db", "x", "--to-dump", "d"], ["one destination"], id="two-destinations"),
    ],
)
def test_a_wrong_request_is_one_line_exit_2(scenario: Scenario, argv: list[str], needles: list[str]) -> None:
    line = one_error_line(scenario.restore(*argv), 2)
    for needle in needles:
        assert needle in line


def test_a_home_without_wal_is_one_line_exit_2(tmp_path: Path) -> None:
    line = one_error_line(walkit("restore", "--home", str(tmp_path / "none"), "--seq", "1", "--dry-run"), 2)
    assert "no WAL" in line and "walkit capture" in line
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("bad", [["--at", "notatime"], ["--seq", "0"], ["--seq", "x"], ["--seq", "1", "--before-seq", "2"]])
def test_bad_usage_is_exit_2_without_traceback(scenario: Scenario, bad: list[str]) -> None:
    result = scenario.restore(*bad, "--dry-run")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    last = result.stderr.splitlines()[-1]  # argparse: a usage line, then the error (see the report)
    assert last.startswith("walkit restore: error: argument --")
    assert bad[-2] in last or bad[0] in last


# -- gaps ------------------------------------------------------------------------------------------


def test_a_gap_is_never_crossed(scenario: Scenario, client: pymongo.MongoClient, tmp_path: Path) -> None:
    """After capture stopped: a gap marker, then capture resumes (from the token before
    the gap) and records one more insert.  The snapshot lies before the gap, so only
    targets before it can be restored."""
    home = tmp_path / "home"
    shutil.copytree(scenario.home, home)
    writer = WALWriter(home / "wal").open()
    try:
        gap_seq = writer.append_gap("history lost (test)", None, None)
        writer.sync()
    finally:
        writer.close()
    assert gap_seq == len(OPS) + 1
    time.sleep(0.03)
    in_gap = datetime.now(UTC)
    time.sleep(0.03)

    cap = ChangeCapture(scenario.uri, Home(home), database=scenario.db, fsync_interval=0.05)
    thread, failures = in_background(cap)
    try:
        client[scenario.db].items.insert_one({"_id": 20, "sku": "after the gap"})  # resumed from the old token: seen even before the stream opens
        wait_for_events(home, len(OPS) + 2)  # the gap marker counts too
    finally:
        cap.stop()
        thread.join(WAIT)
    assert not thread.is_alive() and not failures, failures
    records = [(r.kind, r.seq) for r in read_records(home / "wal", kinds=("e", "g"))]
    assert records == [*[("e", s) for s in range(1, len(OPS) + 1)], ("g", gap_seq), ("e", gap_seq + 1)]
    after_gap = next(r for r in read_records(home / "wal") if r.seq == gap_seq + 1)
    after_gap_wall = after_gap.get("wt")

    def restore(*argv: str) -> subprocess.CompletedProcess[str]:
        return walkit("restore", "--home", str(home), *argv)

    # before the gap: fine
    dump = tmp_path / "dump"
    result = restore("--seq", str(len(OPS)), "--to-dump", str(dump))
    assert result.returncode == 0, result.stderr
    assert dump_state(dump / scenario.db) == scenario.after[len(OPS)]

    # an instant inside the gap
    line = one_error_line(restore("--at", in_gap.isoformat(), "--dry-run"), 1)
    assert "gap" in line and "history lost (test)" in line and "restorable" in line

    # after the gap: the only snapshot is on the other side of it
    line = one_error_line(restore("--seq", str(gap_seq + 1), "--dry-run"), 1)
    assert "restorable" in line
    line = one_error_line(restore("--at", after_gap_wall.isoformat(), "--dry-run"), 1)
    assert "restorable" in line

    # the gap marker itself is not an event
    one_error_line(restore("--seq", str(gap_seq), "--dry-run"), 1)


# -- snapshots of some collections ---------------------------------------------------------------


def test_a_snapshot_of_some_collections_says_to_name_them(mongo_uri: str, client: pymongo.MongoClient, tmp_path: Path) -> None:
    name = unique("part")
    home = tmp_path / "home"
    client[name].a.insert_one({"_id": 1})
    client[name].b.insert_one({"_id": 2})
    try:
        with capturing(mongo_uri, home, database=name):
            take_snapshot(mongo_uri, Home(home), database=name, collections=["a"], progress=False)
            client[name].a.insert_one({"_id": 3})
            wait_for_events(home, 1)
    finally:
        client.drop_database(name)
    # naming the collection works
    result = walkit("restore", "--home", str(home), "--seq", "1", "--collections", "a", "--dry-run")
    assert result.returncode == 0, result.stderr
    # not naming it fails, and the message should say what to do: name the collections the snapshot holds
    line = one_error_line(walkit("restore", "--home", str(home), "--seq", "1", "--db", name, "--dry-run"), 1)
    assert "--collections" in line and "--db" not in line
