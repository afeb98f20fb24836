"""Every BSON type survives the server byte-for-byte: through find and through
change events (``fullDocument`` of insert/replace, ``updatedFields`` values).

What goes in is compared with what comes out as BSON bytes, read either raw
(``RawBSONDocument``) or decoded and re-encoded with the same CodecOptions.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.code import Code
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.dbref import DBRef
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.regex import Regex
from bson.son import SON
from bson.timestamp import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo.collection import Collection
from pymongo.database import Database

CODEC: CodecOptions = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO)
RAW: CodecOptions = CodecOptions(document_class=RawBSONDocument, datetime_conversion=DatetimeConversion.DATETIME_AUTO)


def enc(doc: Any) -> bytes:
    return bson.encode(doc, codec_options=CODEC)


def _ms(year: int, month: int, day: int, *rest: int) -> dt.datetime:
    return dt.datetime(year, month, day, *rest)


#: One value per interesting case; each becomes a field of its own.
VALUES: dict[str, Any] = {
    "oid": ObjectId("65f0a1b2c3d4e5f60718293a"),
    "dec": Decimal128("1234.5678"),
    "dec_nan": Decimal128("NaN"),
    "dec_neg_nan": Decimal128("-NaN"),
    "dec_neg_zero": Decimal128("-0"),
    "dec_max": Decimal128("1E+6144"),
    "dec_inf": Decimal128("-Infinity"),
    "dec_tiny": Decimal128("1E-6176"),
    "long": Int64(7),
    "long_max": Int64(2**63 - 1),
    "long_min": Int64(-(2**63)),
    "int_max": 2**31 - 1,
    "int_min": -(2**31),
    "zero": 0,
    "double": 3.25,
    "nan": float("nan"),
    "inf": float("inf"),
    "neg_inf": float("-inf"),
    "neg_zero": -0.0,
    "double_whole": 2.0,
    "tiny": 5e-324,
    "before_1970": _ms(1901, 12, 13, 20, 45, 52, 123000),
    "epoch": _ms(1970, 1, 1),
    "after_2038": _ms(2100, 3, 4, 5, 6, 7, 8000),
    "year_1": _ms(1, 1, 1),
    "year_9999": _ms(9999, 12, 31, 23, 59, 59, 999000),
    "far_future": DatetimeMS(2**62),
    "far_past": DatetimeMS(-(2**62)),
    "bin_0": Binary(b"\x00\x01generic\xff", 0),
    "bin_0_empty": Binary(b"", 0),
    "bin_1": Binary(b"function", 1),
    "bin_2": Binary(b"old binary", 2),
    "bin_3": Binary(uuid.UUID("00112233-4455-6677-8899-aabbccddeeff").bytes, 3),
    "bin_4": Binary(uuid.UUID("00112233-4455-6677-8899-aabbccddeeff").bytes, 4),
    "bin_5": Binary(b"0123456789abcdef", 5),
    "bin_6": Binary(b"\x02encrypted-ish", 6),
    "bin_7": Binary(b"\x00column", 7),
    "bin_8": Binary(b"sensitive", 8),
    "bin_80": Binary(b"user defined", 0x80),
    "bin_ff": Binary(b"user defined too", 0xFF),
    "regex": Regex("^a.*b$", "imsx"),
    "regex_plain": Regex("[0-9]+", ""),
    "regex_unicode": Regex("caf\u00e9", "u"),
    "code": Code("function () { return 1; }"),
    "code_scope": Code("function () { return x; }", {"x": 1, "nested": {"y": [1, 2]}}),
    "code_empty_scope": Code("return 2", {}),
    "ts": Timestamp(1700000000, 7),
    "ts_max": Timestamp(2**32 - 1, 2**32 - 1),
    "min": MinKey(),
    "max": MaxKey(),
    "dbref": DBRef("coll", ObjectId("65f0a1b2c3d4e5f60718293b")),
    "dbref_db": DBRef("coll", 5, "otherdb"),
    "dbref_extra": DBRef("coll", "k", "otherdb", extra="field", n=3),
    "empty_list": [],
    "empty_doc": {},
    "nested": {"a": [1, [2, [3, {}]], {"b": {"c": []}}], "z": None, "y": {"x": {"w": {}}}},
    "list_of_everything": [None, True, False, 1, Int64(1), 1.0, Decimal128("1"), "1", [1], {"1": 1}],
    "son_order": SON([("z", 1), ("a", 2), ("m", 3)]),
    "unicode_\u00e9\u6f22\U0001f600": "valu\u00e9 \u6f22\u5b57 \U0001f600 \u202e rtl",
    "\u0416": {"\u00df": "\u00df", "\U0001f4a9": ["\U0001f4a9"]},
    "nul_in_value": "a\x00b",
    "empty_string": "",
    "none": None,
    "true": True,
    "false": False,
}


def full_document() -> dict[str, Any]:
    return {"_id": ObjectId("65f0a1b2c3d4e5f60718293c"), **VALUES}


def raw_coll(db: Database, name: str = "c") -> Collection:
    return db.get_collection(name, codec_options=RAW)


def test_the_reference_document_holds_every_bson_type() -> None:
    types = {enc({"v": value})[4] for value in VALUES.values()}
    # 0x01 double ... 0x13 decimal, 0xFF MinKey, 0x7F MaxKey (0x06/0x0C/0x0E are deprecated).
    assert types >= {1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 13, 15, 16, 17, 18, 19, 0xFF, 0x7F}
    subtypes = {v.subtype for v in VALUES.values() if isinstance(v, Binary)}
    assert subtypes >= {0, 1, 2, 3, 4, 5, 6, 7, 8, 0x80}


def test_find_returns_every_type_byte_for_byte(db: Database) -> None:
    doc = full_document()
    db.get_collection("c", codec_options=CODEC).insert_one(doc)
    raw = raw_coll(db).find_one({"_id": doc["_id"]})
    assert raw is not None
    assert raw.raw == enc(doc)
    decoded = db.get_collection("c", codec_options=CODEC).find_one({"_id": doc["_id"]})
    assert enc(decoded) == enc(doc)
    assert isinstance(decoded["far_future"], DatetimeMS) and isinstance(decoded["after_2038"], dt.datetime)
    assert math.copysign(1, decoded["neg_zero"]) == -1 and math.isnan(decoded["nan"])


@pytest.mark.parametrize("key", sorted(VALUES))
def test_each_type_round_trips_as_a_value_and_inside_arrays(db: Database, key: str) -> None:
    value = VALUES[key]
    doc = {"_id": key, "v": value, "in_list": [value, {"deep": value}]}
    db.get_collection("c", codec_options=CODEC).insert_one(doc)
    assert raw_coll(db).find_one({"_id": key}).raw == enc(doc)


def test_values_usable_as_id_round_trip(db: Database) -> None:
    ids = [ObjectId(), Decimal128("-0"), Int64(5), 2**31 - 1, 2.5, "\u00e9", Binary(b"\x01" * 16, 4), Timestamp(1, 2), MinKey(), MaxKey(), {"a": 1, "b": [2]}]
    coll = db.get_collection("c", codec_options=CODEC)
    for i, key in enumerate(ids):
        coll.insert_one({"_id": key, "i": i})
    got = {doc["i"]: doc.raw for doc in raw_coll(db).find()}
    assert got == {i: enc({"_id": key, "i": i}) for i, key in enumerate(ids)}


def test_change_events_carry_every_type_byte_for_byte(db: Database) -> None:
    coll = db.get_collection("c", codec_options=CODEC)
    coll.insert_one({"_id": "warm"})  # creates the collection before the stream opens
    doc = full_document()
    replacement = {"_id": doc["_id"], "replaced": True, **dict(reversed(list(VALUES.items())))}
    with raw_coll(db).watch() as stream:
        coll.insert_one(doc)
        coll.replace_one({"_id": doc["_id"]}, replacement)
        for key in ("dec_nan", "neg_zero", "far_past", "bin_2", "code_scope", "dbref_extra", "son_order"):
            coll.update_one({"_id": "warm"}, {"$set": {key: VALUES[key]}})
        events = [stream.next() for _ in range(9)]
    insert, replace, *updates = events
    assert insert["operationType"] == "insert"
    assert insert["fullDocument"].raw == enc(doc)
    assert replace["operationType"] == "replace"
    assert replace["fullDocument"].raw == enc(replacement)
    for ev, key in zip(updates, ("dec_nan", "neg_zero", "far_past", "bin_2", "code_scope", "dbref_extra", "son_order"), strict=True):
        assert ev["operationType"] == "update"
        assert ev["updateDescription"]["updatedFields"].raw == enc({key: VALUES[key]})


def test_decoded_documents_re_encode_to_the_same_bytes(db: Database) -> None:
    coll = db.get_collection("c", codec_options=CODEC)
    doc = full_document()
    coll.insert_one(doc)
    with coll.watch(full_document="updateLookup") as stream:
        coll.update_one({"_id": doc["_id"]}, {"$set": {"extra": Decimal128("-0")}})
        ev = stream.next()
    after = dict(doc, extra=Decimal128("-0"))
    assert enc(ev["updateDescription"]["updatedFields"]) == enc({"extra": Decimal128("-0")})
    assert enc(ev["fullDocument"]) == enc(after)
    assert enc(coll.find_one({"_id": doc["_id"]})) == enc(after)


# -- generated documents ---------------------------------------------------------

keys = st.text(min_size=1, max_size=8).filter(lambda k: "\x00" not in k and "." not in k and not k.startswith("$"))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(Int64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=12).map(bytes),
    st.builds(Binary, st.binary(max_size=16), st.sampled_from([0, 1, 2, 5, 6, 7, 8, 0x80, 0xFE])),
    st.uuids().map(lambda u: Binary(u.bytes, 4)),
    st.uuids().map(lambda u: Binary(u.bytes, 3)),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(DatetimeMS),
    st.integers(min_value=-(2**35), max_value=2**37).map(lambda ms: DatetimeMS(ms).as_datetime()),
    st.builds(ObjectId, st.binary(min_size=12, max_size=12)),
    st.builds(Timestamp, st.integers(1, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.decimals(allow_nan=False, allow_infinity=False).filter(lambda d: len(d.as_tuple().digits) <= 34 and abs(d.adjusted()) < 6000).map(Decimal128),
    st.sampled_from([Decimal128("NaN"), Decimal128("-0"), Decimal128("Infinity"), Decimal128("1E+6144"), Decimal128("-0E-6176")]),
    st.builds(Regex, st.text(alphabet="ab.*+?^$[]()x\u00e9", max_size=6), st.sampled_from(["", "i", "m", "imsux", "s", "x"])),
    st.builds(Code, st.text(max_size=10)),
    st.builds(Code, st.text(max_size=10), st.dictionaries(keys, st.integers(0, 9), max_size=2)),
    st.builds(DBRef, st.text(min_size=1, max_size=5), st.integers(0, 9), st.sampled_from([None, "db"])),
    st.just(MinKey()),
    st.just(MaxKey()),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
documents = st.dictionaries(keys.filter(lambda k: k != "_id"), values, max_size=6)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=documents)
def test_generated_documents_round_trip_through_find_and_events(db: Database, body: dict[str, Any]) -> None:
    coll = db.get_collection("g", codec_options=CODEC)
    doc = {"_id": ObjectId(), **body}
    with raw_coll(db, "g").watch() as stream:
        coll.insert_one(doc)
        coll.update_one({"_id": doc["_id"]}, {"$set": {"added": body}})
        insert, update = stream.next(), stream.next()
    assert raw_coll(db, "g").find_one({"_id": doc["_id"]}).raw == enc({**doc, "added": body})
    decoded = coll.find_one({"_id": doc["_id"]})
    assert enc(decoded) == enc({**doc, "added": body})
    assert insert["fullDocument"].raw == enc(doc)
    assert update["operationType"] == "update"
    assert update["updateDescription"]["updatedFields"].raw == enc({"added": body})
