"""``walkit bundle`` and ``walkit verify --bundle`` as a user runs them.

Bundles build and verify; several bundles verify as a chain only in their order;
damage is one clean error line (exit 1); encryption follows WALKIT_AGE_RECIPIENT and
decryption WALKIT_AGE_IDENTITY or --identity; bad settings exit 2 naming what is wrong.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.bundle.conftest import B1_LAST, LAST, AgeKey, Scenario, copy_bundle, sha256_file, write_age_key
from tests.helpers import one_error_line, walkit
from walkit.offsite.bundle import AGE_MAGIC

WAL_MEMBER = "wal/seg-00000001.wal.zst"
ENV = ("WALKIT_AGE_RECIPIENT", "WALKIT_AGE_IDENTITY", "MONGODB_URI", "WALKIT_HOME", "WALKIT_SNAPSHOT_EVERY_DAYS")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def home(scenario: Scenario, tmp_path: Path) -> Path:
    """A copy of the scenario's home (captured with the Python API: it has a WAL and a snapshot)."""
    path = tmp_path / "home"
    shutil.copytree(scenario.home.path, path, ignore=shutil.ignore_patterns("writer.lock"))
    return path


def ok_lines(result: subprocess.CompletedProcess[str], count: int) -> list[str]:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == count and all(line.startswith("OK  ") for line in lines), lines
    return lines


