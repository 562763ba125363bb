"""The Chat tab in a real browser: load a run, both panes stream, state survives a reload."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT, stop_process

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory, fake_run, demo_model_path):
    from tests.e2e.conftest import free_port, require_chromium

    require_chromium()
    tmp = tmp_path_factory.mktemp("chatapp")
    runs = tmp / "runs"
    shutil.copytree(fake_run, runs / fake_run.name)
    port = free_port()
    log = tmp / "server.log"
    env = dict(os.environ, QWENTUNE_CACHE=str(demo_model_path.parent), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "launch.py", "--demo", "--port", str(port), "--runs-dir", str(runs),
                                 "--mixes-dir", str(tmp / "mixes")], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/en/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("the app did not start:\n" + log.read_text()[-4000:])
                time.sleep(0.3)
        # Start-up loads no model: nothing but the page was served so far.
        assert "Loading weights" not in log.read_text()
        yield url, log
    finally:
        stop_process(proc)


def test_both_panes_stream_and_survive_a_reload(chat_server):
    from playwright.sync_api import sync_playwright

    from tests.e2e.conftest import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

    url, log = chat_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_role("tab", name="Chat").click()
        page.wait_for_function("document.querySelector('#chat-run input').value === 'demo-lora-test'")
        page.locator("#chat-load").click()
        page.wait_for_function("document.querySelector('#chat-status').innerText.includes('Loaded')")
        page.locator("#chat-max-new input").fill("48")
        page.locator("#chat-input textarea").fill("Tell me a story.")
        # Record every redraw of the panes in the page itself (polling from here would miss some).
        page.evaluate("""() => {
            window.__lens = [];
            const b = document.querySelector('#chat-base'), t = document.querySelector('#chat-tuned');
            new MutationObserver(() => window.__lens.push([b.innerText.length, t.innerText.length]))
                .observe(document.querySelector('#tab-chat'), {subtree: true, childList: true, characterData: true});
        }""")
        page.locator("#chat-send").click()
        page.wait_for_function("document.querySelector('#chat-stats').innerText.includes('tokens/s')")
        seen = page.evaluate("window.__lens")
        final_base = page.locator("#chat-base").inner_text()
        final_tuned = page.locator("#chat-tuned").inner_text()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "chat-streamed.png"))
        # both panes grew over several redraws, not in one jump at the end
        assert len({b for b, _ in seen}) >= 3 and len({t for _, t in seen}) >= 3, seen
        assert "Tell me a story." in final_base and "Tell me a story." in final_tuned
        page.reload()
        page.get_by_role("tab", name="Chat").click()
        page.wait_for_function("document.querySelector('#chat-tuned').innerText.includes('Tell me a story.')")
        assert page.locator("#chat-base").inner_text() == final_base
        assert page.locator("#chat-tuned").inner_text() == final_tuned
        assert "Loaded" in page.locator("#chat-status").inner_text()  # the model is still in the server
        assert page.locator("#chat-max-new input").input_value() == "48"
        browser.close()
