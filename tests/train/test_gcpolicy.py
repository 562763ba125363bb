"""The garbage collector during training: off between the policy's own passes, back on afterwards."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest

from core.train.gcpolicy import GcPolicy


def _state(step):
    return SimpleNamespace(global_step=step)


def test_collects_young_generations_every_n_steps_and_everything_at_a_save(monkeypatch):
    calls = []
    real = gc.collect
    monkeypatch.setattr(gc, "collect", lambda generation=2: calls.append(generation) or 0)
    policy = GcPolicy(every=3)
    try:
        policy.on_train_begin(None, _state(0), None)
        assert not gc.isenabled()
        for step in range(1, 10):
            policy.on_step_end(None, _state(step), None)
        policy.on_save(None, _state(9), None)
        assert calls == [1, 1, 1, 2]  # steps 3, 6, 9, then the checkpoint's full pass
    finally:
        policy.on_train_end(None, _state(9), None)
        monkeypatch.setattr(gc, "collect", real)
    assert gc.isenabled()


def test_restore_keeps_a_collector_that_was_already_off():
    gc.disable()
    try:
        policy = GcPolicy()
        policy.on_train_begin(None, _state(0), None)
        policy.restore()
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.slow
def test_a_real_run_trains_with_the_policy_and_gives_the_collector_back(tmp_path, learnable_model, facts_mix):
    from core.train import worker
    from tests.train.conftest import run_config

    cfg = run_config(learnable_model, facts_mix, tmp_path / "runs", name="gc", max_steps=12, save_steps=6)
    seen = []
    original = GcPolicy.on_step_end

    def spy(self, args, state, control, **kwargs):
        seen.append(gc.isenabled())
        return original(self, args, state, control, **kwargs)

    GcPolicy.on_step_end = spy
    try:
        assert worker.run(cfg) == 0
    finally:
        GcPolicy.on_step_end = original
        gc.unfreeze()
    assert seen and not any(seen)  # automatic collection was off at every step
    assert gc.isenabled()
