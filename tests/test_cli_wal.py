"""The WAL commands: ``walkit capture``, ``wal ls``, ``wal show``, ``verify``.

Help for each; ``wal show --json`` is one canonical Extended JSON object per
line that ``bson.json_util`` reads back; ``--from-seq``/``--to-seq`` bound
what is printed; ``wal ls`` lists sealed and open segments; mistakes are one
line on stderr with exit status 2; ``walkit wal show | head -1`` ends
quietly.  Commands run as real processes (``python -m walkit``) where
stderr, exit status or pipes matter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import pymongo
import pytest
from bson import Decimal128, Int64, ObjectId, Timestamp, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS

from tests.helpers import in_background
from walkit.cli import main
from walkit.home import Home
from walkit.wal.capture import ChangeCapture
from walkit.wal.format import list_segments, read_records
from walkit.wal.writer import WALWriter, raw_event

WAIT = 20.0
READ = CANONICAL_JSON_OPTIONS.with_options(tz_aware=True, tzinfo=UTC)
EVENTS = 40  # 20 inserts, 10 updates, 10 deletes
DOC = {"name": "Zoë", "n": Int64(2**40), "price": Decimal128("9.99"), "at": datetime(1960, 1, 2, 3, 4, 5, 6000, tzinfo=UTC), "tags": ["a", {"b": []}], "pad": "p" * 300}


def walkit(*argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "walkit", *argv], capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def count_events(home: Path) -> int:
    # Reads while capture seals segments: a segment sealed under the reader is read from its .zst.
    return sum(1 for _ in read_records(home / "wal"))


@pytest.fixture(scope="module")
def captured(mongo_uri: str, client: pymongo.MongoClient, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """A home whose WAL (several sealed segments and an open one) holds a small captured workload."""
    home = tmp_path_factory.mktemp("cli-wal") / "home"
    name = f"t_{uuid.uuid4().hex[:12]}"
    # The collection exists before capture starts, so the WAL holds the workload's document events only
    # (no `create` event, MongoDB 6.0+): these tests are about seq bounds, segments and shapes, seq 1..EVENTS.
    client[name].create_collection("items")
    cap = ChangeCapture(mongo_uri, Home(home), database=name, fsync_interval=0.05, segment_bytes=4096)
    thread, failures = in_background(cap)
    deadline = time.monotonic() + WAIT
    while cap.stats.checkpoints == 0 and not failures:
        assert time.monotonic() < deadline, "capture did not start"
        time.sleep(0.01)
    docs = [{"_id": i, **DOC} for i in range(20)]
    try:
        coll = client[name].items
        for doc in docs:
            coll.insert_one(doc)
        for i in range(10):
            coll.update_one({"_id": i}, {"$set": {"name": f"n{i}", "deep.er": i}, "$unset": {"pad": ""}})
        for i in range(10, 20):
            coll.delete_one({"_id": i})
        while cap.stats.changes < EVENTS:
            assert time.monotonic() < deadline, "the workload did not reach the WAL"
            time.sleep(0.02)
    finally:
        cap.stop()
        thread.join(WAIT)
        client.drop_database(name)
    assert not thread.is_alive() and not failures, failures
    assert (cap.stats.events, cap.stats.changes, count_events(home)) == (EVENTS, EVENTS, EVENTS)
    return home, docs


# -- help ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "options"),
    [
        (["capture"], ["--uri", "--db", "--collections", "--exclude", "--home", "--fsync-interval", "--segment-mb"]),
        (["wal", "ls"], ["--home", "--json"]),
        (["wal", "show"], ["--home", "--from-seq", "--to-seq", "--json"]),
        (["verify"], ["--home", "--json"]),
    ],
    ids=["capture", "wal-ls", "wal-show", "verify"],
)
def test_help(argv: list[str], options: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: walkit {' '.join(argv)}")
    for option in options:
        assert option in out


# -- wal show --------------------------------------------------------------------------


def test_wal_show_json_is_canonical_extended_json_per_line(captured: tuple[Path, list[dict[str, Any]]]) -> None:
    home, docs = captured
    result = walkit("wal", "show", "--json", "--home", str(home))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == EVENTS
    events = []
    for line in lines:
        doc = json_util.loads(line, json_options=READ)
        assert json_util.dumps(doc, json_options=CANONICAL_JSON_OPTIONS) == line  # canonical: a round trip changes nothing
        assert {"seq", "op", "ns", "documentKey", "clusterTime", "wallTime"} <= set(doc)
        assert ("fullDocument" in doc) or ("updateDescription" in doc) or doc["op"] == "delete"
        assert isinstance(doc["clusterTime"], Timestamp)
        events.append(doc)
    assert [e["seq"] for e in events] == list(range(1, EVENTS + 1))
    assert [e["op"] for e in events] == ["insert"] * 20 + ["update"] * 10 + ["delete"] * 10
    assert all(e["ns"]["coll"] == "items" for e in events)
    # every type keeps its exact value through Extended JSON
    for event, doc in zip(events[:20], docs, strict=True):
        assert event["documentKey"] == {"_id": doc["_id"]}
        assert event["fullDocument"] == doc
        assert type(event["fullDocument"]["n"]) is Int64 and type(event["fullDocument"]["price"]) is Decimal128
    update = events[20]["updateDescription"]
    assert update["updatedFields"]["name"] == "n0" and update["removedFields"] == ["pad"]
    assert "fullDocument" not in events[30] and "updateDescription" not in events[30]
    assert '"$numberLong"' in lines[0] and '"$numberDecimal"' in lines[0] and '"$date"' in lines[0]


def test_wal_show_human_lines(captured: tuple[Path, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]) -> None:
    home, _ = captured
    assert main(["wal", "show", "--home", str(home), "--from-seq", "20", "--to-seq", "21"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].split()[0] == "20" and " insert " in lines[0] and "doc=" in lines[0]
    assert lines[1].split()[0] == "21" and " update " in lines[1] and "update=" in lines[1]


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        (["--from-seq", "5", "--to-seq", "9"], range(5, 10)),
        (["--from-seq", "33"], range(33, EVENTS + 1)),
        (["--to-seq", "3"], range(1, 4)),
        (["--from-seq", "7", "--to-seq", "7"], range(7, 8)),
        (["--from-seq", str(EVENTS + 1)], range(0)),
        (["--from-seq", "9", "--to-seq", "5"], range(0)),
    ],
    ids=["both", "from", "to", "one", "past-the-end", "empty-range"],
)
def test_wal_show_seq_bounds(captured: tuple[Path, list[dict[str, Any]]], bounds: list[str], expected: range, capsys: pytest.CaptureFixture[str]) -> None:
    home, _ = captured
    assert main(["wal", "show", "--json", "--home", str(home), *bounds]) == 0
    seqs = [json_util.loads(line)["seq"] for line in capsys.readouterr().out.splitlines()]
    assert seqs == list(expected)


@pytest.mark.parametrize("bad", ["0", "-1", "x"])
def test_wal_show_bad_bound_is_usage_error(captured: tuple[Path, list[dict[str, Any]]], bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    home, _ = captured
    with pytest.raises(SystemExit) as exit_info:
        main(["wal", "show", "--home", str(home), "--from-seq", bad])
    assert exit_info.value.code == 2
    assert "--from-seq" in capsys.readouterr().err


# -- wal ls and verify --------------------------------------------------------------------


def test_wal_ls_lists_sealed_and_open_segments(captured: tuple[Path, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]) -> None:
    home, _ = captured
    on_disk = list_segments(home / "wal").segments
    assert len(on_disk) >= 3, "the fixture should have sealed segments"
    assert main(["wal", "ls", "--json", "--home", str(home)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["segment"] for r in rows] == [s.name for s in on_disk]
    assert [r["sealed"] for r in rows] == [True] * (len(rows) - 1) + [False]
    assert rows[0]["segment"] == "seg-00000001.wal.zst" and rows[-1]["segment"].endswith(".wal")
    assert all(r["bytes"] == (home / "wal" / r["segment"]).stat().st_size for r in rows)
    with_events = [r for r in rows if r["first_seq"] is not None]
    assert with_events[0]["first_seq"] == 1 and with_events[-1]["last_seq"] == EVENTS
    for prev, nxt in zip(with_events, with_events[1:], strict=False):
        assert nxt["first_seq"] == prev["last_seq"] + 1
    assert all(datetime.fromisoformat(r["first_time"]) <= datetime.fromisoformat(r["last_time"]) for r in with_events)

    assert main(["wal", "ls", "--home", str(home)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split()[:3] == ["segment", "state", "seq"]
    assert len(text) == len(rows) + 1
    assert text[1].split()[:2] == ["seg-00000001.wal.zst", "sealed"] and "1.." in text[1]
    assert text[-1].split()[1] == "open"


def test_verify_passes_on_a_captured_wal(captured: tuple[Path, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]) -> None:
    home, _ = captured
    assert main(["verify", "--json", "--home", str(home)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["events"] == EVENTS and report["first_seq"] == 1 and report["last_seq"] == EVENTS
    assert report["segments"] == len(list_segments(home / "wal").segments)


# -- mistakes: one line, exit 2 ------------------------------------------------------------


@pytest.mark.parametrize("argv", [["wal", "show"], ["wal", "ls"], ["verify"]])
def test_home_without_wal_is_one_line_and_exit_2(argv: list[str], tmp_path: Path) -> None:
    result = walkit(*argv, "--home", str(tmp_path / "nothing-here"))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("walkit: error: no WAL at ") and "walkit capture" in lines[0]
    assert not (tmp_path / "nothing-here").exists()  # reading does not create a home


def test_capture_without_a_uri_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}
    result = walkit("capture", "--home", str(tmp_path / "h"), env=env)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("walkit: error:") and "--uri" in lines[0] and "MONGODB_URI" in lines[0]
    assert "Traceback" not in result.stderr


# -- pipes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_wal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with far more `wal show` output than a pipe buffer holds."""
    home = tmp_path_factory.mktemp("big") / "home"
    start = datetime(2024, 1, 1, tzinfo=UTC)
    with WALWriter(home / "wal", fsync_interval=0, segment_bytes=256 * 1024) as writer:
        for i in range(3000):
            oid = ObjectId()
            writer.append_event(raw_event({
                "_id": {"_data": f"{i:032X}"}, "operationType": "insert", "clusterTime": Timestamp(1_700_000_000 + i, 1),
                "wallTime": start + timedelta(seconds=i), "ns": {"db": "big", "coll": "c"}, "documentKey": {"_id": oid},
                "fullDocument": {"_id": oid, "i": i, "text": "t" * 100},
            }))
            writer.commit()
    return home


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["text", "json"])
def test_wal_show_into_head_ends_quietly(big_wal: Path, json_flag: list[str]) -> None:
    show = subprocess.Popen([sys.executable, "-m", "walkit", "wal", "show", "--home", str(big_wal), *json_flag], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    head = subprocess.Popen(["head", "-1"], stdin=show.stdout, stdout=subprocess.PIPE)
    assert show.stdout is not None and show.stderr is not None
    show.stdout.close()  # head alone reads it now: when head exits, walkit's writes fail with EPIPE
    out, _ = head.communicate(timeout=60)
    err = show.stderr.read().decode()
    show.stderr.close()
    code = show.wait(60)
    first = out.decode()
    assert first.count("\n") == 1
    assert (json_util.loads(first)["seq"] if json_flag else int(first.split()[0])) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert err == ""
    assert code == 0


def test_every_event_is_bson_on_the_way_back(big_wal: Path) -> None:
    """The synthetic WAL used for the pipe test is itself sound: 3000 events, several segments."""
    records = list(read_records(big_wal / "wal"))
    assert [r.seq for r in records] == list(range(1, 3001))
    assert len(list_segments(big_wal / "wal").segments) > 2
    assert bson.decode(bytes(records[-1].get("ev").raw))["fullDocument"]["i"] == 2999
