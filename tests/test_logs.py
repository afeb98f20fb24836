"""Structured logs: one JSON object per line off a terminal, secrets scrubbed."""

from __future__ import annotations

import io
import json
import logging

import pytest

from walkit.service.logs import setup_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    """setup_logging changes the process's ``walkit`` logger: undo it for the other tests."""
    root = logging.getLogger("walkit")
    saved = (list(root.handlers), root.level, root.propagate)
    top = list(logging.getLogger().handlers)
    yield
    root.handlers[:], root.level, root.propagate = saved
    logging.getLogger().handlers[:] = top


def test_json_lines_carry_extra_fields_and_no_secrets() -> None:
    out = io.StringIO()
    setup_logging("auto", "info", secrets=["hunter22-token"], stream=out)  # a StringIO is not a terminal: JSON
    log = logging.getLogger("walkit.test")
    log.info("connected to %s", "mongodb://app:pa55word@db:27017/?replicaSet=rs0", extra={"seq": 7})
    log.warning("token was hunter22-token")
    log.debug("not written at info")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    try:
        raise RuntimeError("cannot reach mongodb://app:pa55word@db:27017 with hunter22-token")
    except RuntimeError:
        log.error("with extras", exc_info=True, extra={"uri": "mongodb://x:pa55word@h/"})
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [entry["level"] for entry in lines] == ["info", "warning", "error", "error"]
    assert lines[0]["seq"] == 7 and lines[0]["logger"] == "walkit.test" and lines[0]["ts"].endswith("+00:00")
    assert "pa55word" not in out.getvalue() and "hunter22-token" not in out.getvalue()
    assert "mongodb://app:***@db:27017" in lines[0]["msg"]
    assert lines[2]["error"] == "ValueError: boom" and "Traceback" not in out.getvalue()
    assert lines[3]["uri"] == "mongodb://x:***@h/" and "RuntimeError" in lines[3]["error"]  # extras and exception text too


def test_text_format_and_calling_again_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("text", "warning", stream=first)
    setup_logging("text", "warning", stream=second)
    logging.getLogger("walkit.x").warning("once")
    assert first.getvalue() == "" and second.getvalue().count("once") == 1
    assert not second.getvalue().startswith("{")


def test_text_tracebacks_are_scrubbed_too() -> None:
    out = io.StringIO()
    setup_logging("text", "info", secrets=["tok-abcdefgh"], stream=out)
    try:
        raise RuntimeError("tok-abcdefgh at mongodb://u:pw9876@h/")
    except RuntimeError:
        logging.getLogger("walkit.t").exception("failed")
    assert "Traceback" in out.getvalue() and "tok-abcdefgh" not in out.getvalue() and "pw9876" not in out.getvalue()


def test_other_libraries_warnings_come_out_the_same_way() -> None:
    out = io.StringIO()
    setup_logging("json", "info", secrets=["tok-abcdefgh"], stream=out)
    logging.getLogger("uvicorn.error").warning("bad request with tok-abcdefgh")
    line = json.loads(out.getvalue().splitlines()[-1])
    assert line["logger"] == "uvicorn.error" and "tok-abcdefgh" not in line["msg"]
