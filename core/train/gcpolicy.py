"""When Python's garbage collector runs during training: between steps, never in the middle of one.

Left automatic, a full collection starts whenever allocations cross a threshold, which during
training is every few steps and in the middle of a step's host-side work: up to 0.6 s each on the
8B H200 benchmark (bench/step_profile.py: 21 full collections, 2.2 s, in 12 steps of 0.8-1.1 s)
even after the start-up heap is frozen (worker.settle_heap). Here the automatic collector is off
while the trainer runs; the young generations are collected every ``every`` steps (cheap: only
objects made since the last pass), and a full collection runs when a checkpoint is saved, a pause
the step already takes, so cyclic garbage that outlives the young passes is freed at that rhythm.
The collector's own state comes back when training ends, whatever ends it.
"""

from __future__ import annotations

import gc

from transformers import TrainerCallback

YOUNG_EVERY = 10  # steps between collections of generations 0 and 1


class GcPolicy(TrainerCallback):
    def __init__(self, every: int = YOUNG_EVERY):
        self.every = max(int(every), 1)
        self.was_enabled: bool | None = None
        self.young = 0
        self.full = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.was_enabled = gc.isenabled()
        gc.disable()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            gc.collect(1)
            self.young += 1

    def on_save(self, args, state, control, **kwargs):
        gc.collect()
        self.full += 1

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()

    def restore(self) -> None:
        """Give the collector back its automatic runs (also after a failed or interrupted train())."""
        if self.was_enabled:
            gc.enable()
        self.was_enabled = None
