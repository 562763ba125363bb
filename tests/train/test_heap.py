"""The garbage collector during training: collections between steps, none inside them, cycles freed."""

from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")

from tests.train.conftest import run_config  # noqa: E402


class Node:
    pass


def cycle():
    """A reference cycle: only the collector can free it. Returns a weak reference to one end."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def collector():
    """Python's collector as the test found it, whatever a failing test left behind. Yields its
    thresholds."""
    enabled, thresholds = gc.isenabled(), gc.get_threshold()
    yield thresholds
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    gc.enable() if enabled else gc.disable()


class Collections:
    """Collections by generation while the block runs (gc.callbacks)."""

    def __enter__(self):
        self.generations = []
        gc.callbacks.append(self)
        return self

    def __call__(self, phase, info):
        if phase == "start":
            self.generations.append(info["generation"])

    def __exit__(self, *exc):
        gc.callbacks.remove(self)


def test_settle_freezes_what_exists_and_still_collects_new_garbage(collector):
    from core.train.heap import settle

    settle()
    assert gc.get_freeze_count() > 1000  # the libraries and everything built before training
    ref = cycle()
    gc.collect()
    assert ref() is None


def test_pacing_collects_between_steps_never_inside_them(collector):
    from core.train.heap import YOUNG_THRESHOLD, CollectorPacing

    pacing = CollectorPacing(full_every=4)
    st, ctl = SimpleNamespace(global_step=0), SimpleNamespace()
    pacing.on_train_begin(None, st, ctl)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, *collector[1:]) and gc.get_freeze_count() > 1000
    for step in range(1, 9):
        with Collections() as inside:
            # a step's worth of container objects: automatic collection would run ~70 times here
            made = [[i] for i in range(50_000)]
            ref = cycle()
        assert inside.generations == []
        del made
        with Collections() as at_end:
            pacing.on_step_end(None, st, ctl)
        assert ref() is None  # the step's cycle is freed at its end
        # step 1 compiled (settle: a full collection, then frozen); every 4th a full one; else young
        assert at_end.generations == ([2] if step in (1, 4, 8) else [1])
    pacing.on_train_end(None, st, ctl)
    assert gc.get_threshold() == collector


def test_a_step_that_makes_far_more_objects_still_collects_inside(collector):
    """A GRPO step generating its rollouts: young collections keep its garbage bounded."""
    from core.train.heap import YOUNG_THRESHOLD, CollectorPacing

    pacing = CollectorPacing()
    pacing.on_train_begin(None, SimpleNamespace(global_step=0), SimpleNamespace())
    with Collections() as inside:
        made = [[i] for i in range(5 * YOUNG_THRESHOLD)]
    del made
    assert 3 <= inside.generations.count(0) <= 6
    pacing.release()


def test_pacing_collects_during_evaluation_and_freezes_after_the_first(collector):
    from core.train.heap import CollectorPacing

    pacing = CollectorPacing(eval_every=5)
    st, ctl = SimpleNamespace(global_step=0), SimpleNamespace()
    pacing.on_train_begin(None, st, ctl)
    for evaluation in (1, 2):
        with Collections() as during:
            for _ in range(10):
                pacing.on_prediction_step(None, st, ctl)
        assert during.generations == [0, 0]  # every 5th evaluation batch
        frozen = gc.get_freeze_count()
        _kept = [[i] for i in range(1000)]  # objects the evaluation made and keeps (its compiled graphs)
        with Collections() as after:
            pacing.on_evaluate(None, st, ctl)
        assert after.generations == ([2] if evaluation == 1 else [1])
        assert (gc.get_freeze_count() > frozen + 1000) == (evaluation == 1)
    pacing.release()
    assert gc.get_threshold() == collector


def test_release_leaves_a_collector_that_was_off_before_training_off(collector):
    from core.train.heap import CollectorPacing

    gc.disable()
    pacing = CollectorPacing()
    pacing.on_train_begin(None, SimpleNamespace(global_step=0), SimpleNamespace())
    pacing.release()
    pacing.release()
    assert not gc.isenabled() and gc.get_threshold() == collector


def test_the_worker_hands_collection_back_when_the_trainer_raises(tmp_path, monkeypatch, collector):
    from core.train import runs, worker
    from core.train.heap import CollectorPacing

    monkeypatch.setattr(runs, "write_status", lambda *a, **kw: None)
    pacing = CollectorPacing()

    class Trainer:
        state = SimpleNamespace(global_step=0)

        def train(self, resume_from_checkpoint=None):
            pacing.on_train_begin(None, self.state, SimpleNamespace())
            assert gc.get_threshold() != collector
            raise RuntimeError("CUDA error: an illegal memory access")

    progress = SimpleNamespace(flush=lambda: None)
    prepared = worker.Prepared(Trainer(), progress, None, None, "off", pacing)
    monkeypatch.setattr(worker, "prepare_trainer", lambda *a, **kw: prepared)
    with pytest.raises(RuntimeError, match="illegal memory"):
        worker._train(SimpleNamespace(train=SimpleNamespace()), tmp_path, SimpleNamespace(), None, None, resume=False)
    assert gc.get_threshold() == collector


@pytest.mark.slow
def test_a_real_run_trains_with_the_collector_paced(tmp_path, monkeypatch, learnable_model, facts_mix, collector):
    """Through worker.run on the demo model: no collection inside a step after the first, every
    step end collects, and the collector's thresholds are back once the run is done."""
    from transformers import TrainerCallback

    from core.train import heap, runs, worker

    monkeypatch.setenv("QWENTUNE_LOG_REDIRECTED", "1")
    seen = {"inside": [], "ends": 0}

    class Watch(TrainerCallback):
        def __init__(self):
            self.block = None

        def on_step_begin(self, args, state, control, **kw):
            self.block = Collections().__enter__()

        def on_step_end(self, args, state, control, **kw):
            self.block.__exit__()
            if state.global_step > 1:
                seen["inside"] += self.block.generations

    original = heap.CollectorPacing.on_step_end

    def counted(self, *a, **kw):
        seen["ends"] += 1
        return original(self, *a, **kw)

    monkeypatch.setattr(heap.CollectorPacing, "on_step_end", counted)
    prepare = worker.prepare_trainer

    def with_watch(*a, **kw):
        prepared = prepare(*a, **kw)
        # before the pacing callback, so a step's window closes before the step-end collection
        prepared.trainer.callback_handler.callbacks.insert(0, Watch())
        return prepared

    monkeypatch.setattr(worker, "prepare_trainer", with_watch)
    cfg = run_config(learnable_model, facts_mix, tmp_path / "runs", name="paced", max_steps=6, eval_steps=3,
                     save_steps=100)
    assert worker.run(cfg) == 0
    assert runs.read_status(tmp_path / "runs" / "paced")["state"] == "done"
    assert seen["ends"] == 6 and seen["inside"] == []
    assert gc.get_threshold() == collector and gc.isenabled()
