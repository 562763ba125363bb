"""The Train tab's stage parts in a real browser (demo mode): picking a stage shows exactly the rl
settings it reads; a finished grpo run folder shows its reward / KL / length chart and its sampled
completions as text (an HTML completion is not rendered); a dpo run shows margin and accuracy."""

from __future__ import annotations

import json

import pytest

from core.settings import write_json_atomic
from gui.i18n import Strings
from tests.e2e.conftest import ARTIFACTS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EN = Strings("en")


def write_run(runs_dir, name, stage, metrics, samples=""):
    run = runs_dir / name
    run.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run / "status.json", {"state": "done", "stage": stage, "step": len(metrics),
                                            "total_steps": len(metrics), "model": "demo", "method": "lora",
                                            "queued": f"2020-01-0{1 + len(name) % 8}T00:00:00"})
    (run / "config.yaml").write_text(f"name: {name}\n", encoding="utf-8")
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics), encoding="utf-8")
    if samples:
        (run / "samples.jsonl").write_text(samples, encoding="utf-8")
    return run


def visible(page, elem_id: str) -> bool:
    return page.locator(f"#{elem_id}").is_visible()


def test_stage_settings_and_live_view(app_server, page):
    from tests.e2e.test_app_flow import choose, open_tab, plot_points

    grpo = [{"step": s, "loss": 0.0, "reward": 0.25 * s, "rewards/answer/mean": 0.2 * s,
             "rewards/format/mean": 0.05 * s, "kl": 0.001 * s, "completions/mean_length": 100 + s}
            for s in range(1, 5)]
    sample = {"step": 4, "prompt": "<|im_start|>user\nWhat is 6 * 7?<|im_end|>\n<|im_start|>assistant\n",
              "completion": "<think>\nsix sevens\n</think>\n\n<img src=x onerror=alert(1)> \\boxed{42}",
              "rewards": {"answer": 1.0, "format": 1.0}, "answer": "42"}
    write_run(app_server.runs_dir, "stage-grpo", "grpo", grpo, json.dumps(sample) + "\n")
    dpo = [{"step": s, "loss": 0.6, "rewards/chosen": 0.1 * s, "rewards/rejected": -0.1 * s,
            "rewards/margins": 0.2 * s, "rewards/accuracies": 0.6} for s in range(1, 4)]
    write_run(app_server.runs_dir, "stage-dpo", "dpo", dpo)

    page.goto(app_server.url + "/en/")
    open_tab(page, "train")
    # sft (the default): no rl settings.
    assert not visible(page, "train-sec-rl")
    choose(page, "train-f-train-stage", "grpo")
    page.wait_for_selector("#train-f-rl-num-generations", state="visible")
    assert visible(page, "train-f-rl-rewards") and visible(page, "train-f-rl-reward-file")
    assert not visible(page, "train-f-rl-beta")
    choose(page, "train-f-train-stage", "dpo")
    page.wait_for_selector("#train-f-rl-beta", state="visible")
    page.wait_for_selector("#train-f-rl-num-generations", state="hidden")
    choose(page, "train-f-train-stage", "sft")
    page.wait_for_selector("#train-sec-rl", state="hidden")

    page.click("#train-run-refresh")
    choose(page, "train-run", "stage-grpo")
    page.wait_for_selector("#train-stage-view", state="visible")
    page.wait_for_function("() => document.querySelector('#train-stage-chart .js-plotly-plot')")
    assert plot_points(page, "train-stage-chart") == 4
    box = page.locator("#train-samples-box")
    assert box.get_attribute("data-step") == "4"
    text = box.inner_text()
    assert "<img src=x onerror=alert(1)>" in text and page.locator("#train-samples img").count() == 0
    assert "answer +1.00" in text and "reference answer: 42" in text
    assert "KL 0.0040" in page.locator("#train-stage-line").inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "train-stage-grpo.png"), full_page=True)

    choose(page, "train-run", "stage-dpo")
    page.wait_for_function("() => document.querySelector('#train-stage-line') && "
                           "document.querySelector('#train-stage-line').innerText.includes('margin 0.600')")
    assert "accuracy 60%" in page.locator("#train-stage-line").inner_text()
    assert page.locator("#train-samples .train-sample").count() == 0
    page.screenshot(path=str(ARTIFACTS / "train-stage-dpo.png"), full_page=True)
