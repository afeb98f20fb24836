"""Commands that read a home refuse one that does not exist (exit 2, naming it) instead of reporting it empty."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import one_error_line, walkit

READERS = [
    ["status"],
    ["status", "--json"],
    ["snapshots"],
    ["snapshots", "--json"],
    ["wal", "ls"],
    ["wal", "show"],
    ["verify"],
    ["restore", "--seq", "1", "--to-dump", "out"],
    ["prune", "--dry-run"],
    ["bundle", "--out", "out"],
]


@pytest.mark.parametrize("argv", READERS, ids=[" ".join(a) for a in READERS])
def test_a_home_that_does_not_exist_is_refused_by_name(tmp_path: Path, argv: list[str]) -> None:
    missing = tmp_path / "no-such-home"
    line = one_error_line(walkit(*argv, "--home", str(missing)), 2)
    assert str(missing) in line, line
    assert not missing.exists(), "a command that reads a home must not create it"
