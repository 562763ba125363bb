"""TRL's trainers without per-micro-batch host work the bare loop does not do, for the
transformers + PEFT backend. Unsloth patches the transformers Trainer against the same costs, so
its trainers are used as they are.

* transformers puts the model in train mode on every micro-batch, and counts its parameters for
  the FLOP figure on every micro-batch: each a walk over every module (2,389 of them in a 0.6B LoRA
  model, 11-16 ms on a 2-core CPU). The count cannot change during a run, so it is counted once;
  the mode is set again only when the root model has left it (as evaluation's ``eval()`` does).
* TRL's SFTTrainer.compute_loss reads the entropy, the token accuracy and the token count of
  every micro-batch back to the host (three ``.item()`` calls and two tests of a count on the
  device: five syncs), for metrics nothing in QwenTune shows (the run's token counter counts
  tokens on the host). In training the SFT trainer calls the transformers Trainer's compute_loss,
  as Unsloth's does; evaluation, and MoE models' router loss, keep TRL's.
"""

from __future__ import annotations


def lean_trainer(base, *, sft: bool = False):
    """A subclass of the TRL trainer class ``base``; ``sft``: also leave out SFTTrainer's metrics."""
    from transformers import Trainer

    class Lean(base):
        def training_step(self, model, inputs, *args, **kwargs):
            if not (model.training and getattr(self, "_train_mode_of", None) is model):
                model.train()
                self._train_mode_of = model

            def train_once(mode: bool = True):
                # transformers' call at the start of this micro-batch finds the mode set; any later
                # call (a rollout restoring train mode after eval()) reaches the real method
                del model.train
                return model if mode else model.train(False)

            model.train = train_once
            try:
                return super().training_step(model, inputs, *args, **kwargs)
            finally:
                vars(model).pop("train", None)

        def floating_point_ops(self, inputs):
            main = getattr(self.model, "main_input_name", "input_ids")
            ids = inputs.get(main) if hasattr(inputs, "get") else None
            if not hasattr(ids, "numel") or not hasattr(self.model, "num_parameters"):
                return super().floating_point_ops(inputs)
            if getattr(self, "_counted_params", None) is None:
                self._counted_params = self.model.num_parameters(exclude_embeddings=True)
            return 6 * ids.numel() * self._counted_params

        if sft:
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                if not model.training or getattr(self, "aux_loss_enabled", False):
                    return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                                num_items_in_batch=num_items_in_batch)
                inputs["use_cache"] = False  # as TRL's: no cache under gradient checkpointing
                return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)

    Lean.__name__ = Lean.__qualname__ = f"Lean{base.__name__}"
    return Lean


def for_backend(base, backend: str, *, sft: bool = False):
    """``base`` itself on Unsloth (already patched), the lean subclass on the other backend."""
    return base if backend == "unsloth" else lean_trainer(base, sft=sft)
