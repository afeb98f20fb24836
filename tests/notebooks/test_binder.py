"""Binder's steps, done here: a fresh virtual environment set up as binder/ says, then
notebook 01 executed through ``binder/start``.

repo2docker installs ``binder/requirements.txt``, runs ``binder/postBuild`` from the
repository's root, and starts every session as ``binder/start CMD``.  The test does the
same in a new venv on a copy of the checkout (so the checkout stays untouched), with
pip's real cache (conftest points HOME at a temporary folder, which would empty it).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from walkit.lab.story import error_outputs, summaries

ROOT = Path(__file__).resolve().parents[2]
COPY = ("pyproject.toml", "README.md", "walkit", "notebooks", "binder")
START_LINE = re.compile(r"^binder/start: MongoDB: (?P<what>.*?)(?:: (?P<uri>mongodb://\S+))?$", re.M)


def _pip_cache() -> str:
    return os.environ.get("PIP_CACHE_DIR") or os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".cache", "pip")


def _env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URI", "JUPYTER_PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    own_bin = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != own_bin]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    env["VIRTUAL_ENV"] = str(venv)
    env["PIP_CACHE_DIR"] = _pip_cache()
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _through_start(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """``binder/start CMD`` in its own process group; the group (the server start left running) is ended after."""
    proc = subprocess.Popen(["binder/start", *cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)  # the group of the process started here: start's server, nothing else
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_binder_environment_runs_notebook_01(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        else:
            repo.mkdir(exist_ok=True)
            shutil.copy2(src, repo / name)
    for script in ("postBuild", "start"):
        assert os.access(repo / "binder" / script, os.X_OK), f"binder/{script} must be executable"
    venv = tmp_path / "venv"
    env = _env(venv)
    timings: dict[str, float] = {}

    t = time.monotonic()
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env, 120)
    _run(["python", "-m", "pip", "install", "--quiet", "-r", "binder/requirements.txt"], repo, env, 600)
    _run(["binder/postBuild"], repo, env, 600)
    timings["install"] = time.monotonic() - t

    # the new environment's walkit is the copy's, and its python3 kernel its own
    where = _run(["python", "-c", "import sys, walkit; print(sys.prefix); print(walkit.__file__)"], repo, env, 60).stdout.split()
    assert Path(where[0]) == venv and Path(where[1]).is_relative_to(repo), where

    t = time.monotonic()
    cmd = ["python", "-m", "papermill", "notebooks/01-strategy.ipynb", str(tmp_path / "out.ipynb"), "-k", "python3", "--no-progress-bar"]
    code, _, err = _through_start(cmd, repo, env, 300)
    timings["notebook 01 through binder/start"] = time.monotonic() - t
    print(f"\nbinder test timings: { {k: round(v, 1) for k, v in timings.items()} }")
    assert code == 0, err[-5000:]

    said = START_LINE.search(err)
    assert said, f"binder/start did not say which MongoDB it used:\n{err[-3000:]}"
    expected = "mongod" if shutil.which("mongod", path=env["PATH"]) else "the walkit sandbox"
    assert said["what"].startswith(expected), said[0]
    uri = said["uri"]
    assert uri, said[0]
    host = re.match(r"mongodb://([^/?]+)", uri)[1]

    nb = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert not error_outputs(nb)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("name") == "stdout")
    assert f"MongoDB from $MONGODB_URI: {host}" in printed, "notebook 01 did not use the MONGODB_URI binder/start exported"
    (summary,) = summaries(nb)
    assert summary["restore_checks"] == summary["restore_checks_passed"] > 0


@pytest.mark.timeout(60)
def test_start_uses_a_given_mongodb_uri(tmp_path: Path) -> None:
    env = dict(os.environ, MONGODB_URI="mongodb://db.example:27017/?replicaSet=rs0")
    code, out, err = _through_start(["sh", "-c", 'printf %s "$MONGODB_URI"'], ROOT, env, 30)
    assert code == 0, err
    assert out == "mongodb://db.example:27017/?replicaSet=rs0"
    assert "binder/start: MongoDB: the server named by $MONGODB_URI" in err


@pytest.mark.timeout(120)
def test_start_falls_back_to_the_sandbox(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}
    own_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([own_bin, *(p for p in env.get("PATH", "").split(os.pathsep) if p and not shutil.which("mongod", path=p))])
    code, out, err = _through_start(["python", "-c", "import os, pymongo; print(pymongo.MongoClient(os.environ['MONGODB_URI']).admin.command('ping')['ok'])"], ROOT, env, 60)
    assert code == 0, err
    said = START_LINE.search(err)
    assert said and said["what"].startswith("the walkit sandbox"), err
    assert out.strip() == "1.0"
