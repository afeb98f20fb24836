"""Test set-up shared by every test.

Server tests get a ``mongodb://`` URI from the ``mongo_uri`` fixture: the
server named by ``$MONGODB_URI``, else a fresh ``mongod`` replica set when
``mongod`` is on PATH, else the embedded sandbox.  The session header says
which one ran.  HOME and the Jupyter/IPython/matplotlib folders point at a
temporary directory so a run leaves nothing behind on the machine.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

import pymongo
import pytest

_TMP_HOME = tempfile.mkdtemp(prefix="walkit-tests-home-")
atexit.register(shutil.rmtree, _TMP_HOME, True)
for _var, _sub in {
    "HOME": "",
    "JUPYTER_CONFIG_DIR": "jupyter/config",
    "JUPYTER_DATA_DIR": "jupyter/data",
    "JUPYTER_RUNTIME_DIR": "jupyter/runtime",
    "IPYTHONDIR": "ipython",
    "MPLCONFIGDIR": "mpl",
}.items():
    os.environ[_var] = os.path.join(_TMP_HOME, _sub)
os.environ.pop("WALKIT_HOME", None)


def server_kind() -> str:
    """Which server the tests run against: 'MONGODB_URI', 'mongod' or 'sandbox'."""
    if os.environ.get("MONGODB_URI"):
        return "MONGODB_URI"
    if shutil.which("mongod"):
        return "mongod"
    return "sandbox"


def pytest_report_header(config: pytest.Config) -> str:
    kind = server_kind()
    detail = {
        "MONGODB_URI": "the server named by $MONGODB_URI",
        "mongod": f"a fresh mongod replica set ({shutil.which('mongod')})",
        "sandbox": "the embedded walkit sandbox (no mongod on PATH, no $MONGODB_URI)",
    }[kind]
    return f"walkit server tests run against: {detail}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_mongod(tmp: str) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    proc = subprocess.Popen(
        ["mongod", "--replSet", "rs0", "--port", str(port), "--dbpath", tmp, "--bind_ip", "127.0.0.1", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        direct = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=30_000)
        direct.admin.command("ping")
        direct.admin.command("replSetInitiate", {"_id": "rs0", "members": [{"_id": 0, "host": f"127.0.0.1:{port}"}]})
        deadline = time.monotonic() + 60
        while not direct.admin.command("hello").get("isWritablePrimary"):
            if time.monotonic() > deadline:
                raise RuntimeError("mongod did not become primary within 60 s")
            time.sleep(0.2)
        direct.close()
    except BaseException:
        proc.kill()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return f"mongodb://127.0.0.1:{port}/?replicaSet=rs0", proc


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    """A MongoDB replica set URI (real server when available, else the sandbox)."""
    kind = server_kind()
    if kind == "MONGODB_URI":
        yield os.environ["MONGODB_URI"]
    elif kind == "mongod":
        tmp = tempfile.mkdtemp(prefix="walkit-mongod-")
        uri, proc = _start_mongod(tmp)
        try:
            yield uri
        finally:
            proc.terminate()
            proc.wait(30)
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        from walkit.sandbox import Sandbox

        with Sandbox() as box:
            yield box.uri


@pytest.fixture(scope="session")
def client(mongo_uri: str) -> Iterator[pymongo.MongoClient]:
    c: pymongo.MongoClient = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000)
    yield c
    c.close()


@pytest.fixture
def db(client: pymongo.MongoClient) -> Iterator[pymongo.database.Database]:
    """A fresh, uniquely named database, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield client[name]
    client.drop_database(name)


@pytest.fixture
def sandbox_uri() -> Iterator[str]:
    """A private in-process sandbox (for tests of the sandbox itself)."""
    from walkit.sandbox import Sandbox

    with Sandbox() as box:
        yield box.uri
