"""Train tab GPU section: a multi-select of the detected cards (faked here) writes train.gpus,
train.strategy is a dropdown of STRATEGIES, and the effective batch counts the cards."""

from __future__ import annotations

import pytest

from core.choices import STRATEGIES
from core.hardware import detect as hw
from gui.tabs import train as tab


def _two_cards(disk_path="."):
    return hw.HardwareReport(gpus=[
        hw.GpuInfo(index=0, name="NVIDIA RTX 6000 Ada", total_gib=47.5, free_gib=40.25, used_gib=7.25, bf16=True),
        hw.GpuInfo(index=1, name="NVIDIA L40S", total_gib=44.5, free_gib=44.0, used_gib=0.5, bf16=True)])


def _no_gpu(disk_path="."):
    return hw.HardwareReport(message=hw.NO_GPU)


def _build(monkeypatch, tmp_path, fake, lang="en"):
    from gui.app import build_app

    monkeypatch.setattr(hw, "detect", fake)
    app = build_app(runs_dir=tmp_path / "runs", demo=False, lang=lang, mixes_dir=tmp_path / "mixes")
    blocks = {getattr(b, "elem_id", None): b for b in app.blocks.values()}
    return app, blocks


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_detected_cards_are_listed_with_their_free_memory(monkeypatch, tmp_path, lang):
    app, blocks = _build(monkeypatch, tmp_path, _two_cards, lang)
    pick = blocks["train-gpus-pick"]
    assert type(pick).__name__ == "CheckboxGroup" and pick.visible
    labels = [label for label, _ in pick.choices]
    assert [value for _, value in pick.choices] == ["0", "1"]
    assert "NVIDIA RTX 6000 Ada" in labels[0] and "40.2" in labels[0] and "47.5" in labels[0]
    assert "NVIDIA L40S" in labels[1] and "44.0" in labels[1]
    fields = app.qt_ctx.shared["train.fields"]
    strategy = fields["train.strategy"]
    assert type(strategy).__name__ == "Dropdown" and [v for _, v in strategy.choices] == list(STRATEGIES)
    assert strategy.value == "single"
    # the setting's own box holds train.gpus; with cards to tick it is not shown
    assert fields["train.gpus"].value == "auto" and not fields["train.gpus"].visible


def test_without_a_gpu_the_setting_is_typed_and_the_page_says_why(monkeypatch, tmp_path):
    app, blocks = _build(monkeypatch, tmp_path, _no_gpu)
    assert not blocks["train-gpus-pick"].visible and blocks["train-gpus-pick"].choices == []
    assert app.qt_ctx.shared["train.fields"]["train.gpus"].visible
    assert hw.NO_GPU in blocks["train-gpus-note"].value


def test_ticks_become_the_setting_and_the_setting_becomes_ticks():
    assert tab.gpus_setting([]) == "auto"
    assert tab.gpus_setting(["1"]) == "1,"  # one id as a list: a bare 1 would count cards
    assert tab.gpus_setting(["1", "0"]) == "0,1"
    ids = ["0", "1", "2"]
    assert tab.ticked_from("auto", ids) == []
    assert tab.ticked_from("0,2", ids) == ["0", "2"]
    assert tab.ticked_from("1,", ids) == ["1"]
    assert tab.ticked_from("2", ids) == ["0", "1"]
    assert tab.ticked_from("0,7", ids) == ["0"]  # a card not here is not ticked


def test_the_form_reads_the_gpu_settings(monkeypatch, tmp_path):
    from gui.tabs.train import config_from

    app, _ = _build(monkeypatch, tmp_path, _two_cards)
    ctx = app.qt_ctx
    values = {path: getattr(box, "value", None) for path, box in ctx.shared["train.fields"].items()}
    values.update({"train.gpus": tab.gpus_setting(["0", "1"]), "train.strategy": "fsdp",
                   "data.mix_dir": str(tmp_path / "mix")})
    cfg = config_from(ctx, list(values.values()))
    assert cfg.train.gpus == "0,1" and cfg.train.strategy == "fsdp"


