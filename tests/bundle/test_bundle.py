"""Daily bundles: what goes in comes back out, byte for byte, and the chain holds.

- The WAL segment in a bundle is the local WAL's slice after the previous bundle,
  record for record (the same bytes), framed as a sealed segment whose header names
  the previous bundle's seal; bundles unpacked side by side form a WAL that
  ``walkit.wal.format.verify`` accepts.
- The snapshot comes back byte-identical, and a state replayed from unpacked bundles
  equals the local one and the server's, whatever the BSON types.
- A bundle with nothing new is empty and still continues the chain.
- Encrypted bundles (age) show nothing but the age header, their metadata names no
  database, collection or value, and they open only with the right identity.
- Slicing the local WAL: across sealed segments and gaps, leaving out the writer's
  unfinished tail, and refusing (naming the segment) a local WAL that is damaged or
  no longer holds the position.
- Collections with awkward names (long, unicode, backslash) bundle and unpack.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import bson
import pytest
from bson.raw_bson import RawBSONDocument

from tests.bundle.conftest import (
    B1_LAST,
    LAST,
    RAW,
    TX,
    AgeKey,
    Scenario,
    Synthetic,
    everything_under,
    fancy_document,
    files_under,
    sha256_file,
    write_age_key,
)
from tests.helpers import unique
from walkit.errors import BundleError, ConfigError
from walkit.home import Home
from walkit.offsite.bundle import (
    AGE_MAGIC,
    Bundle,
    Position,
    build_bundle,
    load_identities,
    parse_recipients,
    read_manifest,
    unpack_bundle,
    verify_bundle,
)
from walkit.restore.dumpnames import dump_stem
from walkit.restore.local import state_at
from walkit.restore.plan import Target
from walkit.restore.snapshot import take_snapshot
from walkit.wal.format import FRAME, Record, Segment, list_segments, read_records, verify


def segment_records(folder: Path, bundle: Bundle) -> list[Record]:
    """Every record of the bundle's unpacked WAL segment (header and seal included)."""
    wal = bundle.manifest["wal"]
    return list(Segment(int(wal["segment"]), folder / wal["member"], True).records())


def unpacked(bundle: Bundle, dest: Path, identities: list | None = None) -> Path:
    unpack_bundle(bundle.path, dest, identities)
    return dest


def is_run_of(needles: list[bytes], haystack: list[bytes]) -> bool:
    """Whether ``needles`` appear in ``haystack`` one after another (a contiguous run)."""
    if not needles or needles[0] not in haystack:
        return False
    start = haystack.index(needles[0])
    return haystack[start : start + len(needles)] == needles


# -- 1. round trip --------------------------------------------------------------------------


def test_the_wal_segment_is_the_local_wal_slice_record_for_record(scenario: Scenario, tmp_path: Path) -> None:
    local_all = [r.raw for r in read_records(scenario.home.wal_dir, kinds=("e", "g", "c"))]
    expected_ranges = {1: (1, B1_LAST), 2: (B1_LAST + 1, LAST)}
    for bundle in (scenario.b1, scenario.b2):
        wal = bundle.manifest["wal"]
        first, last = expected_ranges[bundle.index]
        assert (wal["first_seq"], wal["last_seq"]) == (first, last)
        records = segment_records(unpacked(bundle, tmp_path / f"b{bundle.index}"), bundle)
        header, body, seal = records[0], records[1:-1], records[-1]
        assert header.kind == "h" and seal.kind == "s" and all(r.kind in ("e", "g", "c") for r in body)
        assert header.get("segment") == bundle.index and header.get("first_seq") == first and header.get("prev") == wal["prev"]
        assert seal.get("last_seq") == last and seal.get("sha256") == wal["seal"] and seal.get("records") == last - first + 1
        # events and gaps: exactly the local WAL's records of that seq range, the same bytes, in order
        data = [r for r in body if r.kind in ("e", "g")]
        local = list(read_records(scenario.home.wal_dir, from_seq=first, to_seq=last))
        assert [r.seq for r in data] == list(range(first, last + 1))
        assert [r.raw for r in data] == [r.raw for r in local]
        # checkpoints come along unchanged, in their place: the whole body is a run of local records
        assert is_run_of([r.raw for r in body], local_all)
        assert (wal["events"], wal["gaps"], wal["records"]) == (len(data), 0, len(body))
    kinds = [r.event()["operationType"] for r in read_records(scenario.home.wal_dir, from_seq=1, to_seq=B1_LAST)]
    assert {"create", "insert", "update", "delete", "drop"} <= set(kinds)
    tx = [r.event() for r in read_records(scenario.home.wal_dir, from_seq=TX[0], to_seq=TX[1])]
    assert all("txnNumber" in ev and "lsid" in ev for ev in tx) and tx[0]["txnNumber"] == tx[1]["txnNumber"]


