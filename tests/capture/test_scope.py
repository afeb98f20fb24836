"""What capture keeps: ``database=``, ``collections=``, ``exclude_collections=``.

One workload runs over two fresh databases A and B (inserts, an update,
renames into and out of the scope, drops, and dropDatabase of both); for each
scope the WAL must hold exactly the events the scope promises, in order.
The first insert into a collection that does not exist yet creates it, so
(MongoDB 6.0+, ``showExpandedEvents``) a ``create`` event comes before its
insert, with the ``collectionUUID`` that listCollections reports.


- ``database=A``: everything in A, ending with dropDatabase + invalidate;
- ``collections=[x]``: events on a collection named x, renames from or to x,
  and dropDatabase (a restore must know the database went);
- ``exclude_collections=[y]``: everything but events on y, except a rename
  from y into the scope (the renamed data arrives under a captured name);
- no scope: the whole deployment, both databases.

The last write of the workload (dropDatabase A) is in every scope, so once
it reached the WAL every earlier write has been seen and kept or left out.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

from tests.helpers import capturing
from walkit.wal.format import read_records, verify

WAIT = 20.0
Op = tuple[str, "str | None", "str | None", "str | None"]  # operationType, db, coll, rename target
Uuids = dict[tuple["str | None", "str | None"], Any]  # (db, coll) -> collectionUUID of each collection the workload created


def wal_ops(home: Path) -> list[Op]:
    out: list[Op] = []
    for rec in read_records(home / "wal"):
        ev = rec.get("ev")
        ns = ev.get("ns") or {}
        to = ev.get("to")
        out.append((ev["operationType"], ns.get("db"), ns.get("coll"), to.get("coll") if to else None))
    return out


def canonical(ops: list[Op]) -> list[Op]:
    """Sort each run of consecutive drops: the server picks the order in which dropDatabase drops collections."""
    out: list[Op] = []
    run: list[Op] = []
    for op in [*ops, ("end", None, None, None)]:
        if op[0] == "drop":
            run.append(op)
            continue
        out += sorted(run, key=str)
        run = []
        out.append(op)
    return out[:-1]


def wal_creates(home: Path) -> Uuids:
    """The collectionUUID of every create event in the WAL."""
    out: Uuids = {}
    for rec in read_records(home / "wal"):
        ev = rec.get("ev")
        if ev["operationType"] == "create":
            assert (ev["ns"]["db"], ev["ns"]["coll"]) not in out, f"created twice: {dict(ev['ns'])}"
            out[(ev["ns"]["db"], ev["ns"]["coll"])] = ev["collectionUUID"]
    return out


def workload(client: pymongo.MongoClient, a: str, b: str, uuids: Uuids) -> list[Op]:
    """Write to databases a and b; return every event a whole-deployment stream sees.

    ``uuids`` gets the collectionUUID of each collection created (from listCollections).
    """
    da, db = client[a], client[b]
    da.x.insert_one({"_id": 1})  # each first insert creates its collection
    da.y.insert_one({"_id": 2})
    da.z.insert_one({"_id": 3})
    db.x.insert_one({"_id": 4})
    db.y.insert_one({"_id": 5})
    for d in (da, db):
        uuids.update({(d.name, info["name"]): info["info"]["uuid"] for info in d.list_collections()})
    da.x.rename("x_old")  # out of a collections=[x] scope
    da.y.rename("x")  # from excluded y into the scope
    da.x.update_one({"_id": 2}, {"$set": {"moved": True}})
    da.z.drop()
    db.y.drop()
    da.x.insert_one({"_id": 6})
    da.x_old.rename("y")  # into the excluded name
    da.y.insert_one({"_id": 7})
    client.drop_database(b)
    client.drop_database(a)
    return [
        ("create", a, "x", None), ("insert", a, "x", None), ("create", a, "y", None), ("insert", a, "y", None),
        ("create", a, "z", None), ("insert", a, "z", None), ("create", b, "x", None), ("insert", b, "x", None),
        ("create", b, "y", None), ("insert", b, "y", None),
        ("rename", a, "x", "x_old"), ("rename", a, "y", "x"), ("update", a, "x", None),
        ("drop", a, "z", None), ("drop", b, "y", None),
        ("insert", a, "x", None), ("rename", a, "x_old", "y"), ("insert", a, "y", None),
        ("drop", b, "x", None), ("dropDatabase", b, None, None),
        ("drop", a, "x", None), ("drop", a, "y", None), ("dropDatabase", a, None, None),
    ]


def expect(everything: list[Op], keep: Callable[[Op], bool], invalidate: bool = False) -> list[Op]:
    kept = [op for op in everything if keep(op)]
    return canonical(kept + ([("invalidate", None, None, None)] if invalidate else []))


@pytest.fixture
def names(client: pymongo.MongoClient) -> Iterator[tuple[str, str]]:
    base = f"t_{uuid.uuid4().hex[:10]}"
    pair = (f"{base}_a", f"{base}_b")
    yield pair
    for name in pair:
        client.drop_database(name)


def run_scope(mongo_uri: str, client: pymongo.MongoClient, home: Path, names: tuple[str, str], keep: Callable[[Op], bool], *, only_ours: bool = False, invalidate: bool = False, **scope: Any) -> tuple[list[Op], list[Op]]:
    """(what the WAL holds, what it should hold) for one scope; the create events carry the created collections' uuids."""
    a, b = names
    uuids: Uuids = {}
    with capturing(mongo_uri, home, **scope):
        expected = expect(workload(client, a, b, uuids), keep, invalidate)
        deadline = time.monotonic() + WAIT
        while True:
            got = wal_ops(home)
            mine = [op for op in got if op[1] in names or op[0] == "invalidate"] if only_ours else got
            if len(mine) >= len(expected):
                break
            assert time.monotonic() < deadline, f"only {len(mine)} of {len(expected)} events arrived: {mine}"
            time.sleep(0.02)
    got = wal_ops(home)
    assert verify(home / "wal").ok
    created = {key: uuid for key, uuid in wal_creates(home).items() if key[0] in names}
    assert created == {(op[1], op[2]): uuids[(op[1], op[2])] for op in expected if op[0] == "create"}
    if only_ours:
        got = [op for op in got if op[1] in names]
    return canonical(got), expected