def test_effective_batch_is_micro_times_accumulation_times_cards():
    from gui.app import AppContext

    ctx = AppContext(runs_dir="runs", demo=False)
    text = tab.effective_batch_text(ctx, 4, 2, "ddp", "0,1", 2)
    assert "4 x 2" in text and "2 GPU" in text and "16 rows" in text
    assert "8 rows" in tab.effective_batch_text(ctx, 4, 2, "single", "0,1", 2)
    assert "24 rows" in tab.effective_batch_text(ctx, 4, 2, "fsdp", "auto", 3)  # auto: every detected card
    auto = tab.effective_batch_text(ctx, "auto", 4, "ddp", "2", 4)
    assert "auto" in auto and "8 rows" in auto and "4 on each of 2" in auto  # 2 x 4 rows, shared
    uneven = tab.effective_batch_text(ctx, "auto", 4, "ddp", "3", 4)
    assert "24 rows" in uneven and "multiple of 3" in uneven  # 8 rows do not divide over 3 cards
    assert "single" in tab.effective_batch_text(ctx, 2, 4, "ddp", "1,", 2)  # ddp on one card: said so
    assert tab.effective_batch_text(ctx, "4x", 2, "ddp", "auto", 2) == ""
    zh = tab.effective_batch_text(AppContext(runs_dir="runs", demo=False, lang="zh"), 4, 2, "ddp", "0,1", 2)
    assert "16 行" in zh


def test_refresh_reads_the_cards_again(monkeypatch):
    from gui.app import AppContext

    monkeypatch.setattr(hw, "detect", _two_cards)
    ctx = AppContext(runs_dir="runs", demo=False)
    pick, setting, note, batch, detected = tab.gpu_refresh(ctx, "0,1", 2, 4, "ddp")
    assert pick["value"] == ["0", "1"] and pick["visible"] and len(pick["choices"]) == 2
    assert setting["visible"] is False and note == "" and detected == 2 and "16 rows" in batch
    monkeypatch.setattr(hw, "detect", _no_gpu)
    pick, setting, note, batch, detected = tab.gpu_refresh(ctx, "auto", 2, 4, "single")
    assert pick["visible"] is False and setting["visible"] is True and hw.NO_GPU in note and detected == 0
    # a value filled in elsewhere (a preset, the Hardware tab) ticks the cards it names
    assert tab.gpus_typed(ctx, "1,", 2)["value"] == ["1"]
    assert tab.gpus_typed(ctx, "2", 3)["value"] == ["0", "1"]
    assert "value" not in tab.gpus_typed(ctx, "0,1", 0)  # nothing listed: nothing to tick


def test_the_ticks_and_the_hardware_tab_are_wired_to_train_gpus(monkeypatch, tmp_path):
    app, blocks = _build(monkeypatch, tmp_path, _two_cards)
    fields = app.qt_ctx.shared["train.fields"]
    pick, setting = blocks["train-gpus-pick"], fields["train.gpus"]

    def outputs_of(component, event):
        return [{o._id for o in fn.outputs} for fn in app.fns.values()
                if (component._id, event) in [(t[0], t[1]) for t in fn.targets]]

    assert {setting._id} in outputs_of(pick, "input")
    assert {pick._id} in outputs_of(setting, "change")
    assert blocks["train-effective-batch"]._id in set().union(*outputs_of(fields["train.grad_accum"], "change"))
    # "Use this model" on the Hardware tab fills the strategy and the GPUs too
    filled = set().union(*outputs_of(app.qt_ctx.shared["selected_model"], "change"))
    assert {fields["train.strategy"]._id, setting._id} <= filled


def test_cards_are_numbered_as_the_launcher_numbers_them(monkeypatch):
    from gui.app import AppContext

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # only the L40S: it is the run's GPU 0
    choices = tab.gpu_choices(AppContext(runs_dir="runs", demo=False), _two_cards())
    assert len(choices) == 1 and choices[0][1] == "0" and "NVIDIA L40S" in choices[0][0]

