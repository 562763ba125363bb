"""Python's garbage collector during training: out of the steps, and off what lives all run long.

Imported only by the worker (lazily), so transformers may be imported at the top.

Left to itself, CPython collects its youngest generation every 700 new container objects. A
training step makes tens of thousands of them (the model's Python-level forward, autograd, the
trainer's bookkeeping): the Qwen3-0.6B bare loop of bench/train_grid.py ran 1,168-1,675 collections
over 20 steps on an H200. Worse, once the heap is frozen (:func:`settle`), a full collection follows
every ten collections of the middle generation and walks everything made since the freeze, which
includes the hundreds of thousands of objects Unsloth's compiler makes in the first step: 5-8 full
collections, 277-888 ms, over those 20 steps of about 0.5 s each.

:class:`CollectorPacing` raises the young threshold to :data:`YOUNG_THRESHOLD` while the trainer
runs, so an ordinary step triggers no collection, and collects at step ends instead (torchtitan
paces its collector the same way):

* the young generations at every step end: garbage in reference cycles lives one step at most;
* a full collection every :data:`FULL_EVERY` steps, cheap because the heap is frozen;
* the heap frozen again after the first step of the process and after the first evaluation, the
  two moments that compile graphs (objects that stay for the whole run);
* the young generation every :data:`EVAL_EVERY` evaluation batches, as evaluation has no steps.

A step that makes far more objects than usual (a GRPO step generating its rollouts) still gets a
young collection every :data:`YOUNG_THRESHOLD` new objects, so its garbage stays bounded. The
thresholds come back when training ends, fails or is stopped (:meth:`release`); a collector that
was off before training stays off.
"""

from __future__ import annotations

import gc

from transformers import TrainerCallback

FULL_EVERY = 50  # steps between full collections
EVAL_EVERY = 20  # evaluation batches between young collections
# New container objects between automatic young collections while training (CPython's default:
# 700). The older generations' thresholds count young collections, so they grow rarer by the same
# factor without being touched.
YOUNG_THRESHOLD = 200_000


def settle() -> None:
    """Move everything built so far (libraries, model, dataset: about 780,000 tracked Python objects
    with Unsloth loaded) out of the garbage collector's reach. Without this, each full collection
    walks them all: up to 860 ms for one on the 8B H200 benchmark, against a step of about 800 ms
    (bench/step_profile.py; full-collection time over 12 steps fell from 4.9 s to 1.7 s). Objects
    made later are still collected."""
    gc.collect()
    gc.freeze()


class CollectorPacing(TrainerCallback):
    """Collects between steps instead of inside them (see the module's docstring)."""

    def __init__(self, full_every: int = FULL_EVERY, eval_every: int = EVAL_EVERY):
        self.full_every = full_every
        self.eval_every = eval_every
        self.steps = 0  # step ends seen by this process (a resumed run starts again at 0)
        self.evaluations = 0
        self.eval_batches = 0
        self.thresholds = None  # the collector's thresholds before training

    def hold(self) -> None:
        if self.thresholds is None:
            self.thresholds = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, *self.thresholds[1:])

    def release(self) -> None:
        """The collector's thresholds back as they were before training (idempotent)."""
        if self.thresholds is not None:
            gc.set_threshold(*self.thresholds)
        self.thresholds = None

    def on_train_begin(self, args, state, control, **kwargs):
        settle()
        self.hold()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1
        if self.steps == 1:
            settle()  # the first step compiled: its graphs and caches stay for the run
        elif self.steps % self.full_every == 0:
            gc.collect()
        else:
            gc.collect(1)

    def on_prediction_step(self, args, state, control, **kwargs):
        self.eval_batches += 1
        if self.eval_batches % self.eval_every == 0:
            gc.collect(0)

    def on_evaluate(self, args, state, control, **kwargs):
        self.evaluations += 1
        self.eval_batches = 0
        if self.evaluations == 1:
            settle()  # the evaluation graphs, compiled once
        else:
            gc.collect(1)

    def on_train_end(self, args, state, control, **kwargs):
        self.release()
