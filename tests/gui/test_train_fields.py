"""Train tab widgets: the model picker supplies the model settings, and micro_batch is a dropdown of
the setting's suggestions that also takes any positive whole number typed in."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from gui.app import build_app

    tmp = tmp_path_factory.mktemp("train-fields")
    return build_app(runs_dir=tmp / "runs", demo=True, lang="en", mixes_dir=tmp / "mixes")


def test_the_model_settings_come_from_the_model_picker(app):
    fields = app.qt_ctx.shared["train.fields"]
    ids = {path: fields[path].elem_id for path in ("model.name_or_path", "model.method", "model.quant",
                                                   "model.hub")}
    assert ids == {"model.name_or_path": "model-choice", "model.method": "model-method",
                   "model.quant": "model-quant", "model.hub": "model-hub"}


def test_micro_batch_is_a_dropdown_of_the_settings_suggestions_that_takes_any_number(app):
    from core.config import RunConfig
    from core.settings import field_info

    info = next(f for f in field_info(RunConfig) if f.path == "train.micro_batch")
    assert info.suggest == ("auto", 1, 2, 4, 8, 16, 32) and info.choices is None  # an open list
    box = app.qt_ctx.shared["train.fields"]["train.micro_batch"]
    assert type(box).__name__ == "Dropdown" and box.allow_custom_value
    assert [value for _, value in box.choices] == list(info.suggest)
    assert box.value == "auto"
    # What the browser sends: a picked suggestion as is, a typed number as text.
    assert box.preprocess(8) == 8 and box.preprocess("12") == "12" and box.preprocess("auto") == "auto"


@pytest.mark.parametrize(("sent", "kept"), [("auto", "auto"), (8, 8), ("12", 12), (" 24 ", 24)])
def test_the_form_turns_the_micro_batch_box_into_the_setting(app, tmp_path, sent, kept):
    from gui.tabs.train import config_from

    ctx = app.qt_ctx
    values = {path: getattr(box, "value", None) for path, box in ctx.shared["train.fields"].items()}
    values.update({"train.micro_batch": sent, "data.mix_dir": str(tmp_path / "mix")})
    assert config_from(ctx, list(values.values())).train.micro_batch == kept


@pytest.mark.parametrize("sent", ["0", "-2", "lots", "2.5"])
def test_a_bad_micro_batch_names_the_setting(app, tmp_path, sent):
    from core.settings import ConfigError
    from gui.tabs.train import config_from

    ctx = app.qt_ctx
    values = {path: getattr(box, "value", None) for path, box in ctx.shared["train.fields"].items()}
    values.update({"train.micro_batch": sent, "data.mix_dir": str(tmp_path / "mix")})
    with pytest.raises(ConfigError, match=r"train\.micro_batch"):
        config_from(ctx, list(values.values()))


def test_use_this_model_sets_the_train_tabs_micro_batch_to_auto(app):
    from gui.tabs import hardware

    ctx = app.qt_ctx
    fields = ctx.shared["train.fields"]
    box = fields["train.micro_batch"]
    state = ctx.shared["selected_model"]
    wired = [fn for fn in app.fns.values() if (state._id, "change") in [(t[0], t[1]) for t in fn.targets]]
    assert any(box._id in {c._id for c in fn.outputs} for fn in wired)
    row = next(r for r in hardware.compute(24, 2048, 16)["rows"] if r["best"])
    choice = hardware.selection_for({**row, "rank": 16})
    paths = [p for p in fields if p in hardware.TRAIN_FIELD_OF]
    update = hardware.train_updates(choice, paths)[paths.index("train.micro_batch")]
    assert update["value"] == "auto" and box.postprocess(update["value"]) == "auto"
    _, message = hardware.use(ctx, {**row, "rank": 16})
    assert f"micro-batch auto, {choice['auto_batch']} on this card" in message  # demo mode's wording
