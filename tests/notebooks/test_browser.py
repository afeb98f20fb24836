"""Notebook 04 in a real browser: headless JupyterLab + Debian's Chromium through Playwright.

JupyterLab serves a temporary copy of notebooks/ (HOME, JUPYTER_*, IPYTHONDIR,
MPLCONFIGDIR and the lab settings in a temporary folder); the test opens
04-restore-explorer.ipynb, runs all cells from the Run menu, waits for the
restore explorer's widgets, moves the instant with the slider (typing into
its readout, as a user can) and sees the preview change, steps to the next
event, moves back to where the notebook left it (just before the mistake)
and sees the first preview again, then saves a screenshot to
build/browser/04-restore-explorer.png.  JupyterLab's process
group is stopped in a ``finally``.  Every wait is bounded; the whole test
stays under 90 s.  A failure names the step and shows JupyterLab's last log
lines (and a screenshot of the page when there is one).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "04-restore-explorer.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = ROOT / "build" / "browser"
BUDGET = 85.0  # seconds for the whole test
DONE_TEXT = "notebook 04: all checks passed"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Budget:
    """One deadline for the whole test; each wait gets what is left of it (at most its own cap)."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self, cap: float) -> float:
        return max(0.5, min(cap, self.deadline - time.monotonic()))

    def ms(self, cap: float) -> float:
        return self.left(cap) * 1000


