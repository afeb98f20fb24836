"""The catalog follows DDL events (MongoDB manual, "Change Events": create, createIndexes,
dropIndexes, modify, drop, rename, dropDatabase) and MemoryState keeps documents of any size."""

from __future__ import annotations

from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.raw_bson import RawBSONDocument

from walkit.restore.catalog import Catalog, CollectionMeta, clean_options
from walkit.restore.replay import DOC, MemoryState

NS = ("d", "c")
UUID = Binary(b"\x11" * 16, 4)


def event(op: str, coll: str = "c", **fields: Any) -> RawBSONDocument:
    """A change event as capture stores it: raw BSON (nested documents are RawBSONDocuments too)."""
    doc = {"_id": {"_data": "00"}, "operationType": op, "ns": {"db": "d", "coll": coll}, **fields}
    return RawBSONDocument(bson.encode(doc, codec_options=DOC))


def test_create_sets_options_without_id_index_and_takes_the_uuid() -> None:
    cat = Catalog()
    cat.apply(event("create", collectionUUID=UUID, operationDescription={
        "capped": True, "size": 4096, "max": 10, "collation": {"locale": "fr", "strength": 2},
        "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"},
    }), NS)
    meta = cat.get(NS)
    assert meta.options == {"capped": True, "size": 4096, "max": 10, "collation": {"locale": "fr", "strength": 2}}
    assert meta.uuid == "11" * 16 and meta.known
    assert list(meta.indexes) == ["_id_"]
    assert cat.ddl_events == 1


def test_indexes_are_added_dropped_and_modified_by_name_or_key() -> None:
    cat = Catalog()
    cat.load(NS, {"options": {}, "indexes": [{"v": 2, "key": {"_id": 1}, "name": "_id_", "ns": "d.c"}], "uuid": "ab"})
    assert "ns" not in cat.get(NS).indexes["_id_"]  # old servers' ns field is not carried
    cat.apply(event("createIndexes", operationDescription={"indexes": [
        {"v": 2, "key": {"a": 1, "b": -1}, "name": "a_b", "unique": True},
        {"v": 2, "key": {"t": 1}, "name": "ttl", "expireAfterSeconds": 60},
    ]}), NS)
    cat.apply(event("modify", operationDescription={"index": {"name": "ttl", "expireAfterSeconds": 5}}), NS)
    cat.apply(event("modify", operationDescription={"index": {"keyPattern": {"a": 1, "b": -1}, "hidden": True}}), NS)
    cat.apply(event("modify", operationDescription={"index": {"keyPattern": {"b": -1, "a": 1}, "hidden": False}}), NS)  # other order: no index
    meta = cat.get(NS)
    assert meta.indexes["ttl"]["expireAfterSeconds"] == 5
    assert meta.indexes["a_b"]["hidden"] is True
    cat.apply(event("dropIndexes", operationDescription={"indexes": [{"v": 2, "key": {"t": 1}, "name": "ttl"}]}), NS)
    cat.apply(event("dropIndexes", operationDescription={"indexes": [{"v": 2, "key": {"_id": 1}, "name": "_id_"}]}), NS)
    assert list(cat.get(NS).indexes) == ["_id_", "a_b"]
    assert cat.get(NS).uuid == "ab"


def test_collmod_options_and_their_removal() -> None:
    cat = Catalog()
    cat.apply(event("create", operationDescription={"capped": True, "size": 100}), NS)
    cat.apply(event("modify", operationDescription={"validator": {"a": {"$type": "int"}}, "validationLevel": "moderate"}), NS)
    cat.apply(event("modify", operationDescription={"cappedSize": 200, "cappedMax": 5, "expireAfterSeconds": 9}), NS)
    assert cat.get(NS).options == {"capped": True, "size": 200, "max": 5, "validator": {"a": {"$type": "int"}}, "validationLevel": "moderate", "expireAfterSeconds": 9}
    cat.apply(event("modify", operationDescription={"expireAfterSeconds": "off"}), NS)
    assert "expireAfterSeconds" not in cat.get(NS).options