def test_the_next_bundle_continues_the_chain_and_the_segments_verify_together(scenario: Scenario, tmp_path: Path) -> None:
    b1, b2 = scenario.b1, scenario.b2
    assert b2.index == b1.index + 1 == 2
    assert b2.manifest["wal"]["first_seq"] == b1.manifest["wal"]["last_seq"] + 1
    assert b2.manifest["wal"]["prev"] == b1.manifest["wal"]["seal"] == b1.position.seal != ""
    assert b1.manifest["wal"]["prev"] == ""  # the first bundle starts the chain
    assert verify_bundle(b2.path, prev=b1.position).id == b2.id
    with pytest.raises(BundleError, match="chain"):
        verify_bundle(b2.path, prev=Position())  # b2 does not start a chain
    with pytest.raises(BundleError, match="chain"):
        verify_bundle(b1.path, prev=b2.position)  # wrong order
    folder = tmp_path / "both"
    unpack_bundle(b1.path, folder, snapshot=False)
    unpack_bundle(b2.path, folder, snapshot=False)
    assert files_under(folder) == ["wal/seg-00000001.wal.zst", "wal/seg-00000002.wal.zst"]
    report = verify(folder / "wal")
    assert report.ok, [str(p) for p in report.problems]
    assert (report.first_seq, report.last_seq, report.events, report.gaps, len(report.segments)) == (1, LAST, LAST, 0, 2)
    # without the second bundle, the third does not chain on: verify says which segment is missing
    gap = tmp_path / "gap"
    unpack_bundle(b1.path, gap, snapshot=False)
    unpack_bundle(scenario.empty.path, gap)
    problems = [str(p) for p in verify(gap / "wal").problems]
    assert any("segment 00000002 is missing" in p for p in problems), problems


def test_the_snapshot_comes_back_byte_identical(scenario: Scenario, tmp_path: Path) -> None:
    dest = unpacked(scenario.b1, tmp_path / "dest")
    local = scenario.snapshot.path
    names = files_under(local)
    assert "manifest.json" in names and f"{scenario.db}/{scenario.collections[0]}.bson" in names
    assert files_under(dest / "snapshot") == names
    for rel in names:
        assert (dest / "snapshot" / rel).read_bytes() == (local / rel).read_bytes(), rel
    assert scenario.b1.manifest["snapshot"]["id"] == scenario.snapshot.id
    assert scenario.b2.manifest["snapshot"] is None and not any(n.startswith("snapshot/") for n in scenario.b2.manifest["members"])
    # snapshot=False leaves the snapshot in the archive
    unpack_bundle(scenario.b1.path, tmp_path / "nosnap", snapshot=False)
    assert files_under(tmp_path / "nosnap") == ["wal/seg-00000001.wal.zst"]


def test_a_bundle_with_nothing_new_is_empty_and_still_chains(scenario: Scenario, tmp_path: Path) -> None:
    after = scenario.b2.position
    again = [build_bundle(scenario.home, tmp_path, after=after) for _ in range(2)]  # twice in a row, same position
    for bundle in (scenario.empty, *again):
        wal = bundle.manifest["wal"]
        assert bundle.empty and bundle.index == 3
        assert (wal["records"], wal["events"], wal["gaps"]) == (0, 0, 0)
        assert (wal["first_seq"], wal["last_seq"]) == (LAST + 1, LAST) and wal["prev"] == after.seal
        assert verify_bundle(bundle.path, prev=after).index == 3
        assert bundle.position.last_seq == LAST and bundle.position.seal == wal["seal"]
    assert not scenario.b1.empty and not scenario.b2.empty
    assert len({b.path for b in again}) == 2 and sorted(p.name for p in tmp_path.iterdir()) == sorted(b.path.name for b in again)