class JupyterLab:
    """JupyterLab in its own process group, serving ``root``, logging to ``log``."""

    def __init__(self, root: Path, scratch: Path) -> None:
        self.root, self.log = root, scratch / "jupyterlab.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        for var, sub in {
            "HOME": "home",
            "JUPYTER_CONFIG_DIR": "home/jupyter/config",
            "JUPYTER_DATA_DIR": "home/jupyter/data",
            "JUPYTER_RUNTIME_DIR": "home/jupyter/runtime",
            "JUPYTERLAB_SETTINGS_DIR": "home/jupyter/lab/user-settings",
            "JUPYTERLAB_WORKSPACES_DIR": "home/jupyter/lab/workspaces",
            "IPYTHONDIR": "home/ipython",
            "MPLCONFIGDIR": "home/mpl",
        }.items():
            (scratch / sub).mkdir(parents=True, exist_ok=True)
            env[var] = str(scratch / sub)
        env.pop("MONGODB_URI", None)  # the notebook starts its own sandbox
        settings = scratch / "home/jupyter/lab/user-settings/@jupyterlab"
        # every cell stays in the DOM (no virtual scrolling), and no news/update toasts
        (settings / "notebook-extension").mkdir(parents=True)
        (settings / "notebook-extension/tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
        (settings / "apputils-extension").mkdir(parents=True)
        (settings / "apputils-extension/notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        cmd = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
            "--IdentityProvider.token=", "--ServerApp.token=", "--ServerApp.password=",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={root}", "--ServerApp.terminals_enabled=False",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"JupyterLab exited with status {self.proc.returncode} before answering")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"JupyterLab did not answer /api/status within {timeout:.0f} s")
            time.sleep(0.2)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def stop(self) -> None:
        """Shut the kernels down (best effort), then SIGTERM JupyterLab's process group (SIGKILL after 15 s)."""
        if self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/api/kernels", timeout=2) as reply:
                    kernels = json.load(reply)
                for kernel in kernels:
                    request = urllib.request.Request(f"{self.url}/api/kernels/{kernel['id']}", method="DELETE")
                    urllib.request.urlopen(request, timeout=5).close()
            except (urllib.error.URLError, OSError, ValueError):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._out.close()


def _run_all_cells(page: Page, budget: Budget) -> None:
    """Run > Run All Cells once the kernel is idle; again if no cell started (a click while the kernel was still starting)."""
    for _attempt in range(2):
        page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(timeout=budget.ms(40))
        page.locator(".lm-MenuBar-item", has_text="Run").first.click(timeout=budget.ms(10))
        page.locator(".lm-Menu-item", has_text="Run All Cells").first.click(timeout=budget.ms(10))
        started = time.monotonic()
        while time.monotonic() - started < budget.left(10):
            prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_text_contents()
            if any("*" in p or any(ch.isdigit() for ch in p) for p in prompts):
                return
            time.sleep(0.2)
    raise AssertionError("Run All Cells started no cell (twice)")


def _cell_error(page: Page) -> str | None:
    """The text of the first error output in the notebook, if any (JupyterLab renders tracebacks as stderr)."""
    outputs = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_text_contents()
    failed = [o for o in outputs if "Traceback" in o or "Error" in o]
    return failed[0][-3000:] if failed else None


def _wait(page: Page, seconds: float, what: str, done: Callable[[], bool]) -> None:
    """Poll ``done`` for ``seconds``; a cell's error output fails at once, with its text."""
    deadline = time.monotonic() + seconds
    while True:
        if done():
            return
        error = _cell_error(page)
        if error:
            raise AssertionError(f"a cell failed while waiting for {what}:\n{error}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {seconds:.0f} s")
        time.sleep(0.25)


def _type_into(page: Page, readout: Locator, value: str) -> None:
    """Type a value into a slider's editable readout and press Enter (what a user can do)."""
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)
    page.keyboard.press("Enter")


def _text(page: Page, selector: str) -> str:
    return page.locator(selector).first.text_content() or ""


def test_restore_explorer_in_jupyterlab(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: this test drives Debian's Chromium; run `apt-get install chromium` (as root) and rerun")
    budget = Budget(BUDGET)
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    SHOTS.mkdir(parents=True, exist_ok=True)
    lab = JupyterLab(root, tmp_path)
    step = "starting JupyterLab"
    page: Page | None = None
    timings: dict[str, float] = {}
    failure = ""
    began = time.monotonic()
    try:
        lab.wait_ready(budget.left(30))
        timings["lab"] = time.monotonic() - began
        with sync_playwright() as pw:
            step = "starting Chromium"
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=budget.ms(30))
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1500})
                page.set_default_timeout(budget.ms(30))
                step = f"opening {NOTEBOOK}"
                page.goto(f"{lab.url}/lab/tree/{NOTEBOOK}", timeout=budget.ms(40))
                page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=budget.ms(40))
                timings["open"] = time.monotonic() - began
                step = "running all cells"
                _run_all_cells(page, budget)
                _wait(page, budget.left(45), "restore explorer widgets (.walkit-preview)", lambda: page.locator(".walkit-preview").count() > 0)
                timings["widgets"] = time.monotonic() - began
                _wait(page, budget.left(45), f"{DONE_TEXT!r} printed by the last cell", lambda: page.get_by_text(DONE_TEXT).count() > 0)
                timings["cells"] = time.monotonic() - began

                step = "finding the explorer's widgets"
                for cls in ("walkit-explorer", "walkit-instant", "walkit-events", "walkit-preview", "walkit-restore", "walkit-timeline"):
                    assert page.locator(f".{cls}").count() >= 1, f"no .{cls} in the page"
                assert page.locator(".walkit-picker input").count() >= 1, "the date-time picker has no input"
                assert page.locator(".walkit-timeline svg").count() == 1, "the timeline is not drawn"
                assert "Events around the instant" in _text(page, ".walkit-events")
                assert page.locator(".walkit-restore button", has_text="Restore").count() >= 1
                page.locator(".walkit-explorer").first.evaluate("e => e.scrollIntoView({block: 'start'})")

                step = "moving the instant with the slider"
                before, label = _text(page, ".walkit-preview"), _text(page, ".walkit-instant-label")
                assert "Preview at" in before, f"the preview shows no state: {before[:300]!r}"
                readout = page.locator(".walkit-slider .widget-readout").first
                original = (readout.text_content() or "").strip()  # the notebook left the instant just before the mistake
                assert original.isdigit() and int(original) > 0, f"unexpected slider readout {original!r}"
                _type_into(page, readout, "0")
                deadline = time.monotonic() + budget.left(20)
                while _text(page, ".walkit-preview") == before and time.monotonic() < deadline:
                    time.sleep(0.1)
                after = _text(page, ".walkit-preview")
                assert after != before, "the preview did not change when the slider moved to the window's start"
                assert _text(page, ".walkit-instant-label") != label and "(+0.000 s)" in _text(page, ".walkit-instant-label")
                assert "removed" in after and "document(s) then" in after
                timings["slider"] = time.monotonic() - began

                step = "stepping to the next event"
                page.locator(".walkit-next").first.click()
                deadline = time.monotonic() + budget.left(20)
                while "(+0.000 s)" in _text(page, ".walkit-instant-label") and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert "(+0.000 s)" not in _text(page, ".walkit-instant-label"), "event ▶ did not move the instant"

                step = "moving the slider back to just before the mistake"
                _type_into(page, readout, original)
                deadline = time.monotonic() + budget.left(20)
                while _text(page, ".walkit-preview") != before and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert _text(page, ".walkit-preview") == before, "the preview differs from the first one at the same slider position"
                assert _text(page, ".walkit-instant-label") == label

                step = "saving the screenshot"
                page.locator(".walkit-explorer").first.evaluate("e => e.scrollIntoView({block: 'start'})")
                page.screenshot(path=str(SHOTS / "04-restore-explorer.png"))
                assert (SHOTS / "04-restore-explorer.png").stat().st_size > 10_000
            except (PlaywrightError, AssertionError) as exc:
                shot = ""
                if page is not None:
                    try:
                        page.screenshot(path=str(SHOTS / "04-restore-explorer-failure.png"))
                        shot = f"\n(screenshot of the page: {SHOTS / '04-restore-explorer-failure.png'})"
                    except PlaywrightError:
                        pass
                failure = f"{step} failed after {time.monotonic() - began:.1f} s: {exc}{shot}"
            finally:
                browser.close()
    except (PlaywrightError, AssertionError) as exc:  # JupyterLab or Chromium did not start
        failure = f"{step} failed after {time.monotonic() - began:.1f} s: {exc}"
    finally:
        tail = lab.tail()
        lab.stop()
    if failure:
        pytest.fail(f"{failure}\n--- the last JupyterLab log lines ({lab.log}) ---\n{tail}", pytrace=False)
    print("timings (s from start):", {k: round(v, 1) for k, v in timings.items()})
    assert time.monotonic() - began < 90
