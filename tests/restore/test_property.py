"""Restore at T equals the data at T: random workloads, snapshots taken while writes go on.

One capture (whole deployment) runs for the module; every example writes into
its own database, records the exact state (raw BSON per document) after each
operation together with the operation's clusterTime, takes snapshots at random
moments (some in a thread while the writes continue), and then restores random
targets — after an event, just before one, at an instant — comparing byte for
byte.  A target no snapshot can serve must fail with RestoreError, and only then.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
import pymongo
import pytest
from bson.codec_options import CodecOptions
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import errors as pm

from tests.helpers import capturing
from walkit import RestoreError, Target, metadata_at, state_at, take_snapshot
from walkit.home import Home
from walkit.wal.capture import ChangeCapture
from walkit.wal.format import read_records

EXAMPLES = int(os.environ.get("WALKIT_PROPERTY_EXAMPLES", "200"))
RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True)
COLLS = ["a", "b", "c"]
IDS = st.integers(0, 4)
PATHS = ["x", "y.z", "y.w", "arr", "n", "y"]
counter = itertools.count()
TALLY = {"compared": 0, "refused": 0, "large": 0, "ddl": 0}  # so that a run that checks nothing cannot pass
#: Large values: around pymongo's ~4 KB memoryview threshold, and up to several MB (restores once failed above 4 KB).
BIG_SIZES = [4_000, 5_000, 70_000, 1_100_000, 4_200_000]

scalars = st.one_of(
    st.integers(-5, 5),
    st.text("ab✓", max_size=3),
    st.sampled_from([None, True, 1.5, -0.0, Int64(7), Decimal128("1.10"), datetime(1961, 4, 12, tzinfo=UTC), bson.Binary(b"\x01" * 16, 4)]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["z", "w", "q"]), inner, max_size=2)), max_leaves=4)
docs = st.fixed_dictionaries({}, optional={"x": values, "y": values, "arr": st.lists(scalars, max_size=3), "n": st.integers(0, 3)})

ops = st.one_of(
    st.tuples(st.just("insert"), st.sampled_from(COLLS), IDS, docs),
    st.tuples(st.just("set"), st.sampled_from(COLLS), IDS, st.sampled_from(PATHS), values),
    st.tuples(st.just("unset"), st.sampled_from(COLLS), IDS, st.sampled_from(PATHS)),
    st.tuples(st.just("push"), st.sampled_from(COLLS), IDS, scalars),
    st.tuples(st.just("pull"), st.sampled_from(COLLS), IDS, scalars),
    st.tuples(st.just("inc"), st.sampled_from(COLLS), IDS),
    st.tuples(st.just("replace"), st.sampled_from(COLLS), IDS, docs),
    st.tuples(st.just("delete"), st.sampled_from(COLLS), IDS),
    st.tuples(st.just("drop"), st.sampled_from(COLLS)),
    st.tuples(st.just("rename"), st.sampled_from(COLLS), st.sampled_from(COLLS)),
    st.tuples(st.just("txn"), st.lists(st.tuples(st.sampled_from(["insert", "set", "delete"]), st.sampled_from(COLLS), IDS, values), min_size=2, max_size=3)),
    st.tuples(st.just("snapshot"), st.booleans()),
    st.tuples(st.just("big"), st.sampled_from(COLLS), IDS, st.sampled_from(BIG_SIZES)),
    st.tuples(st.just("bigdoc"), st.sampled_from(COLLS), IDS, st.sampled_from(BIG_SIZES)),
    st.tuples(st.just("index"), st.sampled_from(COLLS), st.sampled_from(["n", "x", "y.z"]), st.booleans()),
    st.tuples(st.just("dropindex"), st.sampled_from(COLLS), st.sampled_from(["n", "x", "y.z"])),
    st.tuples(st.just("collmod"), st.sampled_from(COLLS), st.sampled_from(["strict", "moderate", "off"])),
    st.tuples(st.just("create"), st.sampled_from(COLLS), st.sampled_from([
        {"validator": {"n": {"$type": "int"}}, "validationLevel": "off"},
        {"collation": {"locale": "fr", "strength": 2}},
        {"capped": True, "size": 1 << 30},
        {"changeStreamPreAndPostImages": {"enabled": True}},
    ])),
)
DDL_OPS = ("index", "dropindex", "collmod", "create")


@pytest.fixture(scope="module")
def env(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Home, ChangeCapture]]:
    home = Home(tmp_path_factory.mktemp("prop") / "home")
    with capturing(mongo_uri, home.path, fsync_interval=0.02) as cap:
        yield mongo_uri, home, cap


def _apply(db: Any, op: tuple[Any, ...], session: Any) -> None:
    kind = op[0]
    coll = db[op[1]] if kind not in ("txn", "snapshot") else None
    try:
        if kind == "insert":
            coll.insert_one(dict(op[3], _id=op[2]), session=session)
        elif kind == "set":
            coll.update_one({"_id": op[2]}, {"$set": {op[3]: op[4]}}, session=session)
        elif kind == "unset":
            coll.update_one({"_id": op[2]}, {"$unset": {op[3]: ""}}, session=session)
        elif kind == "push":
            coll.update_one({"_id": op[2]}, {"$push": {"arr": op[3]}}, session=session)
        elif kind == "pull":
            coll.update_one({"_id": op[2]}, {"$pull": {"arr": op[3]}}, session=session)
        elif kind == "inc":
            coll.update_one({"_id": op[2]}, {"$inc": {"n": 1}}, session=session)
        elif kind == "replace":
            coll.replace_one({"_id": op[2]}, op[3], session=session)
        elif kind == "delete":
            coll.delete_one({"_id": op[2]}, session=session)
        elif kind == "drop":
            coll.drop(session=session)
        elif kind == "rename":
            if op[1] != op[2] and op[1] in db.list_collection_names(session=session):
                coll.rename(op[2], dropTarget=True, session=session)
        elif kind == "big":
            coll.update_one({"_id": op[2]}, {"$set": {"x": "b" * op[3]}, "$inc": {"n": 1}}, session=session)
        elif kind == "bigdoc":
            coll.replace_one({"_id": op[2]}, {"x": "d" * op[3], "y": {"z": list(range(op[3] // 100_000))}}, upsert=True, session=session)
        elif kind == "index":
            coll.create_index(op[2], name=f"{op[2]}_i", unique=op[3] and op[2] == "x", session=session)
        elif kind == "dropindex":
            if op[1] in db.list_collection_names(session=session):
                coll.drop_index(f"{op[2]}_i", session=session)
        elif kind == "collmod":
            if op[1] in db.list_collection_names(session=session):
                db.command("collMod", op[1], validator={"n": {"$type": "int"}}, validationLevel=op[2], session=session)
        elif kind == "create":
            db.create_collection(op[1], session=session, **op[2])
        elif kind == "txn":
            for sub in op[1]:  # collections must exist before a transaction writes to them
                if sub[1] not in db.list_collection_names(session=session):
                    db.create_collection(sub[1], session=session)

            def body(s: Any) -> None:
                for sub_kind, name, doc_id, value in op[1]:
                    c = db[name]
                    if sub_kind == "insert":
                        c.update_one({"_id": doc_id}, {"$set": {"x": value}}, upsert=True, session=s)
                    elif sub_kind == "set":
                        c.update_one({"_id": doc_id}, {"$set": {"y": value}}, session=s)
                    else:
                        c.delete_one({"_id": doc_id}, session=s)

            session.with_transaction(body)
    except (pm.DuplicateKeyError, pm.WriteError, pm.OperationFailure, pm.CollectionInvalid):
        pass  # a write the server refuses changes nothing (no event)


def _state(db: Any, session: Any) -> tuple[dict[str, list[bytes]], dict[str, Any]]:
    """The documents of every collection, and its metadata (options, indexes, uuid) as compared."""
    out, meta = {}, {}
    for info in db.list_collections(session=session):
        name = info["name"]
        raws = [d.raw for d in db.get_collection(name, codec_options=RAW).find({}, session=session)]
        if raws:
            out[f"{db.name}.{name}"] = raws
        indexes = list(db[name].list_indexes(session=session))
        meta[f"{db.name}.{name}"] = _meta(info["options"], indexes, info["info"]["uuid"].hex())
    return out, meta


def _meta(options: Any, indexes: Any, uuid: str) -> dict[str, Any]:
    specs = {ix["name"]: (sorted((k, v) for k, v in dict(ix).items() if k not in ("key", "ns")), list(dict(ix["key"]).items())) for ix in indexes}
    return {"options": dict(options), "indexes": specs, "uuid": uuid}


def _canonical(state: dict[str, list[bytes]]) -> dict[str, list[bytes]]:
    """Documents in ``_id`` order, empty collections left out: how both sides are compared."""
    return {ns: sorted(docs, key=lambda raw: bson.encode({"_id": RawBSONDocument(raw)["_id"]})) for ns, docs in state.items() if docs}


def _wait_captured(cap: ChangeCapture, ct: Any) -> None:
    deadline = time.monotonic() + 20
    while True:
        w = cap.writer
        if w is not None and w.last_ct is not None and w.last_ct >= ct and w.durable_seq >= w.next_seq - 1:
            return
        assert time.monotonic() < deadline, "capture did not catch up"
        time.sleep(0.01)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(workload=st.lists(ops, min_size=3, max_size=14), picks=st.lists(st.tuples(st.sampled_from(["seq", "before_seq", "at"]), st.integers(0, 1000)), min_size=1, max_size=4))
def _one_workload(env: tuple[str, Home, ChangeCapture], workload: list[tuple[Any, ...]], picks: list[tuple[str, int]]) -> None:
    uri, home, cap = env
    client = pymongo.MongoClient(uri, tz_aware=True)
    db = client[f"prop{next(counter)}"]
    recorded: list[tuple[Any, tuple[dict[str, list[bytes]], dict[str, Any]]]] = []
    snaps, threads = [], []
    try:
        with client.start_session(causal_consistency=True) as session:
            db.command("ping", session=session)
            recorded.append((session.operation_time, ({}, {})))
            if not any(op[0] == "snapshot" for op in workload):
                workload = [("snapshot", False), *workload]
            for op in workload:
                if op[0] == "snapshot":
                    if op[1]:  # in a thread, while the next writes go on
                        t = threading.Thread(target=lambda: snaps.append(take_snapshot(uri, home, database=db.name, progress=False)))
                        t.start()
                        threads.append(t)
                    else:
                        snaps.append(take_snapshot(uri, home, database=db.name, progress=False))
                    continue
                _apply(db, op, session)
                recorded.append((session.operation_time, _state(db, session)))
            for t in threads:
                t.join(30)
            db.command("ping", session=session)
            _wait_captured(cap, session.operation_time)
    finally:
        client.close()

    records = [(r, r.event()) for r in read_records(home.wal_dir)]
    events = [(r.seq, r.get("ct"), r.get("wt")) for r, ev in records if (ev.get("ns") or {}).get("db") == db.name]
    if not events:
        return
    renamed = [r.get("ct") for r, ev in records if ev["operationType"] == "rename" and ev["ns"]["db"] == db.name]
    # a snapshot during whose scan a collection was renamed cannot serve (where were the documents?)
    snaps = [s for s in snaps if not any(s.start <= ct <= s.end for ct in renamed)]
    for kind, pick in picks:
        seq, ct, wt = events[pick % len(events)]
        later = [e for e in events if e[1] > ct]
        # the state after every event with clusterTime <= ct (a transaction is whole) ...
        expected_after = [state for op_ct, state in recorded if op_ct <= ct][-1]
        if later and any(op_ct > ct and op_ct < later[0][1] for op_ct, _ in recorded):
            continue  # ct is mid-way through one operation's several events: no recorded state for it
        prev_ct = max((e[1] for e in events if e[1] < ct), default=None)
        if kind != "before_seq" and not any(op_ct >= ct and (not later or op_ct < later[0][1]) for op_ct, _ in recorded):
            continue  # no operation ended between this event and the next (an implicit create's event, then its insert's)
        if kind == "before_seq" and prev_ct is not None and not any(prev_ct <= op_ct < ct for op_ct, _ in recorded):
            continue  # likewise for the state just before it
        if kind == "seq":
            target, expected, next_ct = Target("seq", seq), expected_after, (later[0][1] if later else None)
            servable = any(s.end < next_ct if next_ct is not None else True for s in snaps)
        elif kind == "before_seq":
            earlier = [state for op_ct, state in recorded if op_ct < ct]
            target, expected, next_ct = Target("before_seq", seq), earlier[-1], ct
            servable = any(s.end < ct for s in snaps)
        else:
            if later and later[0][2] <= wt:
                continue  # the next event has the same millisecond: "at" cannot tell them apart
            at = wt
            target, expected = Target("at", at), expected_after
            servable = any(s.end_wall <= at for s in snaps)
        if not servable:
            with pytest.raises(RestoreError):
                state_at(home, target, database=db.name)
            TALLY["refused"] += 1
            continue
        got = state_at(home, target, database=db.name)
        assert _canonical(got) == _canonical(expected[0]), f"{target}: restored state differs from the recorded one"
        got_meta = {ns: _meta(m["options"], m["indexes"], m["uuid"]) for ns, m in metadata_at(home, target, database=db.name).items()}
        assert got_meta == expected[1], f"{target}: restored options/indexes differ from the recorded ones"
        TALLY["compared"] += 1
        drawn = {op[0] for op in workload}
        TALLY["large"] += bool(drawn & {"big", "bigdoc"})
        TALLY["ddl"] += bool(drawn & set(DDL_OPS))


def test_state_at_an_instant_before_every_snapshot_is_refused(env: tuple[str, Home, ChangeCapture]) -> None:
    uri, home, cap = env
    client = pymongo.MongoClient(uri, tz_aware=True)
    db = client[f"early{next(counter)}"]
    db.t.insert_one({"_id": 1})
    time.sleep(0.01)
    mark = datetime.now(UTC)
    time.sleep(0.01)
    take_snapshot(uri, home, database=db.name, progress=False)
    db.t.insert_one({"_id": 2})
    with client.start_session(causal_consistency=True) as s:
        db.command("ping", session=s)
        _wait_captured(cap, s.operation_time)
    client.close()
    with pytest.raises(RestoreError) as info:
        state_at(home, Target("at", mark), database=db.name)
    assert "restorable" in str(info.value)
    last = [r for r in read_records(home.wal_dir) if r.event()["ns"]["db"] == db.name][-1]
    got = state_at(home, Target("at", last.get("wt")), database=db.name)
    assert [RawBSONDocument(r)["_id"] for r in got[f"{db.name}.t"]] == [1, 2]
    with pytest.raises(RestoreError) as info:  # beyond what the WAL holds: not known yet
        state_at(home, Target("at", datetime.now(UTC) + timedelta(hours=1)), database=db.name)
    assert "future" in str(info.value)




def test_restore_at_t_equals_the_data_at_t(env: tuple[str, Home, ChangeCapture]) -> None:
    TALLY.update(compared=0, refused=0)
    _one_workload(env)
    assert TALLY["compared"] >= min(50, EXAMPLES // 2), TALLY  # the examples really compared states ...
    assert TALLY["refused"] >= 1, TALLY  # ... and some targets no snapshot could serve
    assert TALLY["large"] >= min(10, EXAMPLES // 10), TALLY  # documents over 4 KB (up to MBs) were drawn and compared ...
    assert TALLY["ddl"] >= min(10, EXAMPLES // 10), TALLY  # ... and so were schema changes
    print(f"\nproperty tally: {TALLY}")
