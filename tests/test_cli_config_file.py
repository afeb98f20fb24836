"""Every command honours a TOML file naming the home and the URI (``--config FILE`` or ``$WALKIT_CONFIG``),
with one precedence: defaults < file < environment < options."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymongo
import pytest
from bson import json_util

from tests.helpers import unique


def run(env: dict[str, str], *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "walkit", *argv], capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


@pytest.fixture
def setup(mongo_uri: str, tmp_path: Path) -> tuple[dict[str, str], Path, Path, str]:
    """A config file naming a home, the URI, a database and a filesystem provider; an environment without them."""
    home, offsite = tmp_path / "home-from-file", tmp_path / "offsite"
    db = unique("cfg")
    file = tmp_path / "walkit.toml"
    file.write_text(
        f'[walkit]\nwalkit_home = "{home}"\nmongodb_uri = "{mongo_uri}"\nwalkit_database = "{db}"\n'
        f'backup_use_filesystem = true\nbackup_dir = "{offsite}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WALKIT_", "BACKUP_", "MONGODB_"))}
    env["WALKIT_CONFIG"] = str(file)
    return env, file, home, db


def test_every_command_reads_the_home_and_uri_from_the_file(setup: tuple[dict[str, str], Path, Path, str], mongo_uri: str, tmp_path: Path) -> None:
    env, file, home, db = setup
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_uri)
    try:
        client[db].items.insert_one({"_id": 0})
        r = run(env, "snapshot", "--db", db)
        assert r.returncode == 0, r.stderr
        assert any((home / "snapshots").iterdir()), "the snapshot went into the file's home"
        capture = subprocess.Popen([sys.executable, "-m", "walkit", "capture", "--db", db], env=env, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not any((home / "wal").glob("seg-*")):
                assert time.monotonic() < deadline, "capture did not start in the file's home"
                time.sleep(0.1)
            time.sleep(0.5)
            client[db].items.insert_many([{"_id": i} for i in range(1, 6)])
            time.sleep(1.0)
        finally:
            capture.send_signal(signal.SIGINT)
            assert capture.wait(30) == 0, capture.stderr.read() if capture.stderr else ""
    finally:
        client.drop_database(db)
        client.close()
    listed = run(env, "snapshots", "--json")
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 1, listed.stderr
    for argv in (["wal", "ls"], ["wal", "show"], ["verify"], ["status", "--json"], ["prune", "--dry-run"]):
        r = run(env, *argv)
        assert r.returncode == 0, (argv, r.stderr)
    shown = run(env, "wal", "show", "--json")
    seqs = [int(json_util.loads(line)["seq"]) for line in shown.stdout.splitlines()]
    r = run(env, "restore", "--seq", str(seqs[-1]), "--to-dump", str(tmp_path / "dump"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "dump" / db / "items.bson").stat().st_size > 0
    r = run(env, "bundle", "--out", str(tmp_path / "b.tar"))
    assert r.returncode == 0 and (tmp_path / "b.tar").exists(), r.stderr
    r = run(env, "upload")
    assert r.returncode == 0, r.stderr
    assert any((tmp_path / "offsite").iterdir()), "the upload went to the file's filesystem provider"
    r = run(env, "config")
    assert r.returncode == 0 and f"file {file}" in r.stdout, r.stdout


def test_the_option_and_the_environment_win_over_the_file(setup: tuple[dict[str, str], Path, Path, str], tmp_path: Path) -> None:
    env, file, home, _ = setup
    other = tmp_path / "home-from-env"
    missing = run(dict(env, WALKIT_HOME=str(other)), "snapshots")
    assert missing.returncode == 2 and str(other) in missing.stderr, missing.stderr  # the environment's home, not the file's
    flag = tmp_path / "home-from-flag"
    missing = run(dict(env, WALKIT_HOME=str(other)), "status", "--home", str(flag))
    assert missing.returncode == 2 and str(flag) in missing.stderr, missing.stderr
    env.pop("WALKIT_CONFIG")
    via_flag = run(env, "status", "--config", str(file))
    assert via_flag.returncode == 2 and str(home) in via_flag.stderr, via_flag.stderr  # --config FILE: its home (not created yet)


def test_a_broken_file_is_one_clear_error_for_every_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("walkit_home = \n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WALKIT_", "BACKUP_", "MONGODB_"))}
    for argv in (["snapshots"], ["status"], ["wal", "ls"]):
        r = run(env, *argv, "--config", str(bad))
        assert r.returncode == 2 and "not valid TOML" in r.stderr and "Traceback" not in r.stderr, (argv, r.stderr)
