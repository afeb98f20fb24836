"""Shared bits of the provider tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from walkit.offsite.bundle import sha256_file as sha256_of  # noqa: F401 - re-exported for the provider tests

REPO = Path(__file__).resolve().parents[2]
BIG = 20 * 1024 * 1024


@dataclass(frozen=True)
class S3Endpoint:
    """A moto S3 server with one bucket, and the s3fs options that reach it."""

    endpoint_url: str
    bucket: str

    @property
    def options(self) -> dict[str, Any]:
        return {
            "key": "walkit-test-key",
            "secret": "walkit-test-secret",
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
        }

    def url(self) -> str:
        """A fresh prefix in the bucket, so tests never see each other's objects."""
        return f"s3://{self.bucket}/t-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class BigFile:
    path: Path
    size: int
    sha256: str


def python(code: str, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``python -c code args...`` in the repository (a separate process)."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen
    )


def kill_mid_upload(child: subprocess.Popen[bytes], fifo: Path, partial_dir: Path, timeout: float = 20.0) -> None:
    """Feed ``child`` (reading its upload from ``fifo``) until a temp file in ``partial_dir``
    holds at least 1 MiB, then SIGKILL it: it dies in the middle of the upload."""
    deadline = time.monotonic() + timeout
    fd = -1
    try:
        while fd < 0:  # open the FIFO once the child has opened it for reading
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                if child.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"the uploading child did not start: {child.communicate()[1].decode()[-2000:]}"
                    ) from None
                time.sleep(0.01)
        os.set_blocking(fd, True)
        os.write(fd, b"\x01" * (3 << 20))  # returns once the child has read (almost) all of it
        while not any(
            p.name.startswith(".") and ".tmp-" in p.name and p.stat().st_size >= 1 << 20 for p in partial_dir.iterdir()
        ):
            assert time.monotonic() < deadline, "no half-written temp file appeared"
            assert child.poll() is None, child.communicate()[1].decode()[-2000:]
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if fd >= 0:
            os.close(fd)
        if child.poll() is None:
            child.kill()
            child.wait(10)