def test_database_scope_keeps_one_database(mongo_uri: str, client: pymongo.MongoClient, tmp_path: Path, names: tuple[str, str]) -> None:
    a, _ = names
    got, expected = run_scope(mongo_uri, client, tmp_path, names, lambda op: op[1] == a, invalidate=True, database=a)
    assert got == expected
    assert {op[1] for op in got} == {a, None}
    assert got[-2:] == [("dropDatabase", a, None, None), ("invalidate", None, None, None)]


def test_collections_scope_keeps_those_collections_and_renames_into_them(mongo_uri: str, client: pymongo.MongoClient, tmp_path: Path, names: tuple[str, str]) -> None:
    a, _ = names

    def keep(op: Op) -> bool:
        return op[1] == a and (op[2] == "x" or op[3] == "x" or op[0] == "dropDatabase")

    got, expected = run_scope(mongo_uri, client, tmp_path, names, keep, invalidate=True, database=a, collections=["x"])
    assert got == expected
    assert ("rename", a, "y", "x") in got  # from outside the scope into it
    assert ("rename", a, "x", "x_old") in got  # out of the scope
    assert not any(op[2] in ("y", "z", "x_old") and op[0] != "rename" for op in got)


def test_exclude_scope_leaves_out_a_collection_but_not_renames_out_of_it(mongo_uri: str, client: pymongo.MongoClient, tmp_path: Path, names: tuple[str, str]) -> None:
    a, _ = names

    def keep(op: Op) -> bool:
        return op[1] == a and (op[2] != "y" or (op[0] == "rename" and op[3] != "y"))

    got, expected = run_scope(mongo_uri, client, tmp_path, names, keep, invalidate=True, database=a, exclude_collections=["y"])
    assert got == expected
    assert ("rename", a, "y", "x") in got  # excluded -> included: the data now lives under a captured name
    assert ("rename", a, "x_old", "y") in got  # included -> excluded: a restore must know x_old went away
    assert ("insert", a, "y", None) not in got
    assert ("drop", a, "y", None) not in got
    assert got[-2:] == [("dropDatabase", a, None, None), ("invalidate", None, None, None)]


def test_collections_without_database_match_that_name_in_every_database(mongo_uri: str, client: pymongo.MongoClient, tmp_path: Path, names: tuple[str, str]) -> None:
    def keep(op: Op) -> bool:
        return op[2] == "x" or op[3] == "x" or op[0] == "dropDatabase"

    got, expected = run_scope(mongo_uri, client, tmp_path, names, keep, only_ours=True, collections=["x"])
    assert got == expected
    assert {op[1] for op in got if op[0] == "insert"} == set(names)


def test_whole_deployment_sees_every_database_without_invalidate(mongo_uri: str, client: pymongo.MongoClient, tmp_path: Path, names: tuple[str, str]) -> None:
    got, expected = run_scope(mongo_uri, client, tmp_path, names, lambda op: True, only_ours=True)
    assert got == expected
    assert {op[1] for op in got} == set(names)
    assert ("invalidate", None, None, None) not in wal_ops(tmp_path)  # a cluster stream outlives dropDatabase
    assert [op[0] for op in got].count("dropDatabase") == 2
