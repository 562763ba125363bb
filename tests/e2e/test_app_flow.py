"""The whole app in a real browser (Debian's Chromium through Playwright), in demo mode:

open every tab, build a mix from the shipped samples and save it, load the demo preset and train the
demo model on that mix while the loss chart grows (the app runs with the default relative runs/ and
mixes/ folders, as `make run` starts it, and the page must follow the run it started with no error
toast), load the run in Chat and get two answers, see the
run in the Runs tab, switch to Chinese, reload and find the Data tab's sources kept and the saved mix
open for editing again. Screenshots of every tab, filled with what the test did,
go to test-artifacts/app-flow/. No request may leave 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from core.config import load_run_config
from gui.i18n import Strings
from tests.e2e.conftest import ARTIFACTS, toasts

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EN = Strings("en")
ZH = Strings("zh")
MIX_NAME = "e2e-mix"
TRAIN_TIMEOUT_S = 420  # CPU training of the demo model takes well under a minute on 2 cores
# Enough steps that the run outlasts several of the Train tab's polls (1.5 s): with 12, a fast
# machine finished the whole run between two polls, and the chart was never seen growing.
RUN_STEPS = 40


def shot(page, name: str) -> None:
    page.wait_for_timeout(400)  # let plots finish their transition
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_tab(page, name: str) -> None:
    page.click(f"#tab-{name}-button")
    page.wait_for_selector(f"#tab-{name}", state="visible")


def choose(page, elem_id: str, text: str) -> None:
    """Pick the option of a Gradio dropdown whose label contains ``text``."""
    page.click(f"#{elem_id} input")
    option = page.locator("ul[role=listbox] li", has_text=text).first
    option.wait_for(state="visible")
    option.click()
    page.wait_for_timeout(300)


def fill(page, elem_id: str, text: str) -> None:
    """Type into a Gradio textbox or number box (an <input> or a <textarea> inside the element)."""
    page.locator(f"#{elem_id} textarea, #{elem_id} input:not([type=checkbox]):not([type=radio])").first.fill(text)


def plot_points(page, elem_id: str) -> int:
    """Number of points in the first trace of a Gradio plotly chart (0 while there is none)."""
    return page.evaluate(
        """(id) => { const el = document.querySelector('#' + id + ' .js-plotly-plot');
                     return el && el.data && el.data.length && el.data[0].x ? el.data[0].x.length : 0; }""",
        elem_id)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def run_state(run_dir) -> str:
    try:
        return json.loads((run_dir / "status.json").read_text()).get("state", "")
    except (OSError, ValueError):
        return ""


def test_app_flow(app_server, page):
    from playwright.sync_api import expect

    for old in [*ARTIFACTS.glob("0*.png"), *ARTIFACTS.glob("failure*")]:
        old.unlink()  # screenshots of an earlier run must not pass for this one's
    page.goto(app_server.url + "/")
    assert page.url.endswith("/en/")
    expect(page.locator("#mode-banner")).to_contain_text("Demo mode")

    # ------------------------------------------------------------------ Hardware
    open_tab(page, "hardware")
    expect(page.locator("#hw-table")).to_contain_text("Qwen3-8B", timeout=60_000)
    page.locator("#hw-table [data-row='0'][data-col='1']").first.click()  # the recommended row
    expect(page.locator("#hw-use")).to_be_enabled()
    page.click("#hw-use")
    expect(page.locator("#hw-used")).not_to_be_empty()
    shot(page, "01-hardware")

    # ------------------------------------------------------------------ Data: mix the samples, save
    open_tab(page, "data")
    page.click("#data-preset-load")
    expect(page.locator("#data-sources")).to_contain_text("samples/math_reasoning")
    choose(page, "data-sample", "samples/chat_zh")
    page.click("#data-add")
    expect(page.locator("#data-sources")).to_contain_text("samples/chat_zh")
    # Hold out a tenth of the rows: the run then logs an eval loss and the Evaluate tab has data.
    page.fill("#data-eval-fraction input[type=number]", "0.1")
    page.press("#data-eval-fraction input[type=number]", "Tab")
    page.click("#data-build")
    expect(page.locator("#data-counts")).to_contain_text("chat_zh", timeout=120_000)
    expect(page.locator("#data-preview")).to_contain_text("<|im_start|>", timeout=60_000)
    fill(page, "data-save-name", MIX_NAME)
    page.click("#data-save")
    expect(page.locator("#data-save-status")).to_contain_text(MIX_NAME, timeout=120_000)
    mix_dir = app_server.mixes_dir / MIX_NAME
    assert (mix_dir / "manifest.json").is_file() and (mix_dir / "train.jsonl").stat().st_size > 0
    assert (mix_dir / "eval.jsonl").stat().st_size > 0
    shot(page, "02-data")

    # ------------------------------------------------------------------ Presets + Train
    open_tab(page, "train")  # "Use this model" filled in the Hardware tab's pick
    expect(page.locator("#model-choice input")).to_have_value(re.compile("qwen3", re.I))
    page.click("#presets > button")  # open the header's presets accordion
    choose(page, "preset-choice", "demo")
    page.click("#preset-load")
    expect(page.locator("#preset-status")).to_contain_text("demo")
    page.click("#presets > button")  # close it again: the tabs' screenshots show the tabs
    expect(page.locator("#train-f-train-max-steps input")).to_have_value("10")
    expect(page.locator("#model-choice input")).to_have_value(re.compile("demo"))
    page.click("#train-mix-refresh")
    choose(page, "train-mix", MIX_NAME)
    fill(page, "train-f-train-max-steps", str(RUN_STEPS))
    fill(page, "train-f-name", "e2e-run")
    page.click("#train-start")
    run_dir = app_server.runs_dir / "e2e-run"
    wait_until(lambda: (run_dir / "status.json").exists(), 60, "the run folder")
    # The page follows the run it started (the app runs with the default, relative runs/): the run
    # choice shows it, the panel is about it, and no "not in the list of choices" toast appears.
    expect(page.locator("#train-run input")).to_have_value(re.compile("e2e-run"), timeout=30_000)
    expect(page.locator("#train-status")).to_contain_text("e2e-run", timeout=30_000)
    expect(page.locator("#train-message")).to_contain_text("e2e-run")
    state = page.locator("#train-progress-box").get_attribute("data-state")
    assert state in ("queued", "running", "done"), state
    assert toasts(page) == [], toasts(page)
    # The chart grows while the run trains: seen with few points, then with more.
    first = wait_until(lambda: plot_points(page, "train-chart"), TRAIN_TIMEOUT_S, "the first loss points")
    wait_until(lambda: plot_points(page, "train-chart") > first or run_state(run_dir) in ("done", "failed"),
               TRAIN_TIMEOUT_S, "the loss chart to update")
    wait_until(lambda: run_state(run_dir) in ("done", "failed", "stopped"), TRAIN_TIMEOUT_S, "the run to end")
    assert run_state(run_dir) == "done", (run_dir / "train.log").read_text()[-3000:]
    wait_until(lambda: plot_points(page, "train-chart") >= RUN_STEPS, 30, "the chart to show every step")
    assert plot_points(page, "train-chart") > first
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    shot(page, "03-train")

    # ------------------------------------------------------------------ Save the Train settings as a preset
    page.click("#presets > button")
    fill(page, "preset-name", "e2e-preset")
    page.click("#preset-save")
    expect(page.locator("#preset-status")).to_contain_text("e2e-preset.yaml")
    page.click("#presets > button")
    saved = load_run_config(app_server.presets_dir / "e2e-preset.yaml")  # what `python -m core train` reads
    assert saved.train.max_steps == RUN_STEPS and saved.model.name_or_path == "demo"
    assert saved.data.mix_dir.endswith(MIX_NAME) and saved.name == ""

    # ------------------------------------------------------------------ Chat: two answers
    open_tab(page, "chat")
    page.click("#chat-refresh")
    choose(page, "chat-run", "e2e-run")
    page.click("#chat-load")
    # Loaded (not just "loading"): the status names the adapter the fine-tuned pane uses.
    adapter_line = EN("chat.loaded_adapter", adapter="").split("`")[0].strip()
    expect(page.locator("#chat-status")).to_contain_text(adapter_line, timeout=120_000)
    expect(page.locator("#chat-status")).to_contain_text("e2e-run")
    fill(page, "chat-max-new", "24")
    fill(page, "chat-input", "What is 2 + 3?")
    page.click("#chat-send")
    for pane in ("chat-base", "chat-tuned"):
        bot = page.locator(f"#{pane} .message-row.bot-row, #{pane} [data-testid=bot]").last
        expect(bot).to_be_visible(timeout=120_000)
    wait_until(lambda: "·" in page.inner_text("#chat-stats"), 120, "both answers to finish")
    for pane in ("chat-base", "chat-tuned"):
        text = page.inner_text(f"#{pane}")
        assert "What is 2 + 3?" in text and len(text.strip()) > len("What is 2 + 3?"), (pane, text)
    shot(page, "04-chat")

    # ------------------------------------------------------------------ Evaluate & Export
    open_tab(page, "evaluate")
    page.click("#eval-refresh")
    choose(page, "eval-run", "e2e-run")
    expect(page.locator("#serve-command")).to_contain_text("vllm serve", timeout=30_000)
    page.get_by_text(EN("evaluate.settings"), exact=True).click()
    for label, value in (("evaluate.loss_rows", "8"), ("evaluate.control_prompts", "2"),
                         ("evaluate.control_tokens", "16"), ("evaluate.accuracy_rows", "2"),
                         ("evaluate.answer_tokens", "16")):
        page.get_by_label(EN(label), exact=True).fill(value)
    page.get_by_text(EN("evaluate.settings"), exact=True).click()
    page.click("#eval-start")
    done = EN("evaluate.finished", seconds="0").split(" in ")[0]
    expect(page.locator("#eval-progress")).to_contain_text(done, timeout=TRAIN_TIMEOUT_S * 1000)
    expect(page.locator("#eval-table")).to_contain_text(re.compile(r"\d\.\d"))
    assert (run_dir / "eval.json").is_file()
    shot(page, "05-evaluate")

    # ------------------------------------------------------------------ Runs: the run, its loss
    open_tab(page, "runs")
    expect(page.locator("#runs-table")).to_contain_text("e2e-run")
    expect(page.locator("#runs-table")).to_contain_text(EN("runs.state.done"))
    expect(page.locator("#runs-table")).to_contain_text(MIX_NAME)
    wait_until(lambda: plot_points(page, "runs-chart") >= RUN_STEPS, 30, "the run's loss curve in the Runs tab")
    page.locator("#runs-table [data-row='0'][data-col='1']").first.click()  # the one run's row
    expect(page.locator("#runs-details")).to_contain_text("config.yaml")
    shot(page, "06-runs")

    # ------------------------------------------------------------------ Chinese, same tab
    page.click("#lang-zh")
    page.wait_for_url(re.compile(r"/zh/#runs$"))
    expect(page.locator("#tab-runs-button")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#tab-runs-button")).to_have_text(ZH("runs.tab"))
    expect(page.locator("#mode-banner")).to_contain_text("演示模式")
    expect(page.locator("#runs-table")).to_contain_text(ZH("runs.state.done"))
    shot(page, "07-runs-zh")
    open_tab(page, "train")
    expect(page.locator("#tab-train")).to_contain_text("e2e-run", timeout=30_000)
    shot(page, "08-train-zh")

    # ------------------------------------------------------------------ Reload: the Data tab keeps its sources
    page.goto(app_server.url + "/en/")
    open_tab(page, "data")
    expect(page.locator("#data-sources")).to_contain_text("samples/chat_zh", timeout=30_000)
    expect(page.locator("#data-form-status")).to_contain_text("3")
    choose(page, "data-saved-mix", MIX_NAME)  # the saved mix opens again for editing
    page.click("#data-open-mix")
    expect(page.locator("#data-form-status")).to_contain_text(MIX_NAME, timeout=30_000)
    expect(page.locator("#data-save-name input")).to_have_value(MIX_NAME)
    expect(page.locator("#data-counts")).to_contain_text("chat_zh", timeout=120_000)
    shot(page, "09-data-reopened")

    assert toasts(page) == [], f"error toasts: {toasts(page)}"
    assert page.external_requests == [], f"requests left the machine: {page.external_requests}"