def test_bson_types_survive_bundle_unpack_and_replay(scenario: Scenario, tmp_path: Path) -> None:
    restored = Home(tmp_path / "restored")
    for bundle in (scenario.b1, scenario.b2):
        unpack_bundle(bundle.path, restored.path)
    (restored.path / "snapshots").mkdir()
    (restored.path / "snapshot").rename(restored.path / "snapshots" / scenario.snapshot.id)
    target = Target("seq", LAST)
    from_bundles = state_at(restored, target)
    assert from_bundles == state_at(scenario.home, target)
    orders, fancy, scratch = (f"{scenario.db}.{c}" for c in scenario.collections)
    assert sorted(from_bundles[orders]) == scenario.server_docs[orders]
    assert sorted(from_bundles[fancy]) == scenario.server_docs[fancy]
    assert not from_bundles.get(scratch)  # dropped
    by_id = {RawBSONDocument(raw)["_id"]: raw for raw in from_bundles[fancy]}
    for _id in scenario.fancy_ids:  # one from the snapshot, one replayed from the WAL
        assert by_id[_id] == bson.encode(fancy_document(_id)), _id
    ids = {RawBSONDocument(raw, RAW)["_id"] for raw in from_bundles[orders]}
    assert {100, 200} <= ids and not {2, 5} & ids  # the transaction's insert and the late one; the deletes


def test_a_bundle_is_written_under_a_temporary_name_and_named_by_its_id(scenario: Scenario, tmp_path: Path) -> None:
    bundle = build_bundle(scenario.home, tmp_path, snapshot=scenario.snapshot)
    assert everything_under(tmp_path) == [bundle.path.name]  # no .tmp-* or check folders left
    assert bundle.path.name == f"walkit-{bundle.id}.tar" and f"-{bundle.index:06d}-" in bundle.id
    assert bundle.size == bundle.path.stat().st_size and bundle.sha256 == sha256_file(bundle.path)
    assert read_manifest(bundle.path).manifest == bundle.manifest
    named = build_bundle(scenario.home, tmp_path / "sub" / "chosen.tar")
    assert named.path == tmp_path / "sub" / "chosen.tar" and named.path.is_file()


# -- 2. encryption ----------------------------------------------------------------------------


def test_an_encrypted_bundle_shows_nothing_but_the_age_header(scenario: Scenario, encrypted: Bundle) -> None:
    data = encrypted.path.read_bytes()
    assert encrypted.encrypted and encrypted.path.name.endswith(".tar.age")
    assert data.startswith(b"age-encryption.org/v1") and data.startswith(AGE_MAGIC)
    plain = scenario.b1.path.read_bytes()
    secrets = [scenario.marker, scenario.db, *scenario.collections, "MANIFEST.json", "snapshot/", scenario.snapshot.id]
    assert scenario.db.encode() in plain and b"MANIFEST.json" in plain  # the search finds them where they are in clear
    for needle in secrets:
        assert needle.encode() not in data, needle
    for bundle in (encrypted, scenario.b1, scenario.b2):
        meta = bundle.metadata()
        text = json.dumps(meta)
        for needle in (scenario.marker, scenario.db, *scenario.collections, "fancy-in", "Zoë"):
            assert needle not in text, (needle, meta)
        assert meta["encrypted"] is bundle.encrypted and meta["sha256"] == sha256_file(bundle.path) and meta["size"] == bundle.path.stat().st_size
        assert {"first_seq", "last_seq", "prev", "seal", "index", "id"} <= set(meta)


def test_an_encrypted_bundle_opens_with_its_identity(scenario: Scenario, encrypted: Bundle, age_key: AgeKey, tmp_path: Path) -> None:
    keys = load_identities(age_key.keyfile)
    assert len(keys) == 1
    checked = verify_bundle(encrypted.path, keys)
    assert checked.encrypted and checked.manifest == encrypted.manifest
    assert read_manifest(encrypted.path, keys).manifest == encrypted.manifest
    dest = unpacked(encrypted, tmp_path / "dest", keys)
    for rel in files_under(scenario.snapshot.path):
        assert (dest / "snapshot" / rel).read_bytes() == (scenario.snapshot.path / rel).read_bytes(), rel
    orders = dest / "snapshot" / scenario.db / f"{scenario.collections[0]}.bson"
    assert scenario.marker.encode() in orders.read_bytes()  # the values are in there, only encrypted
    data = [r.raw for r in segment_records(dest, encrypted) if r.kind in ("e", "g")]
    assert data == [r.raw for r in read_records(scenario.home.wal_dir)] and len(data) == LAST
    top = {p.split("/")[0] for p in everything_under(dest)}
    assert top == {"wal", "snapshot"}  # no decrypted copy of the tar left behind


def test_an_encrypted_bundle_does_not_open_without_its_identity(encrypted: Bundle, tmp_path: Path) -> None:
    wrong = write_age_key(tmp_path / "other-key.txt")
    before = sorted(os.listdir(encrypted.path.parent))
    for identities in (None, [], [wrong.identity], load_identities(wrong.keyfile)):
        for attempt in (verify_bundle, read_manifest):
            with pytest.raises(BundleError) as info:
                attempt(encrypted.path, identities)
            assert "WALKIT_AGE_IDENTITY" in str(info.value) and encrypted.path.name in str(info.value)
        dest = tmp_path / "dest"
        with pytest.raises(BundleError, match="WALKIT_AGE_IDENTITY"):
            unpack_bundle(encrypted.path, dest, identities)
        assert everything_under(dest) == []
    assert sorted(os.listdir(encrypted.path.parent)) == before  # no scratch left beside the bundle