def test_bundle_then_verify(scenario: Scenario, home: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundles" / "today.tar"
    built = walkit("bundle", "--home", str(home), "--out", str(out))
    assert built.returncode == 0, built.stderr
    assert "Traceback" not in built.stderr
    assert f"written to {out}" in built.stdout and "nothing was sent" in built.stdout
    assert f"seq 1..{LAST}" in built.stdout and f"snapshot {scenario.snapshot.id}" in built.stdout and "not encrypted" in built.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["today.tar"]  # no temporary file left
    with tarfile.open(out) as tar:
        assert tar.getnames()[-1] == "MANIFEST.json"
    (line,) = ok_lines(walkit("verify", "--bundle", str(out)), 1)
    assert str(out) in line and "bundle 1" in line and f"seq 1..{LAST}" in line and scenario.snapshot.id in line and "encrypted" not in line
    # --json: the metadata the provider would get, naming no database or collection
    as_json = walkit("bundle", "--home", str(home), "--out", str(tmp_path / "bundles"), "--json")
    assert as_json.returncode == 0, as_json.stderr
    meta = json.loads(as_json.stdout)
    assert (meta["first_seq"], meta["last_seq"], meta["encrypted"]) == (1, LAST, False)
    assert (tmp_path / "bundles" / meta["name"]).is_file() and meta["sha256"] == sha256_file(tmp_path / "bundles" / meta["name"])
    for secret in (scenario.db, *scenario.collections, scenario.marker):
        assert secret not in as_json.stdout


def test_verify_a_chain_in_order_and_out_of_order(scenario: Scenario, tmp_path: Path) -> None:
    a, b, c = (copy_bundle(x, tmp_path, name) for x, name in ((scenario.b1, "a.tar"), (scenario.b2, "b.tar"), (scenario.empty, "c.tar")))
    lines = ok_lines(walkit("verify", "--bundle", str(a), str(b), str(c)), 3)
    assert "bundle 1" in lines[0] and f"seq 1..{B1_LAST}" in lines[0] and "bundle 2" in lines[1] and f"seq {B1_LAST + 1}..{LAST}" in lines[1]
    assert "bundle 3" in lines[2]
    swapped = walkit("verify", "--bundle", str(b), str(a))
    line = one_error_line(swapped, 1)
    assert "a.tar" in line and "chain" in line
    assert swapped.stdout.startswith("OK  ") and "b.tar" in swapped.stdout  # b alone is fine; a does not follow it
    line = one_error_line(walkit("verify", "--bundle", str(a), str(c)), 1)  # b is missing in between
    assert "c.tar" in line and "chain" in line and "missing" in line


def test_verify_a_damaged_bundle(scenario: Scenario, tmp_path: Path) -> None:
    path = copy_bundle(scenario.b1, tmp_path, "damaged.tar")
    data = bytearray(path.read_bytes())
    data[600] ^= 0x01  # inside the WAL member's data
    path.write_bytes(bytes(data))
    line = one_error_line(walkit("verify", "--bundle", str(path)), 1)
    assert "damaged.tar" in line and WAL_MEMBER in line and ("damaged" in line or "altered" in line) and "unexpected" not in line
    # cut short anywhere: in a member's header, in the WAL member's data or its padding, in a snapshot member, in
    # MANIFEST.json.  Each is one clean error naming the file, never the catch-all for a walkit bug ("unexpected
    # <exception> ... this is a walkit bug"); tarfile's own "unexpected end of data" may be quoted in it.
    whole = scenario.b1.path.read_bytes()
    with tarfile.open(scenario.b1.path) as tar:
        infos = tar.getmembers()
    wal, snap, manifest = infos[0], infos[1], infos[-1]
    assert (wal.name, manifest.name) == (WAL_MEMBER, "MANIFEST.json") and snap.name.startswith("snapshot/")
    padding = -wal.size % 512
    cuts = {
        100, wal.offset_data + wal.size // 2, snap.offset + 200, snap.offset_data + snap.size // 2, manifest.offset + 100,
        manifest.offset_data + manifest.size // 2, *([wal.offset_data + wal.size + padding // 2] if padding > 1 else []),
    }
    cut = tmp_path / "cut.tar"
    for at in sorted(cuts):
        cut.write_bytes(whole[:at])
        line = one_error_line(walkit("verify", "--bundle", str(cut)), 1)
        assert "cut.tar" in line and "walkit bug" not in line and not line.startswith("walkit: error: unexpected"), (at, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tar", "damaged.tar"]  # no scratch left beside them


def test_encrypted_bundle_through_the_environment_and_identity_option(scenario: Scenario, home: Path, age_key: AgeKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "secret.tar.age"
    monkeypatch.setenv("WALKIT_AGE_RECIPIENT", age_key.public)
    built = walkit("bundle", "--home", str(home), "--out", str(out))
    assert built.returncode == 0, built.stderr
    assert "encrypted (age)" in built.stdout
    data = out.read_bytes()
    assert data.startswith(AGE_MAGIC) and scenario.db.encode() not in data and b"MANIFEST.json" not in data
    monkeypatch.delenv("WALKIT_AGE_RECIPIENT")

    line = one_error_line(walkit("verify", "--bundle", str(out)), 1)  # no identity
    assert "WALKIT_AGE_IDENTITY" in line and "secret.tar.age" in line
    monkeypatch.setenv("WALKIT_AGE_IDENTITY", str(age_key.keyfile))
    (line,) = ok_lines(walkit("verify", "--bundle", str(out)), 1)
    assert line.endswith(", encrypted") and f"seq 1..{LAST}" in line
    wrong = write_age_key(tmp_path / "wrong.txt")
    monkeypatch.setenv("WALKIT_AGE_IDENTITY", str(wrong.keyfile))
    line = one_error_line(walkit("verify", "--bundle", str(out)), 1)
    assert "WALKIT_AGE_IDENTITY" in line and "decrypt" in line
    (line,) = ok_lines(walkit("verify", "--bundle", str(out), "--identity", str(age_key.keyfile)), 1)  # the option wins
    assert line.endswith(", encrypted")
    monkeypatch.delenv("WALKIT_AGE_IDENTITY")
    line = one_error_line(walkit("verify", "--bundle", str(out), "--identity", str(tmp_path / "nokey.txt")), 2)
    assert "nokey.txt" in line and "cannot read" in line


def test_a_bad_recipient_is_a_usage_error_naming_the_variable(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "b.tar"
    monkeypatch.setenv("WALKIT_AGE_RECIPIENT", "age1thisisnotakey")
    line = one_error_line(walkit("bundle", "--home", str(home), "--out", str(out)), 2)
    assert "WALKIT_AGE_RECIPIENT" in line and "age-keygen" in line
    assert not out.exists() and not (home / "bundles").exists()
    monkeypatch.delenv("WALKIT_AGE_RECIPIENT")
    line = one_error_line(walkit("bundle", "--home", str(home), "--out", str(out), "--recipient", "ssh-rsa AAAA"), 2)
    assert "not an age public key" in line and not out.exists()


def test_bundle_refuses_to_overwrite_and_needs_a_wal(home: Path, tmp_path: Path) -> None:
    existing = tmp_path / "existing.tar"
    existing.write_bytes(b"precious")
    line = one_error_line(walkit("bundle", "--home", str(home), "--out", str(existing)), 2)
    assert "existing.tar" in line and "already exists" in line
    assert existing.read_bytes() == b"precious"
    empty_home = tmp_path / "empty-home"
    empty_home.mkdir()
    line = one_error_line(walkit("bundle", "--home", str(empty_home), "--out", str(tmp_path / "x.tar")), 2)
    assert "no WAL" in line and not (tmp_path / "x.tar").exists()


def test_verify_a_bundle_that_is_not_there(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.tar", tmp_path / "no-such-folder" / "missing.tar"):
        line = one_error_line(walkit("verify", "--bundle", str(path)), 1)
        assert "no such bundle file" in line and "unexpected" not in line, line
