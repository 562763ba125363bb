"""A frozen copy of the chat engine's earlier decode loop: the `legacy` baseline of bench/chat_speed.py.

The panes took turns token by token, each with its own DynamicCache and its own forward pass; the
adapter was switched off and on around every base-pane forward pass (a walk over every LoRA layer,
twice, and a check walk); each token was sampled on the CPU from a full copy of the row's logits
(float32 sort of the whole vocabulary for top-p). Kept here, unchanged in behaviour, so the speed-up
of the batched engine is measured against what it replaced on the same checkpoint in the same call.
"""

from __future__ import annotations

import time


def _filter_logits(logits, s, seen):
    import torch

    logits = logits.float().clone()
    if seen and s.presence_penalty:
        idx = torch.tensor(sorted(seen), dtype=torch.long)
        logits[idx] -= s.presence_penalty
    if s.greedy:
        return logits
    logits = logits / max(s.temperature, 1e-5)
    vocab = logits.shape[-1]
    if 0 < s.top_k < vocab:
        kth = torch.topk(logits, s.top_k).values[-1]
        logits[logits < kth] = float("-inf")
    if 0.0 < s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= s.top_p
        logits[order[drop_sorted]] = float("-inf")
    if s.min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        logits[probs < s.min_p * probs.max()] = float("-inf")
    return logits


def _sample_next(logits, s, generator, seen) -> int:
    import torch

    logits = _filter_logits(logits.detach().to("cpu"), s, seen)
    if s.greedy:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


class LegacyEngine:
    """The earlier loop over a PEFT model (adapter toggled per forward pass) and its tokenizer."""

    def __init__(self, model, stop_ids: set[int]):
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        self.model = model
        self.stop_ids = stop_ids
        self.layers = [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]

    def _switch(self, enabled: bool) -> None:
        for layer in self.layers:
            if hasattr(layer, "_disable_adapters"):
                layer._disable_adapters = not enabled
            else:
                layer.enable_adapters(enabled)

    def _forward(self, pane: str, ids, cache):
        import torch

        state = [not layer.disable_adapters for layer in self.layers]
        with torch.inference_mode():
            if pane == "tuned":
                if not all(state):
                    raise RuntimeError("adapter off for the fine-tuned pane")
                return self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            self._switch(False)
            try:
                if any(not layer.disable_adapters for layer in self.layers):
                    raise RuntimeError("adapter still active for the base pane")
                return self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            finally:
                self._switch(True)

    def token_stream(self, pane: str, prompt_ids: list[int], s):
        import torch

        device = next(self.model.parameters()).device
        generator = torch.Generator(device="cpu")
        generator.manual_seed(int(s.seed))
        seen: set[int] = set()
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        cache = None
        for _ in range(s.max_new_tokens):
            out = self._forward(pane, ids, cache)
            cache = out.past_key_values
            token = _sample_next(out.logits[0, -1], s, generator, seen)
            if token in self.stop_ids:
                return
            seen.add(token)
            yield token
            ids = torch.tensor([[token]], dtype=torch.long, device=device)

    def compare(self, prompt_ids: list[int], s, panes=("base", "tuned")) -> dict:
        """Both panes, alternating token by token as the earlier CompareStream did; tokens and seconds."""
        start = time.perf_counter()
        iters = {pane: self.token_stream(pane, prompt_ids, s) for pane in panes}
        tokens = {pane: 0 for pane in panes}
        while iters:
            for pane in list(iters):
                try:
                    next(iters[pane])
                    tokens[pane] += 1
                except StopIteration:
                    del iters[pane]
        return {"tokens": tokens, "seconds": time.perf_counter() - start}
