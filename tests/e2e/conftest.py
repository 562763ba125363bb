"""The app in demo mode as a subprocess, and Debian's Chromium driven by Playwright.

Chromium comes from Debian (`.ci/run` installs it; Playwright's own browser download does not work
here). Without it the browser test skips on a developer machine but fails in CI (CI=true), so a
broken CI image cannot turn the test green by skipping it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, stop_process

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts" / "app-flow"
TOAST_RECORDER = """
window.qtToasts = [];
new MutationObserver((changes) => {
  for (const change of changes) for (const node of change.addedNodes) {
    if (!(node instanceof Element)) continue;
    const toasts = node.matches(".toast-body") ? [node] : [...node.querySelectorAll(".toast-body")];
    for (const t of toasts) {
      const type = [...t.classList].find((c) => ["error", "warning", "info", "success"].includes(c)) || "";
      window.qtToasts.push({type, text: t.innerText});
    }
  }
}).observe(document, {childList: true, subtree: true});
"""


def toasts(page, kind: str = "error") -> list[str]:
    """The texts of every toast of ``kind`` the page has shown so far."""
    return [t["text"] for t in page.evaluate("window.qtToasts || []") if t["type"] == kind]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    msg = f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`, as .ci/run does)"
    if in_ci():
        pytest.fail(msg + " - the browser test must run in CI")
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AppServer:
    url: str
    runs_dir: Path
    mixes_dir: Path
    presets_dir: Path
    log: Path
    proc: subprocess.Popen

    def log_tail(self, n: int = 6000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-n:] if self.log.exists() else ""


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, demo_model_path):
    """`python launch.py --demo` on a free port, started in an empty folder so that its default
    runs/ and mixes/ are new. The demo model comes from the usual cache (QWENTUNE_CACHE), built once
    by the demo_model_path fixture."""
    require_chromium()
    tmp = tmp_path_factory.mktemp("app")
    # A copy of the shipped presets (train/ and the mix presets beside it): saving one in the test
    # must not touch the checkout.
    presets = tmp / "presets" / "train"
    for kind in ("train", "mixes"):
        (tmp / "presets" / kind).mkdir(parents=True)
        for shipped in sorted((ROOT / "presets" / kind).glob("*.yaml")):
            (tmp / "presets" / kind / shipped.name).write_bytes(shipped.read_bytes())
    port = free_port()
    log = tmp / "server.log"
    env = dict(os.environ, QWENTUNE_CACHE=str(demo_model_path.parent), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    # The runs and mixes folders are the defaults `make run` uses: the relative runs/ and mixes/ of
    # the working directory (here the test's folder, so the checkout stays clean). An absolute
    # --runs-dir would hide the path mix-ups a relative one causes.
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "launch.py"), "--demo", "--port", str(port), "--presets-dir", str(presets)],
            cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = AppServer(f"http://127.0.0.1:{port}", tmp / "runs", tmp / "mixes", presets, log, proc)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(server.url + "/en/", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the app did not start:\n{server.log_tail()}")
                time.sleep(0.3)
        yield server
    finally:
        stop_process(proc)
        # Training workers run detached (their own session): stop any this test left running.
        _kill_workers(tmp / "runs")


def _kill_workers(runs_dir: Path) -> None:
    import json
    import signal

    for status in runs_dir.glob("*/status.json"):
        try:
            pid = json.loads(status.read_text()).get("pid")
        except (OSError, ValueError):
            continue
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture(scope="module")
def browser():
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.call_report = report


@pytest.fixture
def page(browser, request, app_server):
    """A fresh page that records every request leaving 127.0.0.1 (there must be none). On failure
    it leaves a screenshot and the server's log in test-artifacts/app-flow/."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="en-US")
    # Every toast (Gradio's error / warning pop-ups) the page shows is recorded, also those that
    # vanish before a test looks: window.qtToasts = [{type, text}].
    context.add_init_script(TOAST_RECORDER)
    pg = context.new_page()
    pg.external_requests = []
    pg.on("request", lambda r: pg.external_requests.append(r.url)
          if not r.url.startswith(("http://127.0.0.1", "data:", "blob:", "about:")) else None)
    pg.set_default_timeout(30_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield pg
        report = getattr(request.node, "call_report", None)
        if report is not None and report.failed:
            pg.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
            (ARTIFACTS / "failure-server.log").write_text(app_server.log_tail(20000), encoding="utf-8")
    finally:
        context.close()
