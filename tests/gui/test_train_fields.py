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
