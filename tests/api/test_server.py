"""ApiServer and serve(): loopback by default, port 0, clear bind errors, clean stop; and that
``import walkit`` works without the server extra."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from walkit.errors import ConfigError
from walkit.service.api import ApiServer

from .conftest import Api, build_context

ROOT = Path(__file__).resolve().parents[2]


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                raw = bytes.fromhex(addr)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    found.add(socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))))
    return found


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
        except OSError:
            return None
        addr = s.getsockname()[0]
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


def test_binds_loopback_by_default_on_a_free_port(api: Api) -> None:
    server = api.server
    assert server.host == "127.0.0.1"
    assert server.port != 0 and server.url == f"http://127.0.0.1:{server.port}"
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("no /proc/net/tcp to read the listening address from")
    assert listening_addresses(server.port) == {"127.0.0.1"}
    other = non_loopback_address()
    if other is not None:
        with pytest.raises(OSError), socket.create_connection((other, server.port), timeout=2):
            pass


def test_bind_failure_names_host_and_port(tmp_path: Path) -> None:
    ctx, _, _ = build_context(tmp_path, None, "unused")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            ApiServer(ctx, port=port).start()
    with pytest.raises(ConfigError, match="cannot listen on no-such-host.invalid:0"):
        ApiServer(ctx, host="no-such-host.invalid", port=0).start()


def test_stop_closes_the_port(make_api: Callable[..., Api]) -> None:
    api = make_api()
    url, port = api.server.url, api.server.port
    assert httpx.get(f"{url}/healthz").status_code == 200
    api.server.stop()
    api.server.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)
    if os.path.exists("/proc/net/tcp"):
        assert listening_addresses(port) == set()


SERVE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from walkit.service.api import ApiContext, serve
    from walkit.home import Home
    from walkit.offsite.quota import QuotaLedger

    home = Home(Path(sys.argv[1])).create()
    ctx = ApiContext(home, QuotaLedger(home.path / "quota"), token=None, snapshot=None, trigger=lambda: None)
    serve(ctx, port=0, on_ready=lambda url: print(url, flush=True))
    print("returned", flush=True)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_returns_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(tmp_path / "home")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.stderr else ""
        assert httpx.get(f"{url}/backup/snapshots").json() == {"snapshots": []}
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.strip() == "returned"
    assert "Traceback" not in err


NO_EXTRA = textwrap.dedent(
    """
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("starlette", "uvicorn"):
                raise ImportError(f"No module named {name!r}")
    sys.meta_path.insert(0, Block())
    import walkit, walkit.service.api
    from walkit.errors import ConfigError
    try:
        walkit.service.api.create_app(None)
    except ConfigError as exc:
        print(exc)
    print("starlette" in sys.modules)
    """
)


def test_import_works_without_the_server_extra() -> None:
    done = subprocess.run([sys.executable, "-c", NO_EXTRA], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["the HTTP API needs the server extra: pip install 'walkit[server]'", "False"]
