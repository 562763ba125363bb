"""One error root: every area's errors are QwenTuneErrors of a kind; the worker records kind, advice
and whether resuming can help."""

from __future__ import annotations

import pytest

from core.errors import KINDS, QwenTuneError, outcome


def test_every_area_error_derives_from_the_root_with_its_kind():
    from core.chat.loader import LoadError
    from core.data.sources import DataError
    from core.eval.evaluate import EvalError
    from core.models.errors import DownloadFailed, HubUnreachable, ModelError, NotEnoughDisk, UnknownModel
    from core.runfolder import RunError
    from core.settings import ConfigError, DamagedFile
    from core.train.export import ExportError

    expected = {ConfigError: "config", DataError: "data", HubUnreachable: "network", DownloadFailed: "network",
                NotEnoughDisk: "resource", UnknownModel: "model", ModelError: "model", RunError: "run",
                ExportError: "resource", EvalError: "config", LoadError: "model", DamagedFile: "run"}
    for cls, kind in expected.items():
        assert issubclass(cls, QwenTuneError), cls
        assert cls.kind == kind and kind in KINDS, cls
    assert isinstance(ConfigError("x"), ValueError)  # callers that catch ValueError still do


def test_messages_keep_their_shape():
    from core.models.errors import HubUnreachable
    from core.settings import ConfigError

    assert str(ConfigError("must be at least 1", "train.epochs", "run.yaml:4")) == \
        "run.yaml:4: train.epochs: must be at least 1"
    err = HubUnreachable("Cannot reach Hugging Face", advice="Use --hub modelscope", where="model.hub")
    assert str(err) == "model.hub: Cannot reach Hugging Face\nUse --hub modelscope"
    assert err.reason == "Cannot reach Hugging Face" and err.advice == "Use --hub modelscope"
    got = outcome(err)
    assert got.kind == "network" and got.resumable and got.advice == "Use --hub modelscope"
    assert got.error == "model.hub: Cannot reach Hugging Face"
    assert not outcome(ConfigError("bad", "train.epochs")).resumable
    plain = outcome(RuntimeError("boom"))
    assert plain.kind == "run" and plain.resumable and plain.error == "RuntimeError: boom"
    with pytest.raises(ValueError):
        QwenTuneError("x", kind="weather")