def test_several_recipients_each_can_open_it(scenario: Scenario, tmp_path: Path) -> None:
    alice, bob = write_age_key(tmp_path / "alice.txt"), write_age_key(tmp_path / "bob.txt")
    recipients = parse_recipients(f"{alice.public}, {bob.public}")
    assert len(recipients) == 2 and len(parse_recipients(f"{alice.public}\n{bob.public}")) == 2
    bundle = build_bundle(scenario.home, tmp_path / "out", after=scenario.b1.position, recipients=recipients)
    for key in (alice, bob):
        assert verify_bundle(bundle.path, load_identities(key.keyfile), prev=scenario.b1.position).manifest == bundle.manifest


def test_bad_age_keys_are_config_errors_naming_the_variable(tmp_path: Path) -> None:
    for text in ("age1notakey", "AGE-SECRET-KEY-1XYZ", "ssh-ed25519 AAAA"):
        with pytest.raises(ConfigError, match="WALKIT_AGE_RECIPIENT"):
            parse_recipients(text)
    assert parse_recipients("") == [] and parse_recipients(" , ") == []
    empty = tmp_path / "empty.txt"
    empty.write_text("# created: now\n# public key: age1...\n")
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("# a comment\nnot a key\n")
    for path, words in ((empty, "no age secret key"), (garbage, "line 2"), (tmp_path / "missing.txt", "cannot read")):
        with pytest.raises(ConfigError) as info:
            load_identities(path)
        assert "WALKIT_AGE_IDENTITY" in str(info.value) and words in str(info.value) and str(path) in str(info.value)


# -- 3. slicing the local WAL ----------------------------------------------------------------


def first_seqs(home: Home) -> list[tuple[Segment, int]]:
    """Each local segment with its header's first_seq."""
    out = []
    for seg in list_segments(home.wal_dir).segments:
        header = next(iter(seg.records()))
        assert header.kind == "h"
        out.append((seg, int(header.get("first_seq"))))
    return out


def test_bundles_slice_a_multi_segment_wal_with_a_gap(synthetic: Synthetic, tmp_path: Path) -> None:
    segments = list_segments(synthetic.home.wal_dir).segments
    assert len(segments) >= 6 and all(s.sealed for s in segments[:-1]) and not segments[-1].sealed
    first = synthetic.first
    assert (first.manifest["wal"]["first_seq"], first.manifest["wal"]["last_seq"], first.manifest["wal"]["gaps"]) == (1, 100, 0)
    second = build_bundle(synthetic.home, tmp_path / "out", after=first.position)
    wal = second.manifest["wal"]
    assert (wal["first_seq"], wal["last_seq"], wal["events"], wal["gaps"]) == (101, 201, 100, 1)
    assert wal["last_ct"] == {"t": 1_767_225_600 + 202, "i": 1}  # the checkpoint after the last event came along
    assert verify_bundle(second.path, prev=first.position).index == 2
    folder = tmp_path / "unpacked"
    for bundle in (first, second):
        unpack_bundle(bundle.path, folder)
    records = [r.raw for seg in list_segments(folder / "wal").segments for r in seg.records() if r.kind in ("e", "g")]
    assert records == [r.raw for r in read_records(synthetic.home.wal_dir)]
    report = verify(folder / "wal")
    assert report.ok and (report.events, report.gaps, report.last_seq) == (200, 1, 201), [str(p) for p in report.problems]
    third = build_bundle(synthetic.home, tmp_path / "out", after=second.position)
    assert third.empty and third.manifest["wal"]["records"] == 0  # the checkpoint is not sent twice


def test_the_writers_unfinished_tail_is_left_out(synthetic: Synthetic, tmp_path: Path) -> None:
    home = synthetic.clone(tmp_path / "home")
    last = list_segments(home.wal_dir).segments[-1]
    assert not last.sealed
    with last.path.open("ab") as f:
        f.write(FRAME.pack(300, 0) + b"\x07" * 40)  # a record cut off by a crash
    bundle = build_bundle(home, tmp_path / "out", after=synthetic.first.position)
    assert bundle.manifest["wal"]["last_seq"] == 201
    assert verify_bundle(bundle.path, prev=synthetic.first.position).manifest == bundle.manifest


