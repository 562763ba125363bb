"""A byte tokenizer and mock causal LMs for engine tests without a real model (as nanochat's tests do).

``UniformLM``: every token equally likely (sampling spreads over the vocabulary).
``ScriptLM``: replies with a scripted text per prompt (deterministic generation), and in loss mode
puts ``cheat`` extra logit on the true next token, so its loss has a closed form.
Both use an integer as their "KV cache": the number of tokens seen so far.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

IM_END, ENDOFTEXT = 257, 256
VOCAB = 258


class ByteTokenizer:
    eos_token_id = IM_END
    pad_token_id = ENDOFTEXT

    def get_vocab(self) -> dict:
        return {"<|endoftext|>": ENDOFTEXT, "<|im_end|>": IM_END}

    def _encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        ids, offsets = [], []
        for i, ch in enumerate(text):
            for b in ch.encode("utf-8"):
                ids.append(b)
                offsets.append((i, i + 1))
        return ids, offsets

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        if isinstance(text, str):
            return {"input_ids": self._encode(text)[0]}
        enc = [self._encode(t) for t in text]
        out = {"input_ids": [e[0] for e in enc]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e[1] for e in enc]
        return out

    def decode(self, ids, skip_special_tokens=False) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    # A Qwen3-like template (last reply keeps its think block; enable_thinking=False adds an empty one).
    chat_template = (
        "{%- for m in messages -%}"
        "{{- '<|im_start|>' + m.role + '\\n' -}}"
        "{%- if m.role == 'assistant' and loop.last -%}"
        "{{- '<think>\\n' + (m.reasoning_content or '') + '\\n</think>\\n\\n' -}}"
        "{%- endif -%}"
        "{{- m.content + '<|im_end|>\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
        "{%- if enable_thinking is defined and enable_thinking is false -%}"
        "{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}{%- endif -%}"
    )
    special_tokens_map: dict = {}

    def get_chat_template(self, chat_template=None, tools=None) -> str:
        return self.chat_template

    def apply_chat_template(self, messages, tools=None, tokenize=False, add_generation_prompt=False, **kwargs):
        import jinja2

        return jinja2.Environment().from_string(self.chat_template).render(
            messages=messages, tools=tools, add_generation_prompt=add_generation_prompt, **kwargs)


def _keep(logits, logits_to_keep):
    if isinstance(logits_to_keep, int):
        return logits if logits_to_keep == 0 else logits[:, -logits_to_keep:]
    if logits_to_keep is None:
        return logits
    return logits[:, logits_to_keep]


class UniformLM:
    def __init__(self, vocab: int = VOCAB, forward_delay: float = 0.0):
        import torch

        self.vocab = vocab
        self.device = torch.device("cpu")
        self.generation_config = SimpleNamespace(eos_token_id=[IM_END])
        self.calls: list[tuple[int, int]] = []  # (new tokens, cache length before)
        self.forward_delay = forward_delay
        self._busy = threading.Lock()
        self.overlaps = 0

    def eval(self):
        return self

    def __call__(self, input_ids, past_key_values=None, use_cache=True, logits_to_keep=None, **kwargs):
        if not self._busy.acquire(blocking=False):
            self.overlaps += 1  # two forward passes at once: the engine's lock failed
            self._busy.acquire()
        try:
            if self.forward_delay:
                time.sleep(self.forward_delay)
            seen = past_key_values or 0
            self.calls.append((input_ids.shape[1], seen))
            logits = self.logits(input_ids, seen)
        finally:
            self._busy.release()
        return SimpleNamespace(logits=_keep(logits, logits_to_keep),
                               past_key_values=seen + input_ids.shape[1] if use_cache else None)

    def logits(self, input_ids, seen):
        import torch

        b, t = input_ids.shape
        return torch.zeros(b, t, self.vocab)


class ScriptLM(UniformLM):
    """Generation: the reply ``script(prompt_text)`` token by token. Loss: ``cheat`` on the true token."""

    def __init__(self, script, cheat: float = 0.0):
        super().__init__()
        self.script = script
        self.cheat = cheat
        self.tok = ByteTokenizer()
        self.queues: list[list[int]] = []  # one scripted reply per row of the batch

    def logits(self, input_ids, seen):
        import torch

        b, t = input_ids.shape
        out = torch.zeros(b, t, self.vocab)
        if seen == 0 and self.generating:  # a prefill: script each row (left padding decodes to nothing)
            self.queues = [self.tok(self.script(self.tok.decode(row.tolist())))["input_ids"] + [IM_END]
                           for row in input_ids]
        if self.generating:
            for r in range(b):
                queue = self.queues[r]
                out[r, -1, queue.pop(0) if queue else IM_END] = 1e4
        elif self.cheat:
            for p in range(t - 1):
                out[:, p].scatter_(1, input_ids[:, p + 1:p + 2], self.cheat)
        return out

    def __call__(self, input_ids, past_key_values=None, use_cache=True, logits_to_keep=None, **kwargs):
        self.generating = bool(use_cache)
        return super().__call__(input_ids, past_key_values, use_cache, logits_to_keep, **kwargs)
