"""Training presets: listed, loaded with file:line errors, saved from flat GUI values, and the
header's load/save handlers fill and read the Train tab's fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import RunConfig, load_run_config
from core.presets import list_presets, load_preset, preset_to_yaml, save_preset, setting_paths
from core.settings import ConfigError

PRESET = """\
# Small GPU, QLoRA.
# Rank 16 keeps the adapter small.
model:
  name_or_path: qwen3-4b
  method: qlora
lora:
  r: 16
  alpha: 16
train:
  learning_rate: 1.0e-4
  max_seq_len: 1024
"""


@pytest.fixture
def presets(tmp_path) -> Path:
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "small.yaml").write_text(PRESET, encoding="utf-8")
    return folder


def test_list_reads_names_and_leading_comments(presets):
    (presets / "b.yaml").write_text("lora:\n  r: 8\n", encoding="utf-8")
    infos = list_presets(presets)
    assert [i.name for i in infos] == ["b", "small"]
    assert infos[1].description == "Small GPU, QLoRA.\nRank 16 keeps the adapter small."
    assert list_presets(presets / "missing") == []


def test_load_fills_defaults_and_leaves_data_alone_when_the_preset_has_none(presets):
    values = load_preset("small", presets)
    assert values["model.name_or_path"] == "qwen3-4b"
    assert values["model.method"] == "qlora"
    assert values["lora.r"] == 16
    assert values["train.learning_rate"] == pytest.approx(1e-4)
    assert values["train.micro_batch"] == RunConfig().train.micro_batch  # default filled in
    assert not any(k.startswith("data.") for k in values)
    assert "name" not in values and "runs_dir" not in values
    assert set(values) <= set(setting_paths())


def test_load_keeps_the_data_section_when_given(presets):
    (presets / "with-data.yaml").write_text(PRESET + "data:\n  mix_dir: mixes/demo\n", encoding="utf-8")
    assert load_preset("with-data", presets)["data.mix_dir"] == "mixes/demo"


def test_a_bad_preset_names_file_line_and_field(presets):
    bad = presets / "bad.yaml"
    bad.write_text("model:\n  method: qlora\nlora:\n  r: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_preset("bad", presets)
    assert f"{bad}:4" in str(err.value) and "lora.r" in str(err.value)
    bad.write_text("lora:\n  rank: 8\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: lora.rank: unknown setting"):
        load_preset("bad", presets)
    with pytest.raises(ConfigError, match="no preset named 'nope'.*known: bad, small"):
        load_preset("nope", presets)


def test_save_round_trips_and_is_a_valid_run_config(presets, tmp_path):
    values = load_preset("small", presets)
    values["lora.r"] = 64.0  # a GUI number box gives floats
    values["data.mix_dir"] = str(tmp_path / "mixes" / "m1")
    path = save_preset("mine", values, presets, description="My settings")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# My settings\n# Saved from the QwenTune GUI")
    again = load_preset("mine", presets)
    assert again["lora.r"] == 64 and again["model.name_or_path"] == "qwen3-4b"
    cfg = load_run_config(path)  # the CLI reads the very same file
    assert cfg.data.mix_dir.endswith("m1") and cfg.lora.r == 64


def test_save_without_data_omits_the_data_section(presets):
    values = load_preset("small", presets)
    text = preset_to_yaml(dict(values, **{"data.mix_dir": ""}))
    assert "data:" not in text and "name:" not in text and "runs_dir" not in text


def test_save_refuses_bad_names_bad_values_and_silent_overwrite(presets):
    values = load_preset("small", presets)
    for name in ("", "../evil", "a/b", ".hidden"):
        with pytest.raises(ConfigError, match="preset name"):
            save_preset(name, values, presets)
    with pytest.raises(ConfigError, match="train.learning_rate"):
        save_preset("x", dict(values, **{"train.learning_rate": -1}), presets)
    assert not (presets / "x.yaml").exists()
    with pytest.raises(FileExistsError, match="small"):
        save_preset("small", values, presets)
    assert (presets / "small.yaml").read_text(encoding="utf-8") == PRESET
    save_preset("small", dict(values, **{"lora.r": 8}), presets, overwrite=True)
    assert load_preset("small", presets)["lora.r"] == 8
    save_preset("中文预设", values, presets)  # Chinese names are fine
    assert (presets / "中文预设.yaml").exists()


def test_shipped_presets_all_load():
    for info in list_presets():
        load_preset(info.path)


def test_header_handlers_fill_and_read_train_fields(presets):
    from gui.app import AppContext
    from gui.presets import load_into, save_from

    ctx = AppContext(runs_dir=Path("runs"), demo=True, lang="zh", presets_dir=presets)
    paths = ["model.name_or_path", "lora.r", "train.learning_rate", "data.mix_dir"]
    msg, *updates = load_into(ctx, paths, "small")
    assert "small" in msg and "已将预设" in msg
    assert updates[0]["value"] == "qwen3-4b" and updates[1]["value"] == 16
    assert updates[3]["__type__"] != "update" or "value" not in updates[3]  # data untouched: skipped
    msg, *_ = load_into(ctx, paths, None)
    assert msg == ctx.t("presets.pick_first")
    msg, choice = save_from(ctx, paths, "from-gui", False, ["demo", 4, 3e-4, ""])
    assert "from-gui.yaml" in msg and choice["value"] == "from-gui"
    assert load_preset("from-gui", presets)["lora.r"] == 4
    msg, _ = save_from(ctx, paths, "from-gui", False, ["demo", 4, 3e-4, ""])
    assert msg == ctx.t("presets.exists", name="from-gui")
    msg, _ = save_from(ctx, paths, "bad", False, ["demo", 0, 3e-4, ""])
    assert msg.startswith("预设有问题") and "lora.r" in msg


def test_an_inline_mix_preset_does_not_blank_the_mix_choice(presets):
    from gui.app import AppContext
    from gui.presets import load_into

    (presets / "inline.yaml").write_text(PRESET + "data:\n  mix:\n    sources:\n      - path: samples/chat_en\n",
                                         encoding="utf-8")
    values = load_preset("inline", presets)
    assert "data.mix_dir" not in values and values["data.mix"]["sources"][0]["path"] == "samples/chat_en"
    ctx = AppContext(runs_dir=Path("runs"), demo=True, presets_dir=presets)
    msg, model, mix_dir = load_into(ctx, ["model.name_or_path", "data.mix_dir"], "inline")
    assert model["value"] == "qwen3-4b" and "value" not in mix_dir
    assert ctx.t("presets.inline_mix") in msg


@pytest.mark.parametrize(("typed", "saved"), [("auto", "auto"), (8, 8), ("12", 12)])
def test_micro_batch_auto_or_a_number_round_trips_through_a_preset(presets, typed, saved):
    from gui.app import AppContext
    from gui.presets import load_into, save_from

    ctx = AppContext(runs_dir=Path("runs"), demo=True, presets_dir=presets)
    paths = ["model.name_or_path", "train.micro_batch", "data.mix_dir"]
    msg, _ = save_from(ctx, paths, "mb", False, ["demo", typed, ""])
    assert "mb.yaml" in msg
    text = (presets / "mb.yaml").read_text(encoding="utf-8")
    assert f"micro_batch: {saved}\n" in text  # the YAML holds auto or a number, never a quoted "12"
    assert load_preset("mb", presets)["train.micro_batch"] == saved
    _, _, box, _ = load_into(ctx, paths, "mb")
    assert box["value"] == saved
