"""The walkit command: help everywhere, clear one-line errors, a working demo."""

from __future__ import annotations

import subprocess
import sys

import pytest

from walkit.cli import build_parser, main
from walkit.sandbox import Sandbox


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in _subcommands():
        assert name in out


@pytest.mark.parametrize("name", _subcommands())
def test_every_command_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: walkit {name}")
    assert len(out.splitlines()) > 3


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: walkit" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["sandbox", "--port", "http"], ["sandbox", "--port", "70000"], ["sandbox", "--oplog-size", "0"]])
def test_bad_arguments_exit_2_with_a_clear_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "walkit sandbox: error:" in err


def test_demo_sees_every_change_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "all 13 changes arrived" in out
    assert "[transaction" in out


def test_demo_against_a_given_uri(mongo_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--uri", mongo_uri]) == 0
    assert "using MongoDB at the given URI" in capsys.readouterr().out


@pytest.mark.parametrize("query", ["directConnection=true", "replicaSet=rs0&serverSelectionTimeoutMS=500"])
def test_standalone_server_is_one_clear_sentence_exit_2(query: str) -> None:
    with Sandbox(standalone=True) as box:
        uri = f"mongodb://127.0.0.1:{box.port}/?{query}"
        proc = subprocess.run([sys.executable, "-m", "walkit", "demo", "--uri", uri], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "standalone" in lines[0] and "--replSet" in lines[0] and "rs.initiate()" in lines[0]


def test_unreachable_server_is_one_line_exit_1() -> None:
    from tests.conftest import free_port

    uri = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300&directConnection=true"
    proc = subprocess.run([sys.executable, "-m", "walkit", "demo", "--uri", uri], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("walkit: error: cannot reach MongoDB:")


def test_python_m_walkit_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "walkit", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.startswith("walkit ")