def test_pruned_segments_before_the_position_do_not_matter_but_after_it_they_do(synthetic: Synthetic, tmp_path: Path) -> None:
    home = synthetic.clone(tmp_path / "home")
    segments = first_seqs(home)
    holding = max(i for i, (_, first) in enumerate(segments) if first <= 101)  # the segment that holds seq 101
    for seg, _ in segments[:holding]:
        seg.path.unlink()
    bundle = build_bundle(home, tmp_path / "out", after=synthetic.first.position)
    assert (bundle.manifest["wal"]["first_seq"], bundle.manifest["wal"]["last_seq"]) == (101, 201)
    segments[holding][0].path.unlink()
    out = tmp_path / "out2"
    out.mkdir()
    with pytest.raises(BundleError, match="no longer holds seq 101"):
        build_bundle(home, out, after=synthetic.first.position)
    with pytest.raises(BundleError, match="jumps from seq 0"):
        build_bundle(home, out)  # from the start: the WAL's beginning is gone
    assert list(out.iterdir()) == []


def _cut(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip(path: Path, offset: int, mask: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset if offset >= 0 else len(data) // 2] ^= mask
    path.write_bytes(bytes(data))


LOCAL_DAMAGE: dict[str, tuple[int, Callable[[Path], None]]] = {
    # name: (which sealed segment after the position: 0 the first, -1 the last), damage
    "a sealed segment cut short in the middle": (0, lambda p: _cut(p, 0.5)),
    "the last sealed segment cut short": (-1, lambda p: _cut(p, 0.66)),
    "a sealed segment emptied": (0, lambda p: _cut(p, 0)),
    "a sealed segment whose zstd header is broken": (0, lambda p: _flip(p, 1, 0xFF)),
    "a changed bit inside a sealed segment": (0, lambda p: _flip(p, -1, 0x01)),
}


@pytest.mark.parametrize("case", list(LOCAL_DAMAGE))
def test_damage_in_the_local_wal_stops_the_build_naming_the_segment(synthetic: Synthetic, tmp_path: Path, case: str) -> None:
    """A damaged local segment must not become a bundle: BundleError naming that segment,
    and nothing is written (walkit.wal.format.verify reports each of these as damage)."""
    home = synthetic.clone(tmp_path / "home")
    which, damage = LOCAL_DAMAGE[case]
    after = [seg for seg, first in first_seqs(home) if first > 101 and seg.sealed]
    assert len(after) >= 2
    target = after[which]
    damage(target.path)
    assert not verify(home.wal_dir).ok
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BundleError) as info:
        build_bundle(home, out, after=synthetic.first.position)
    assert str(info.value).startswith(target.name), f"{target.name} damaged ({case}); the build said: {info.value}"
    assert list(out.iterdir()) == []


# -- 4. names ---------------------------------------------------------------------------------

AWKWARD = {
    "long": "c" * 110,  # a member name beyond tar's 100 characters
    "unicode": "Zoë ✓ 日本",
    "space and dots": "sp ace.with.dots",
    "backslash": "back\\slash",  # legal in MongoDB collection names
    "escaped": "50%off a?b,c;d",  # mongodump escapes these in file names
    "cut": "%" * 90,  # escaped beyond 238 bytes: mongodump cuts it and adds a hash
}


@pytest.mark.parametrize("kind", list(AWKWARD))
def test_a_snapshot_of_awkwardly_named_collections_bundles_and_unpacks(mongo_uri: str, tmp_path: Path, kind: str) -> None:
    import pymongo

    name = AWKWARD[kind]
    home = Home(tmp_path / "home").create()
    with pymongo.MongoClient(mongo_uri) as client:
        db = client[unique("names")]
        try:
            db[name].insert_one({"_id": 1, "name": name})
            snap = take_snapshot(mongo_uri, home, database=db.name, progress=False)
        finally:
            client.drop_database(db.name)
    (entry,) = snap.collections
    assert entry.name == name
    out = tmp_path / "out"
    out.mkdir()
    bundle = build_bundle(home, out, snapshot=snap)
    assert entry.file == f"{db.name}/{dump_stem(name)}.bson"  # mongodump's file name
    assert f"snapshot/{db.name}/{dump_stem(name)}.bson.zst" in bundle.manifest["members"]
    dest = tmp_path / "dest"
    verify_bundle(bundle.path)
    unpack_bundle(bundle.path, dest)
    for rel in files_under(snap.path):
        assert (dest / "snapshot" / rel).read_bytes() == (snap.path / rel).read_bytes(), rel
