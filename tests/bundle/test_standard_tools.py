"""A bundle opens with standard tools alone: ``age -d``, ``tar x``, ``zstd -d``.

What they give back is the local snapshot byte for byte (``bson.decode_all`` reads
it), and a WAL segment walkit reads and verifies; ``age-keygen``'s keys and walkit's
key files are interchangeable.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import bson
from bson.codec_options import CodecOptions

from tests.bundle.conftest import LAST, AgeKey, Scenario, fancy_document, files_under
from walkit.offsite.bundle import Bundle, build_bundle, load_identities, parse_recipients, verify_bundle
from walkit.wal.format import Segment, read_records, verify

WAL_MEMBER = "wal/seg-00000001.wal.zst"


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (argv, result.stdout, result.stderr)
    return result


def tar_listing(tar: Path) -> list[tuple[str, int, str]]:
    """``tar tvf``: (name, size, type letter) of each member, in order."""
    out = []
    for line in run("tar", "tvf", str(tar)).stdout.splitlines():
        fields = line.split()
        out.append((fields[-1], int(fields[2]), fields[0][0]))
    return out


def test_tar_lists_the_members_and_the_manifest_last(scenario: Scenario) -> None:
    bundle = scenario.b1
    listing = tar_listing(bundle.path)
    names = [name for name, _, _ in listing]
    assert names[0] == WAL_MEMBER and names[-1] == "MANIFEST.json"
    assert sorted(names[:-1]) == sorted(bundle.manifest["members"])
    for name, size, kind in listing[:-1]:
        assert kind == "-" and size == bundle.manifest["members"][name]["size"], name
    assert any(n.startswith(f"snapshot/{scenario.db}/") and n.endswith(".bson.zst") for n in names)


def test_age_tar_and_zstd_give_back_the_snapshot_and_the_wal(scenario: Scenario, encrypted: Bundle, age_key: AgeKey, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    run("age", "-d", "-i", str(age_key.keyfile), "-o", str(work / "bundle.tar"), str(encrypted.path))
    assert [name for name, _, _ in tar_listing(work / "bundle.tar")][-1] == "MANIFEST.json"
    run("tar", "xf", "bundle.tar", cwd=work)
    (work / "bundle.tar").unlink()
    assert json.loads((work / "MANIFEST.json").read_text()) == encrypted.manifest

    # the snapshot: `zstd -d --rm -r` turns it into the local snapshot folder, byte for byte
    run("zstd", "-d", "-q", "--rm", "-r", "snapshot", cwd=work)
    local = scenario.snapshot.path
    assert files_under(work / "snapshot") == files_under(local)
    for rel in files_under(local):
        assert (work / "snapshot" / rel).read_bytes() == (local / rel).read_bytes(), rel
    orders, fancy = (work / "snapshot" / scenario.db / f"{c}.bson" for c in scenario.collections[:2])
    docs = bson.decode_all(orders.read_bytes())
    assert sorted(d["_id"] for d in docs) == list(range(20)) and all(d["note"] == scenario.marker for d in docs)
    (doc,) = bson.decode_all(fancy.read_bytes(), CodecOptions(tz_aware=True))
    expected = fancy_document("fancy-in-snapshot")
    assert list(doc) == list(expected)
    for key in ("oid", "dec", "i64", "old", "just_before_epoch", "uuid", "code", "ts", "Zoë ✓ 日本", "nested_empty"):
        assert doc[key] == expected[key], key
    assert bson.encode(doc) == fancy.read_bytes()

    # the WAL: `zstd -d` gives a sealed segment walkit reads and verifies
    run("zstd", "-d", "-q", "--rm", WAL_MEMBER, cwd=work)
    segment = work / "wal" / "seg-00000001.wal"
    assert sorted(p.name for p in (work / "wal").iterdir()) == [segment.name]
    records = list(Segment(1, segment, False).records())
    assert records[0].kind == "h" and records[-1].kind == "s"
    assert records[-1].get("sha256") == encrypted.manifest["wal"]["seal"] and records[-1].get("last_seq") == LAST
    assert [r.raw for r in records if r.kind in ("e", "g")] == [r.raw for r in read_records(scenario.home.wal_dir)]
    report = verify(work / "wal")
    assert report.ok and report.torn_tail is None, [str(p) for p in report.problems]
    assert (report.first_seq, report.last_seq, report.events) == (1, LAST, LAST)
    assert report.segments[0].seal_hash == encrypted.manifest["wal"]["seal"]


def test_age_keygen_keys_and_walkit_keys_are_interchangeable(scenario: Scenario, age_key: AgeKey, tmp_path: Path) -> None:
    key = tmp_path / "age-keygen.txt"
    made = run("age-keygen", "-o", str(key))
    public = re.search(r"age1[0-9a-z]+", made.stderr + made.stdout)
    assert public is not None
    assert run("age-keygen", "-y", str(age_key.keyfile)).stdout.strip() == age_key.public  # walkit's file reads as age's
    bundle = build_bundle(scenario.home, tmp_path / "out", after=scenario.b1.position, recipients=parse_recipients(f"{public.group(0)} {age_key.public}"))
    assert verify_bundle(bundle.path, load_identities(key), prev=scenario.b1.position).manifest == bundle.manifest
    for keyfile in (key, age_key.keyfile):
        plain = tmp_path / f"{keyfile.stem}.tar"
        run("age", "-d", "-i", str(keyfile), "-o", str(plain), str(bundle.path))
        assert [name for name, _, _ in tar_listing(plain)] == [*sorted(bundle.manifest["members"]), "MANIFEST.json"]