def test_rename_moves_drop_forgets_and_unknown_collections_use_the_fallback() -> None:
    found = {("d", "late"): {"options": {"capped": True, "size": 1}, "indexes": [{"v": 2, "key": {"_id": 1}, "name": "_id_"}], "uuid": "cd"}}
    cat = Catalog(fallback=found.get)
    cat.apply(event("create", collectionUUID=UUID, operationDescription={"validator": {"x": 1}}), NS)
    cat.apply(event("rename", to={"db": "d", "coll": "e"}), NS)
    assert ("d", "c") not in cat.colls and cat.get(("d", "e")).options == {"validator": {"x": 1}}
    assert cat.get(("d", "e")).uuid == "11" * 16  # a rename keeps the collection's uuid
    cat.apply(event("drop", coll="e"), ("d", "e"))
    assert ("d", "e") not in cat.colls
    cat.apply(event("insert", coll="late", documentKey={"_id": 1}), ("d", "late"))
    assert cat.get(("d", "late")).options == {"capped": True, "size": 1} and not cat.get(("d", "late")).known
    cat.apply(event("create", coll="late", operationDescription={}), ("d", "late"))  # a create event is authoritative
    assert cat.get(("d", "late")).options == {} and cat.get(("d", "late")).known
    cat.apply(event("insert", coll="plain", documentKey={"_id": 1}), ("d", "plain"))
    assert cat.get(("d", "plain")).options == {} and list(cat.get(("d", "plain")).indexes) == ["_id_"]
    cat.apply(event("dropDatabase", coll=None), ("d", "c"))
    assert not cat.colls


def test_metadata_is_mongodump_shaped_with_id_index_first_and_a_uuid() -> None:
    meta = CollectionMeta(options={"capped": True, "size": 1}, indexes={"x_1": {"v": 2, "key": {"x": 1}, "name": "x_1"}, "_id_": {"v": 2, "key": {"_id": 1}, "name": "_id_"}})
    out = meta.as_metadata("odd name")
    assert [ix["name"] for ix in out["indexes"]] == ["_id_", "x_1"]
    assert len(out["uuid"]) == 32 and int(out["uuid"], 16) >= 0
    assert out["collectionName"] == "odd name" and out["type"] == "collection" and "idIndex" not in out["options"]
    assert clean_options({"idIndex": {}, "capped": True}) == {"capped": True}


@pytest.mark.parametrize("size", [0, 4_000, 5_000, 70_000, 2 << 20, 15 << 20])
def test_memory_state_updates_documents_of_any_size(size: int) -> None:
    """Nested raw documents over ~4 KB are memoryviews in pymongo; the state must copy them."""
    state = MemoryState()
    big = {"_id": 1, "blob": "x" * size, "n": 0, "sub": {"a": [1, 2, 3]}}
    state.apply(event("insert", documentKey={"_id": 1}, fullDocument=big), NS)
    state.apply(event("update", documentKey={"_id": 1}, updateDescription={"updatedFields": {"n": 1, "sub.a.1": 9}, "removedFields": [], "truncatedArrays": []}), NS)
    state.apply(event("replace", documentKey={"_id": 2}, fullDocument=dict(big, _id=2)), NS)
    state.apply(event("update", documentKey={"_id": 2}, updateDescription={"updatedFields": {"blob": "y" * size}, "removedFields": ["sub"]}), NS)
    docs = [bson.decode(raw, DOC) for raw in state.documents(NS)]
    assert docs == [dict(big, n=1, sub={"a": [1, 9, 3]}), {"_id": 2, "blob": "y" * size, "n": 0}]
    assert all(isinstance(raw, bytes) for raw in state.documents(NS))


def test_a_dump_into_a_read_only_folder_is_a_clear_error(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk or a read-only folder is the user's to fix: a RestoreError naming the path, nothing left."""
    import os

    from walkit.errors import RestoreError
    from walkit.restore import local

    state = MemoryState()
    state.apply(event("insert", documentKey={"_id": 1}, fullDocument={"_id": 1, "x": "y" * 5000}), NS)
    parent = tmp_path / "ro"
    parent.mkdir()
    os.chmod(parent, 0o500)
    try:
        if os.access(parent, os.W_OK):  # root ignores the mode bits: make the write fail the way a full disk does
            def full(*_: Any, **__: Any) -> None:
                raise OSError(28, "No space left on device", str(parent / "dump"))

            monkeypatch.setattr(local, "write_synced", full)
        with pytest.raises(RestoreError, match="cannot write the dump at .*ro"):
            local._write_dump(state, None, parent / "dump", None, local.RestoreResult(None))  # type: ignore[arg-type]
        assert not [p for p in parent.iterdir() if p.name != "dump"] and not (parent / "dump").exists()
    finally:
        os.chmod(parent, 0o700)
