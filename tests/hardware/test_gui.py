"""Hardware tab: its pieces render real data, and it shares the chosen model with other tabs."""

from __future__ import annotations

import pytest

from core.hardware.detect import GpuInfo, HardwareReport
from core.hardware.recommend import recommend
from gui.i18n import Strings
from gui.tabs import hardware as tab


@pytest.fixture(params=["en", "zh"])
def t(request):
    return Strings(request.param)


def test_compute_for_a_simulated_card(t):
    result = tab.compute(24, 2048, 16)
    assert result["gpus"][0]["total_gib"] == 24.0
    assert len(result["rows"]) == len(result["recommendations"])
    rows = tab.table_rows(t, result["rows"])
    assert rows[0][0] == "★" and len(rows[0]) == 7
    best = next(r for r in result["rows"] if r["best"])
    assert best["display"] in tab.best_text(t, result)
    html = tab.gpu_cards_html(t, result)
    assert t("hardware.sim_name", gib="24") in html


def test_two_gpus_show_two_cards_and_rows_for_the_chosen_one(t, monkeypatch):
    report = HardwareReport(gpus=[
        GpuInfo(index=0, name="NVIDIA GeForce RTX 3060", total_gib=12.0, free_gib=11.0, used_gib=1.0,
                compute_capability="8.6", bf16=True, utilization_pct=12, temperature_c=50, power_w=40.0),
        GpuInfo(index=1, name="Tesla T4", total_gib=15.0, free_gib=15.0, used_gib=0.0,
                compute_capability="7.5", bf16=False)], driver_version="550.54", cuda_version="12.4")
    monkeypatch.setattr(tab, "read_hardware", lambda sim, count=1: report)
    result = tab.compute(0, 2048, 16, gpu_index=1)
    assert result["chosen_gpu"] == 1 and {r["gpu"] for r in result["rows"]} == {1}
    html = tab.gpu_cards_html(t, result)
    assert "RTX 3060" in html and "Tesla T4" in html and "550.54" in html and "12%" in html


def test_live_refresh_view_matches_the_full_one(t, monkeypatch):
    from core.hardware.detect import simulated

    report = simulated(16)
    monkeypatch.setattr(tab, "read_hardware", lambda sim, count=1: report)
    assert tab.gpu_cards_html(t, tab.report_view(report)) == tab.gpu_cards_html(t, tab.compute(16, 2048, 16))


def test_no_gpu_card_says_so(t):
    result = recommend(HardwareReport(message="no NVIDIA GPU found: CPU demo mode only"))
    result.update(rows=[], chosen_gpu=None)
    assert t("hardware.no_gpu") in tab.gpu_cards_html(t, result)
    assert tab.best_text(t, result) == t("hardware.no_gpu_hint")


def test_breakdown_figure_stacks_the_parts(t):
    row = tab.compute(24, 2048, 16)["rows"][0]
    fig = tab.breakdown_figure(t, row)
    assert len(fig.data) == 5 and fig.layout.barmode == "stack"
    assert sum(bar.y[0] for bar in fig.data) == pytest.approx(row["est_gib"], abs=0.02)
    assert tab.breakdown_figure(t, None).layout.title.text == t("hardware.chart.empty")


def test_selection_for_train_tab():
    row = next(r for r in tab.compute(24, 4096, 32)["rows"] if r["model"] == "qwen3-8b" and r["method"] == "qlora")
    row["rank"] = 32
    choice = tab.selection_for(row)
    assert choice["model"] == "qwen3-8b" and choice["method"] == "qlora"
    assert choice["seq_len"] == 4096 and choice["rank"] == 32
    # auto, which picks the table's number on this card and follows later changes in the Train tab
    assert choice["micro_batch"] == "auto" and choice["auto_batch"] == max(row["micro_batch"], 1)


def test_tab_registers_selected_model_state():
    import gradio as gr

    from gui.app import build_app

    app = build_app(demo=True, lang="en")
    ctx = app.qt_ctx
    assert isinstance(ctx.shared["selected_model"], gr.State)
    assert ctx.shared["selected_model"].value is None
    assert isinstance(ctx.shared["hardware.use_button"], gr.Button)


def test_use_this_model_fills_the_train_tabs_fields():
    import gradio as gr

    from gui.app import AppContext

    ctx = AppContext(runs_dir="runs", demo=True)
    with gr.Blocks() as page:
        model = gr.Textbox(value="demo")
        method = gr.Radio(choices=["lora", "qlora"], value="lora")
        ctx.shared["train.fields"] = {"model.name_or_path": model, "model.method": method}
        tab.build(ctx)
        for hook in ctx.after_build:
            hook()
    state = ctx.shared["selected_model"]
    wired = [fn for fn in page.fns.values()
             if (state._id, "change") in [(t[0], t[1]) for t in fn.targets]]
    assert wired and {c._id for c in wired[0].outputs} == {model._id, method._id}
    choice = tab.selection_for({**tab.compute(24, 2048, 16)["rows"][0], "rank": 16})
    updates = tab.train_updates(choice, ["model.name_or_path", "model.method"])
    assert [u["value"] for u in updates] == [choice["model"], choice["method"]]
    assert all("value" not in u for u in tab.train_updates(None, ["model.method"]))
    assert set(tab.TRAIN_FIELD_OF.values()) <= set(choice)


