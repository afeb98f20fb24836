"""Fixtures for the provider tests: an S3 endpoint (moto's server over real HTTP) and a big file."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator

import pytest

from .helpers import BIG, BigFile, S3Endpoint


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    """moto's S3 in server mode on a free port, with fake credentials in the environment."""
    import boto3
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "walkit-test-key")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "walkit-test-secret")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(var, raising=False)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = S3Endpoint(f"http://{host}:{port}", "walkit-backups")
            boto3.client("s3", endpoint_url=endpoint.endpoint_url, region_name="us-east-1").create_bucket(Bucket=endpoint.bucket)
            yield endpoint
        finally:
            server.stop()


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> BigFile:
    """20 MB of incompressible bytes in a file (uploads of it must stream)."""
    path = tmp_path_factory.mktemp("big") / "bundle.bin"
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(BIG // (1 << 20)):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    return BigFile(path, BIG, digest.hexdigest())