def test_several_simulated_cards_get_the_multi_card_plan(t):
    result = tab.compute(48, 1024, 16, sim_count=2)
    multi = result["multi"]
    assert multi["gpus"] == 2 and multi["vram_gib"] == 48.0
    rows = tab.multi_table_rows(t, multi)
    assert len(rows) == len(multi["recommendations"]) and len(rows[0]) == 9 and rows[0][0] == "★"
    text = tab.multi_text(t, multi, 1024)
    assert multi["best"]["display"] in text and multi["best"]["strategy"] in text and "2 x 48" in text
    big = next(r for r in multi["recommendations"] if r["model"] == "qwen3-32b" and r["method"] == "lora")
    assert big["strategy"] == "fsdp" and big["verdict"] == "fits"
    choice = tab.selection_for({**big, "rank": 16})
    assert choice["strategy"] == "fsdp" and choice["gpus"] == "2"  # simulated cards: a count
    fig = tab.breakdown_figure(t, big)
    assert "2 x fsdp" in fig.data[0].x[0]
    assert tab.compute(48, 1024, 16)["multi"] is None
    assert tab.multi_text(t, None, 1024) == "" and tab.multi_table_rows(t, None) == []


def test_detected_cards_hand_their_ids_to_train_gpus(monkeypatch):
    from gui.app import AppContext

    report = HardwareReport(gpus=[GpuInfo(index=i, name="NVIDIA L40S", total_gib=44.5, free_gib=44.0,
                                          used_gib=0.5, bf16=True) for i in range(2)])
    monkeypatch.setattr(tab, "read_hardware", lambda sim, count=1: report)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    result = tab.compute(0, 2048, 16)
    row = {**result["multi"]["best"], "rank": 16}
    choice = tab.selection_for(row)
    assert choice["gpus"] == "0,1" and choice["strategy"] in ("ddp", "fsdp")
    single = tab.selection_for({**result["rows"][0], "rank": 16})
    assert single["strategy"] == "single" and single["gpus"] == "auto"
    second = tab.selection_for({**tab.compute(0, 2048, 16, gpu_index=1)["rows"][0], "rank": 16})
    assert second["gpus"] == "1,"  # a list of one id: a bare "1" would count cards
    # numbered as the launcher numbers them: with CUDA_VISIBLE_DEVICES=1 the L40S is the run's GPU 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert tab.selection_for({**tab.compute(0, 2048, 16, gpu_index=1)["rows"][0], "rank": 16})["gpus"] == "auto"
    _, message = tab.use(AppContext(runs_dir="runs", demo=False), row)
    assert "0,1" in message and choice["strategy"] in message
    for lang in ("en", "zh"):
        _, message = tab.use(AppContext(runs_dir="runs", demo=True, lang=lang), row)
        assert "0,1" in message


def test_use_this_model_also_fills_strategy_and_gpus():
    assert {"train.strategy", "train.gpus"} <= set(tab.TRAIN_FIELD_OF)
    choice = tab.selection_for({**tab.compute(48, 1024, 16, sim_count=2)["multi"]["best"], "rank": 16})
    updates = tab.train_updates(choice, ["train.strategy", "train.gpus"])
    assert [u["value"] for u in updates] == [choice["strategy"], choice["gpus"]]


def test_a_stage_is_judged_and_handed_to_the_train_tab(t):
    sft = {(r["model"], r["method"]): r for r in tab.compute(24, 2048, 16)["rows"]}
    dpo = tab.compute(24, 2048, 16, stage="dpo")
    assert dpo["stage"] == "dpo"
    assert all(r["est_gib"] > sft[(r["model"], r["method"])]["est_gib"] for r in dpo["rows"])
    grpo = tab.compute(24, 2048, 16, stage="grpo")
    assert {r["seq_len"] for r in grpo["rows"]} == {512 + 1024}  # rl's defaults, not the length box
    choice = tab.selection_for({**grpo["rows"][0], "rank": 16})
    assert choice["stage"] == "grpo" and tab.selection_for({**next(iter(sft.values())), "rank": 16})["stage"] == "sft"
    assert "512" in tab.stage_info(t) and "1024" in tab.stage_info(t)
    assert tab.TRAIN_FIELD_OF["train.stage"] == "stage"
